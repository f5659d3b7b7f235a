"""The local steps' Spark home: pyspark's scripts and jars, so Python imports the installed pyspark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchard.config import Settings
from orchard.spark import home as spark_home
from orchard.spark import steps

# A step's driver and one of its Python workers say where their pyspark came from.
WHERE_FROM = """
import json, sys
import pyspark
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
def origin(_):
    import pyspark
    return [pyspark.__file__]
worker = spark.sparkContext.parallelize([0], 1).mapPartitions(origin).collect()[0]
print("ORIGIN " + json.dumps({"driver": pyspark.__file__, "worker": worker}))
spark.stop()
"""


def fake_pyspark(root: Path) -> Path:
    for name in ("bin", "jars", "python/lib"):
        (root / name).mkdir(parents=True)
    return root


def test_local_steps_use_the_home_only_when_it_exists_and_no_other_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_HOME", raising=False)
    home = tmp_path / "venv" / "spark-home"
    settings = Settings.from_env({"ORCHARD_SPARK_HOME": str(home)})
    assert "SPARK_HOME" not in steps.local_env(settings)  # not built yet
    spark_home.build(home, fake_pyspark(tmp_path / "pyspark"))
    assert steps.local_env(settings)["SPARK_HOME"] == str(home)
    # Linked, not copied, and without pyspark's zipped Python.
    assert sorted(p.name for p in home.iterdir()) == ["bin", "jars"]
    assert (home / "jars").resolve() == (tmp_path / "pyspark" / "jars").resolve()
    # Built again over the old one (a new venv, another pyspark): replaced, the old target untouched.
    spark_home.build(home, fake_pyspark(tmp_path / "other"))
    assert (home / "bin").resolve() == (tmp_path / "other" / "bin").resolve()
    assert (tmp_path / "pyspark" / "jars").is_dir()
    # A Spark home of the user's own wins; an empty setting turns it off.
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "theirs"))
    assert "SPARK_HOME" not in steps.local_env(settings)
    monkeypatch.delenv("SPARK_HOME")
    assert "SPARK_HOME" not in steps.local_env(Settings.from_env({"ORCHARD_SPARK_HOME": ""}))


def _origins(env_home: Path | None, tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "where_from.py"
    script.write_text(WHERE_FROM, encoding="utf-8")
    settings = Settings.from_env({"ORCHARD_SPARK_HOME": str(env_home) if env_home else ""})
    env = {k: v for k, v in os.environ.items() if k != "SPARK_HOME"} | steps.local_env(settings)
    spark_submit = Path(sys.executable).parent / "spark-submit"
    done = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", str(script)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("ORIGIN "))
    return json.loads(line.removeprefix("ORIGIN "))


@pytest.mark.spark
def test_the_steps_python_imports_the_installed_pyspark_with_the_home(tmp_path):
    installed = str(spark_home.installed_pyspark())
    # pyspark's own home: spark-submit puts its zip of pyspark's sources first on the path.
    without = _origins(None, tmp_path)
    assert all(".zip" in where for where in without.values()), without
    home = spark_home.build(tmp_path / "home")
    with_home = _origins(home, tmp_path)
    assert all(where.startswith(installed) and ".zip" not in where for where in with_home.values()), with_home
