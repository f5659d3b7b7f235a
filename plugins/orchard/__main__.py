"""`python -m orchard COMMAND` (orchard.cli)."""

import sys

from orchard.cli import main

sys.exit(main())
