"""Kept so that `python -m orchard.preflight` still works: the command is `python -m orchard preflight`."""

import sys

from orchard.cli import main

if __name__ == "__main__":
    sys.exit(main(["preflight", *sys.argv[1:]]))
