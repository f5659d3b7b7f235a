"""Right to erasure: remove images from the lake and every row derived from them.

    python -m orchard forget --dataset DATASET [--paths-file FILE] [PATH ...]

PATHs are relative to the dataset folder in the lake (`Kiwi/IMG_0001.jpg`, as in the CSV's `path`
column); a paths file holds one per line, or is a JSON list. For each image this removes:

- the image under `$ORCHARD_LAKE/images/<dataset>/`,
- its features from the features cache (found by the image's SHA-256, for every weights version),
- its rows from every run's features, quarantine and PCA outputs and `pcaFeatures.csv`,

then rewrites the runs' reports, and records what was done in `$ORCHARD_LAKE/erasures/<time>.json`:
SHA-256 digests of each path and content, and row counts, never the image or its name. Fitted PCA
models keep only aggregates (mean, components) of the images they were fitted on; the next run
refits without the erased images. Remove them from the source folder too, or the next run's upload
brings them back.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from orchard.config import Settings
from orchard.layout import LakeLayout, RunLayout, slug
from orchard.report.render import write_report
from orchard.storage.lake import Lake, lake_for

log = logging.getLogger(__name__)


def read_paths_file(text: str) -> list[str]:
    """Paths from a JSON list or one path per line (blank lines and # comments ignored)."""
    stripped = text.strip()
    if stripped.startswith("["):
        return [str(p) for p in json.loads(stripped)]
    return [line.strip() for line in stripped.splitlines() if line.strip() and not line.startswith("#")]


def collect_paths(paths: Iterable[str], paths_file: str | Path | None = None) -> list[str]:
    """The paths given directly plus those listed in `paths_file`, if any."""
    collected = list(paths)
    if paths_file:
        collected += read_paths_file(Path(paths_file).read_text(encoding="utf-8"))
    return collected


def clean_paths(paths: Iterable[str]) -> list[str]:
    """Relative image paths, checked: no absolute paths, no '..', no duplicates."""
    cleaned = []
    for raw in paths:
        path = raw.strip()
        path = path[2:] if path.startswith("./") else path
        parts = Path(path).parts
        if not path or path.startswith("/") or ".." in parts:
            raise ValueError(f"{raw!r}: give paths relative to the dataset folder, e.g. 'Kiwi/0_100.jpg'")
        if path not in cleaned:
            cleaned.append(path)
    if not cleaned:
        raise ValueError("no image paths given")
    return cleaned


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _filter_parquet(lake: Lake, folder: str, column: str, drop: set[str]) -> int:
    """Rewrite the Parquet files of a folder without the rows whose `column` is in `drop`."""
    # pyarrow (~0.1 s to import) for an erasure alone, not each time the DAG is parsed.
    import pyarrow as pa  # ruff: ignore[import-outside-top-level]
    import pyarrow.compute as pc  # ruff: ignore[import-outside-top-level]
    import pyarrow.parquet as pq  # ruff: ignore[import-outside-top-level]

    removed = 0
    for uri in lake.list_files(folder):
        if not uri.endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(lake.read_bytes(uri)))
        keep = pc.invert(pc.is_in(table[column], value_set=pa.array(sorted(drop), type=pa.string())))
        kept = table.filter(keep)
        if kept.num_rows < table.num_rows:
            buffer = io.BytesIO()
            pq.write_table(kept, buffer)
            lake.write_bytes(uri, buffer.getvalue(), "application/octet-stream")
            removed += table.num_rows - kept.num_rows
    return removed


def _filter_csv(lake: Lake, uri: str, drop: set[str]) -> int:
    """Rewrite a CSV whose first column is the image path without the rows of `drop`."""
    text = lake.read_bytes(uri).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    kept = [rows[0], *[r for r in rows[1:] if r and r[0] not in drop]]
    if len(kept) == len(rows):
        return 0
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(kept)
    lake.write_bytes(uri, out.getvalue().encode("utf-8"), "text/csv")
    return len(rows) - len(kept)


