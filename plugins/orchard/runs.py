"""A run's attempts in the lake: which attempt a run is at, its manifest and CSV, and `latest.json`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from orchard.layout import LakeLayout, RunLayout
from orchard.storage.lake import Lake

log = logging.getLogger(__name__)


def build_manifest(
    run: RunLayout,
    sync: Mapping[str, Any],
    featurized: Mapping[str, Any],
    pca: Mapping[str, Any],
) -> dict[str, Any]:
    """What a run read, produced and used, with every input accounted for."""
    counts = dict(featurized["counts"])
    weights = featurized["weights"]
    return {
        "run_id": run.run_id,
        "run": run.to_xcom(),
        "source": sync.get("source"),
        "counts": {
            **counts,
            "source_files": sync["files"],
            "uploaded": sync["uploaded"],
            "upload_skipped_unchanged": sync["skipped"],
            "upload_failed": len(sync["failed"]),
            "upload_quarantined": len(sync.get("quarantined", {})),
            "deleted_from_lake": sync.get("deleted", 0),
            "hidden_names_ignored": len(sync["ignored"]),
            # The source's listing against what came out: every listed file is a row of one output.
            "accounted": sync["files"] == counts["inputs"] == counts["featurized"] + counts["quarantined"],
            "featurized_now": counts["featurized"] - counts.get("from_cache", 0),
        },
        "upload_failures": sync["failed"],
        "hidden_names_ignored": sync["ignored"],
        "weights": weights,
        "warnings": list(weights.get("warnings", [])),
        "pca": {
            "k": pca["k"],
            "target_variance": pca["target_variance"],
            "variance_kept": pca["variance_kept"],
            # Fitted by this run, or reused (pca_mode=reuse): where and when the basis was fitted.
            "basis": pca.get("basis"),
        },
        # The ONNX model the features came from: a later run reuses this PCA basis only with it.
        "model": featurized.get("model"),
        "timings_seconds": {
            "upload_images": sync.get("seconds"),
            "featurize": featurized.get("seconds"),
            "pca": pca.get("seconds"),
        },
        # The engine that computed the features (its name and version), beside the package versions.
        "engine": featurized.get("engine"),
        "versions": featurized.get("versions", {}),
        "images": run.images,
        "outputs": run.outputs(),
    }


def export_run(lake: Lake, run: RunLayout, sync: Mapping[str, Any]) -> dict[str, Any]:
    """Assemble pcaFeatures.csv from the PCA step's parts and write the attempt's manifest.

    Raises when the outputs do not account for every file the source listed.
    """
    featurized = lake.read_json(run.featurize_summary)
    pca = lake.read_json(run.pca_summary)
    if lake.list_files(run.csv_parts) or not lake.exists(run.csv):
        merge_stats = lake.merge_csv(pca["columns"], run.csv_parts, run.csv)
    else:  # this task again, after it assembled the CSV and removed the parts
        merge_stats = lake.read_json(run.manifest).get("csv_merge", {}) if lake.exists(run.manifest) else {}
    manifest = build_manifest(run, sync, featurized, pca)
    if not manifest["counts"]["accounted"]:
        counts = manifest["counts"]
        raise RuntimeError(
            f"accounting failed: the source listed {counts['source_files']} files, the featurize step read "
            f"{counts['inputs']}: {counts['featurized']} featurized + {counts['quarantined']} quarantined"
        )
    manifest["csv_merge"] = merge_stats
    # The plan made before the steps (the report adds what happened beside it).
    if lake.exists(run.plan):
        manifest["plan"] = lake.read_json(run.plan)
    lake.write_json(run.manifest, manifest)
    # The parts hold the CSV's bytes a second time: once it is assembled, they go.
    lake.delete_folder(run.csv_parts)
    for warning in manifest["warnings"]:
        log.warning("%s", warning)
    log.info("pcaFeatures.csv: %s (%d rows, k=%d)", run.csv, pca["n_images"], pca["k"])
    return manifest


def publish(lake: Lake, run: RunLayout) -> None:
    """Point the lake's `latest.json` at this attempt: the last write of a finished attempt."""
    pointer = {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "csv": run.csv,
        "manifest": run.manifest,
        "report": run.report,
    }
    lake.write_json(LakeLayout(run.lake).latest, pointer)
    log.info("latest.json now points at %s", run.root)


def published_basis(lake: Lake, lake_uri: str, model_sha256: str, mode: str) -> RunLayout | None:
    """The attempt whose PCA model `latest.json` publishes, when its features came from this model.

    Raises for `reuse` when the published basis was fitted on another model's features: its axes
    do not apply. Without anything published (a first run) there is none, and the run fits.
    """
    try:
        latest = lake.read_json(LakeLayout(lake_uri).latest)
    except FileNotFoundError:
        return None
    manifest = lake.read_json(latest["manifest"])
    used = (manifest.get("model") or {}).get("sha256")
    if used != model_sha256:
        if mode == "reuse":
            raise ValueError(
                f"pca_mode=reuse: the published PCA basis ({latest['manifest']}) was fitted on features of "
                f"model {used or 'unrecorded'}, this run's model is {model_sha256}: run once with "
                "pca_mode=refit to publish a basis for it"
            )
        return None
    return RunLayout.from_xcom(manifest["run"])


def next_attempt(lake: Lake, lake_uri: str, run_id: str) -> int:
    """1 + the highest attempt of `run_id` the lake holds (1 for a new run).

    Taken from the lake, not from Airflow's try number: whatever re-runs the upload (a clear in
    the UI, `airflow dags test` on the same run, a retry), it never writes into an attempt readers saw.
    """
    return max(attempts(lake, lake_uri, run_id), default=0) + 1


def attempts(lake: Lake, lake_uri: str, run_id: str) -> dict[int, list[str]]:
    """The attempts of a run the lake holds: attempt number -> the URIs of its files."""
    shared = LakeLayout(lake_uri)
    found: dict[int, list[str]] = {}
    for uri in lake.list_files(shared.run_folder(run_id)):
        attempt = shared.attempt_of(run_id, uri)
        if attempt is not None:
            found.setdefault(attempt, []).append(uri)
    return found


def reported_attempt(lake: Lake, lake_uri: str, run_id: str) -> RunLayout | None:
    """The newest attempt of a run that has its report, as its manifest describes it; else None."""
    for _, files in sorted(attempts(lake, lake_uri, run_id).items(), reverse=True):
        for uri in LakeLayout(lake_uri).manifests(files):
            run = RunLayout.from_xcom(lake.read_json(uri)["run"])
            if lake.exists(run.report):
                return run
    return None
