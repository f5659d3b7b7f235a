"""`make demo`: run fruits_pipeline once with `airflow dags test` and print the CSV's path last.

python -m orchard.dev.demo [--source FOLDER] [--conf JSON]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from orchard.config import Settings
from orchard.layout import LakeLayout
from orchard.uris import local_path


def main(argv: list[str] | None = None) -> int:
    """Run the DAG; on success print the path of the run's pcaFeatures.csv as the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder of images (default: the generated sample)")
    parser.add_argument("--conf", default="{}", help="more DAG params as JSON, e.g. '{\"pca_k\": 5}'")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    conf = json.loads(args.conf)
    if args.source:
        conf["source"] = str(args.source.expanduser().resolve())
    command = ["airflow", "dags", "test", "fruits_pipeline", "--conf", json.dumps(conf)]
    print("+ " + " ".join(command), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        print(f"fruits_pipeline failed (exit {result.returncode}); see the task logs above", file=sys.stderr)
        return result.returncode
    latest = json.loads(local_path(LakeLayout(settings.lake).latest).read_text(encoding="utf-8"))
    manifest = json.loads(local_path(latest["manifest"]).read_text(encoding="utf-8"))
    for warning in manifest["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    counts = manifest["counts"]
    print(
        f"run {latest['run_id']}: {counts['featurized']} images featurized, {counts['quarantined']} "
        f"quarantined, k={manifest['pca']['k']} ({manifest['pca']['variance_kept']:.1%} of variance)",
        flush=True,
    )
    print(local_path(latest["csv"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
