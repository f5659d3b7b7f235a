"""The import rules of docs/architecture.md hold, and Orchard's imports form no cycle.

Every import statement counts: module-level, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import graphlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Where each importable name of the project lives.
SOURCES = {"plugins": "", "spark_jobs": "", "dags": "dags."}
OURS = ("orchard", "orchard_jobs", "orchard_plugin", "featurize", "pca", "dags")


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every Python file of the project's importable folders."""
    found = {}
    for folder, prefix in SOURCES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[prefix + ".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: Mapping[str, Path]) -> Iterator[str]:
    """The project's modules that one file imports, by any import statement anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package upwards
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base]).strip(".")
            # `from a import b` imports module a.b when there is one, else names of a.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t.split(".")[0] in OURS)


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (only those that exist, by their longest name)."""
    known = modules(root)
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        found = set()
        for imported in imports(path, name, known):
            target = imported
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != name:
                found.add(target)
        edges[name] = found
    return edges


def rules(text: str) -> dict[str, list[str]]:
    """The 'may import' table of the architecture page: row prefix -> allowed prefixes."""
    section = text.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in re.findall(r"^\| `([\w.]+)` \| (.*) \|$", section, re.M):
        table[row[0]] = re.findall(r"`([\w.]+)`", row[1])
    return table


def row_of(module: str, table: Mapping[str, list[str]]) -> str | None:
    """The row with the longest prefix that names `module`."""
    names = [p for p in table if module == p or module.startswith(p + ".")]
    return max(names, key=len) if names else None


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def problems(edges: Mapping[str, set[str]], table: Mapping[str, list[str]]) -> list[str]:
    """Every module no row covers, every import its row does not allow, and a cycle if there is one."""
    found = []
    for module in sorted(edges):
        row = row_of(module, table)
        if row is None:
            found.append(f"{module}: no row of the import rules covers it")
            continue
        for target in sorted(edges[module]):
            if not under(target, row) and not any(under(target, allowed) for allowed in table[row]):
                found.append(f"{module} imports {target}: row `{row}` does not allow it")
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as cycle:
        found.append("cycle: " + " -> ".join(cycle.args[1]))
    return found


def test_the_project_follows_the_import_rules_of_the_architecture_page():
    table = rules((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    edges = graph(ROOT)
    assert len(edges) > 40 and len(table) > 20  # the walk and the table were both read
    assert edges["orchard.storage.lake"] >= {"orchard.storage.s3", "orchard.clients"}
    assert problems(edges, table) == []


def test_the_runtime_never_imports_the_developer_tools():
    edges = graph(ROOT)
    users = sorted(m for m, targets in edges.items() if any(under(t, "orchard.dev") for t in targets))
    assert all(under(m, "orchard.dev") for m in users), users


def test_each_question_has_one_file():
    """Where the lake is written, where AWS clients are made, where the step arguments are: one file each."""
    sources = {name: path.read_text(encoding="utf-8") for name, path in modules(ROOT).items()}
    clients = [n for n, text in sources.items() if re.search(r"\bboto3\.(client|session\.Session)\(", text)]
    hooks = [n for n, text in sources.items() if re.search(r"\b(S3Hook|AwsBaseHook)\(", text)]
    assert sorted(clients) == sorted(hooks) == ["orchard.clients"]
    writers = [n for n, text in sources.items() if re.search(r"\.(pipe_file|put_object|upload_file)\(", text)]
    assert sorted(writers) == ["orchard.storage.lake", "orchard.storage.s3"]
    # The jobs parse their arguments; one module of the Airflow side writes them.
    args = [n for n, text in sources.items() if '"--csv-parts"' in text or '"--quarantine"' in text]
    assert sorted(args) == ["featurize", "orchard.spark.steps", "pca"]


@pytest.fixture
def broken(tmp_path):
    """A copy of the project's layout with one forbidden import and one cycle added."""
    for folder in SOURCES:
        (tmp_path / folder).mkdir()
    package = tmp_path / "plugins" / "orchard"
    (package / "storage").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "storage" / "__init__.py").write_text("")
    (package / "config.py").write_text("")
    (package / "storage" / "uris.py").write_text("def f():\n    from orchard.storage import lake\n")
    lake = "from orchard.storage.uris import f\nfrom orchard import dev\n"
    (package / "storage" / "lake.py").write_text(lake)
    (package / "dev.py").write_text("")
    return tmp_path


def test_a_forbidden_import_and_a_cycle_are_found(broken):
    table = {"orchard.storage.uris": [], "orchard.storage": ["orchard.config"], "orchard": []}
    found = problems(graph(broken), table)
    assert (
        "orchard.storage.uris imports orchard.storage.lake: row `orchard.storage.uris` does not allow it"
    ) in found
    assert "orchard.storage.lake imports orchard.dev: row `orchard.storage` does not allow it" in found
    assert any(f.startswith("cycle: ") and "orchard.storage.lake" in f for f in found)
    assert problems(graph(broken), {"orchard.storage": ["orchard.dev"]})[0] == (
        "orchard: no row of the import rules covers it"
    )