def forget_images(lake: Lake, lake_uri: str, dataset: str, paths: Sequence[str], reason: str = "") -> dict:
    """Erase the images at `paths` of `dataset` and everything derived from them; returns the record."""
    paths = clean_paths(paths)
    shared = LakeLayout(lake_uri)
    images_root = shared.images(dataset)
    drop, digests, missing = set(paths), set(), 0
    for rel in paths:
        uri = f"{images_root}/{rel}"
        try:
            digests.add(_sha256(lake.read_bytes(uri)))
        except FileNotFoundError:
            missing += 1  # already gone from the lake; its rows are still looked for below
            continue
        lake.delete(uri)

    now = dt.datetime.now(dt.UTC)
    removed = {"cache": 0, "features": 0, "quarantine": 0, "pca": 0, "csv": 0}
    for weights_folder in sorted({u.rsplit("/", 1)[0] for u in lake.list_files(shared.cache)}):
        removed["cache"] += _filter_parquet(lake, weights_folder, "sha256", digests) if digests else 0
    runs, reports = 0, 0
    for manifest_uri in shared.manifests(lake.list_files(shared.runs)):
        manifest = lake.read_json(manifest_uri)
        if "run" not in manifest:
            continue  # not a manifest this version of Orchard writes
        run = RunLayout.from_xcom(manifest["run"])
        if slug(run.dataset) != slug(dataset):
            continue  # a run of another dataset
        per_run = {
            name: _filter_parquet(lake, getattr(run, name), "path", drop)
            for name in ("features", "quarantine", "pca")
        }
        per_run["csv"] = _filter_csv(lake, run.csv, drop) if lake.exists(run.csv) else 0
        for name, count in per_run.items():
            removed[name] += count
        touched = sum(per_run.values())
        runs += 1
        if not touched:
            continue
        counts = manifest["counts"]
        counts["featurized"] -= per_run["features"]
        counts["quarantined"] -= per_run["quarantine"]
        counts["inputs"] -= per_run["features"] + per_run["quarantine"]
        manifest.setdefault("erasures", []).append({"at": now.isoformat(), "rows_removed": per_run})
        lake.write_json(manifest_uri, manifest)
        if lake.exists(run.report):
            write_report(lake, run)
            reports += 1

    record = {
        "erased_at": now.isoformat(),
        "dataset": slug(dataset),
        "reason": reason,
        "images_requested": len(paths),
        "images_deleted": len(digests),
        "images_not_in_lake": missing,
        "path_sha256": sorted(_sha256(p) for p in paths),
        "content_sha256": sorted(digests),
        "rows_removed": removed,
        "runs_checked": runs,
        "reports_rewritten": reports,
    }
    record_uri = shared.erasure_record(now.strftime("%Y%m%dT%H%M%S%fZ"))
    lake.write_json(record_uri, record)
    log.info("erased %d images (%s rows removed); record: %s", len(digests), removed, record_uri)
    return {**record, "record": record_uri}


def main(argv: list[str] | None = None) -> int:
    """`python -m orchard forget`: erase images from the configured lake (standard AWS chain on S3)."""
    parser = argparse.ArgumentParser(
        prog="python -m orchard forget", description=__doc__.splitlines()[1].strip() if __doc__ else None
    )
    parser.add_argument(
        "--dataset", required=True, help="dataset folder name in the lake (the source's name)"
    )
    parser.add_argument(
        "--paths-file", type=Path, help="file listing image paths (one per line or JSON list)"
    )
    parser.add_argument("--reason", default="", help="why (e.g. a request reference); stored in the record")
    parser.add_argument("paths", nargs="*", help="image paths relative to the dataset folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = collect_paths(args.paths, args.paths_file)
    settings = Settings.from_env()
    lake = lake_for(settings)
    lake.check_format(settings.lake)
    record = forget_images(lake, settings.lake, args.dataset, paths, args.reason)
    print(json.dumps(record, indent=2))
    return 0
