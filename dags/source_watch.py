"""
# orchard_source_watch

Exists only with `ORCHARD_SCHEDULE=asset`. Every `ORCHARD_WATCH_SCHEDULE` (default: every 10
minutes) it fingerprints the source, a folder or an s3:// prefix (files, bytes, a digest of the
listing by size and modification time or ETag)
and compares it with the fingerprint it stored last time in `$ORCHARD_LAKE/state/source_watch.json`.

- changed (or first look): the task succeeds and updates the asset `orchard_source_images`, which
  schedules a run of `fruits_pipeline`;
- unchanged: the task is skipped, no asset event, no run.
"""

from __future__ import annotations

from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowSkipException

from orchard.config import Settings
from orchard.tasks import watch

settings = Settings.from_env()

if settings.schedule.lower() == "asset":
    with DAG(
        dag_id="orchard_source_watch",
        doc_md=__doc__,
        schedule=settings.watch_schedule,
        catchup=False,
        max_active_runs=1,
        tags=["orchard", "watch"],
        default_args={"retries": 0},
    ):

        @task(multiple_outputs=True, outlets=[watch.source_asset(settings)])
        def detect_new_images() -> dict:
            """Succeed (and update the asset) only when the source changed."""
            changed = watch.detect_new_images(settings)
            if changed is None:
                raise AirflowSkipException("source unchanged since the last look")
            return changed

        detect_new_images()
