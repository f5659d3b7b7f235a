"""The environment is the one pyproject.toml pins: in particular, one coherent pyspark."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?==([^;\s]+)", requirement)
        assert match, f"dependency not pinned exactly: {requirement}"
        found[match.group(1).lower()] = match.group(3)
    return found


@pytest.mark.parametrize("name", sorted(pins()))
def test_installed_versions_are_the_pinned_ones(name):
    assert metadata.version(name) == pins()[name]


def test_pyspark_python_side_matches_its_jars():
    # pyspark-client (pulled by the Spark provider) writes the same `pyspark` package as pyspark:
    # the importable Python code, both distributions and the bundled Spark jars must agree.
    import pyspark

    pinned = pins()["pyspark"]
    assert pyspark.__version__ == pinned
    assert metadata.version("pyspark-client") == pinned
    jars = Path(pyspark.__file__).parent / "jars"
    core = [p.name for p in jars.glob("spark-core_*.jar")]
    assert core and all(name.endswith(f"-{pinned}.jar") for name in core), core


def test_constraints_cover_every_pin():
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            constraints[name.strip().lower().replace("_", "-")] = version.strip()
    for name, version in pins().items():
        assert constraints.get(name.replace("_", "-")) == version, name


def test_every_installed_package_runs_on_every_python_the_project_supports():
    """pyproject.toml says Python >=3.11: a pin that needs a later 3.11 (soupsieve 3.x and 4.x need 3.11.5)
    breaks Debian 12's 3.11.2, and the stack image CI builds on it."""
    from packaging.specifiers import SpecifierSet

    supported = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lowest = re.search(r">=\s*([0-9.]+)", supported).group(1)
    lowest = lowest if lowest.count(".") == 2 else f"{lowest}.0"
    too_new = {
        dist.metadata["Name"]: requires
        for dist in metadata.distributions()
        if (requires := dist.metadata.get("Requires-Python")) and not SpecifierSet(requires).contains(lowest)
    }
    assert too_new == {}


def test_under_ci_a_skip_fails_unless_it_cannot_run_on_such_a_machine():
    from tests.conftest import fails_in_ci

    ci = {"CI": "true"}
    assert fails_in_ci("real Fruits-360 sample not present at ../shared", ci)
    assert fails_in_ci("shellcheck is not installed", ci)
    assert not fails_in_ci("Compose v2 is not installable here (no registry has it)", ci)
    assert not fails_in_ci("runs in make test-spark35 (pyspark 3.5)", ci)
    assert not fails_in_ci("shellcheck is not installed", {})  # a laptop may skip
