"""`python -m orchard COMMAND`: the commands a user runs outside Airflow (standard AWS credential chain).

preflight [--instance-type T]     check the AWS set-up of the emr target before a run
forget --dataset D [PATH ...]     erase images and every row derived from them
create-bucket                     create the lake's bucket (the compose stack's S3 store)
"""

from __future__ import annotations

import sys

from orchard import erasure
from orchard.aws import preflight
from orchard.config import Settings
from orchard.storage.lake import create_bucket
from orchard.uris import split_uri


def bucket(argv: list[str]) -> int:
    """`create-bucket`: the lake's bucket, created when missing."""
    if argv:
        print(f"create-bucket takes no arguments, got {argv}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    name, _ = split_uri(settings.lake)
    created = create_bucket(settings)
    print(f"bucket {name!r} {'created' if created else 'already there'} at {settings.s3_endpoint or 'AWS'}")
    return 0


COMMANDS = {"preflight": preflight.main, "forget": erasure.main, "create-bucket": bucket}


def main(argv: list[str] | None = None) -> int:
    """Run one command; its own --help says more."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])
