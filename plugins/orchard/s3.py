"""Kept so that `python -m orchard.s3 create-bucket` still works: it is `python -m orchard create-bucket`."""

import sys

from orchard.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
