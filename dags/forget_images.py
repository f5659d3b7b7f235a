"""
# forget_images

Right to erasure. Give the dataset (the source folder's name) and the image paths to forget,
relative to it, as in the `path` column of `pcaFeatures.csv` (or the path of a file listing them,
one per line or a JSON list). The run removes:

- the images from the lake (`$ORCHARD_LAKE/images/<dataset>/`),
- their features from the features cache (by content SHA-256, for every weights version),
- their rows from every run's features, quarantine and PCA outputs and `pcaFeatures.csv`,

rewrites the runs' reports and manifests, and records the erasure in
`$ORCHARD_LAKE/erasures/<time>.json` with SHA-256 digests and row counts, never the image or its
name. The source folder is not touched: remove the images there too, or the next upload brings
them back. Same as `python -m orchard forget --dataset DATASET PATH ...`.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, get_current_context, task

from orchard.config import Settings
from orchard.tasks.forget import forget as forget_images

settings = Settings.from_env()

with DAG(
    dag_id="forget_images",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["orchard", "gdpr"],
    default_args={"retries": 0},
    params={
        "dataset": Param(
            "sample",
            type="string",
            minLength=1,
            title="Dataset",
            description="Name of the source folder the images came from (its folder in the lake).",
        ),
        "paths": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            title="Image paths",
            description="Paths relative to the dataset folder, e.g. Kiwi/IMG_0001.jpg (one per line).",
        ),
        "paths_file": Param(
            None,
            type=["null", "string"],
            title="File of image paths",
            description="Path of a file listing image paths (one per line or a JSON list).",
        ),
        "reason": Param(
            "",
            type="string",
            maxLength=200,
            title="Reason",
            description="A reference for the record, e.g. the request's ticket id. No personal data.",
        ),
    },
):

    @task(multiple_outputs=True)
    def forget() -> dict:
        """Erase the images and their derived rows; returns the erasure record (digests only)."""
        return forget_images(settings, get_current_context()["params"])

    forget()
