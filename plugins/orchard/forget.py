"""Kept so that `python -m orchard.forget` still works: the command is `python -m orchard forget`."""

import sys

from orchard.cli import main

if __name__ == "__main__":
    sys.exit(main(["forget", *sys.argv[1:]]))
