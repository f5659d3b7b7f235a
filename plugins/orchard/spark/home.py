"""A Spark home for the local steps: the installed pyspark's scripts and jars, not its zipped Python.

    python -m orchard.spark.home      (make's venv target runs it)

spark-submit puts `$SPARK_HOME/python/lib/pyspark.zip` (and py4j's zip) first on the path of every
Python process it starts: a step's driver, the worker daemon and so the workers. pip's pyspark is
its own SPARK_HOME and ships that zip with sources only, so each of those processes compiled
pyspark again from the zip (~0.5 s per process; docs/performance.md, "Local steps").
With SPARK_HOME at this folder (`bin` and `jars` linked from the installed pyspark, no `python`),
those path entries name nothing and Python imports the installed pyspark, with its bytecode.
`orchard.spark.steps.local_env` sets it for the local steps when the folder exists and the environment
has no SPARK_HOME of its own; EMR's Spark is untouched.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from orchard.config import Settings

# What spark-submit needs of a Spark home: its launch scripts and the jars of its classpath.
LINKED = ("bin", "jars")


def installed_pyspark() -> Path:
    """The folder of the pyspark this Python imports (pip's pyspark is a whole Spark home)."""
    spec = importlib.util.find_spec("pyspark")  # found, not imported: ~0.5 s saved at every parse
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("pyspark is not installed in this Python")
    return Path(spec.origin).parent


def is_home(home: Path) -> bool:
    """Whether `home` has what spark-submit needs (and so can be SPARK_HOME)."""
    return all((home / name).is_dir() for name in LINKED)


def build(home: Path, pyspark_dir: Path | None = None) -> Path:
    """Make `home`: links to the installed pyspark's `bin` and `jars`, replacing any older one."""
    source = pyspark_dir or installed_pyspark()
    home.parent.mkdir(parents=True, exist_ok=True)
    # Made beside the target and renamed into place: a step never sees half a home.
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the home is as readable as the venv
    for name in LINKED:
        (staging / name).symlink_to(source / name, target_is_directory=True)
    if home.is_dir() and not home.is_symlink():
        shutil.rmtree(home)
    os.replace(staging, home)
    return home


def main() -> int:
    settings = Settings.from_env()
    if not settings.spark_home:
        print("ORCHARD_SPARK_HOME is empty: the local steps run with pyspark's own Spark home")
        return 0
    home = build(Path(settings.spark_home))
    print(f"local Spark home: {home} (bin and jars of {installed_pyspark()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
