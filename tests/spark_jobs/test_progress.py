"""Progress lines of the featurize stage, from Spark's status tracker."""

from __future__ import annotations

import logging

import pytest
from pyspark.sql import functions as F

from orchard_jobs.progress import StageProgress, progress_line


def test_progress_line_counts_images_from_finished_tasks():
    line = progress_line(done_tasks=1, tasks=4, images=400, elapsed=10.0)
    assert line.startswith("featurize progress: 100/400 images (25%), tasks 1/4, 10.0 images/s")
    assert "~30 s left" in line
    assert progress_line(4, 4, 401, 20.0).startswith("featurize progress: 401/401 images (100%)")
    assert "left" not in progress_line(0, 4, 400, 0.0)


@pytest.mark.spark
def test_progress_is_logged_while_the_stage_runs(spark, caplog):
    slow = F.udf(lambda x: __import__("time").sleep(0.05) or x, "long")
    frame = spark.range(0, 40, 1, 4).repartition(4).select(slow("id").alias("id"))
    with caplog.at_level(logging.INFO, logger="orchard.progress"):
        with StageProgress(spark.sparkContext, "test-progress", tasks=4, images=40, every=0.2) as progress:
            assert frame.agg(F.sum("id")).first()[0] == sum(range(40))
        assert progress.done_tasks() == 4
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "featurize started: 40 files in 4 tasks"
    assert lines[-1].startswith("featurize progress: 40/40 images (100%), tasks 4/4")
    assert len(lines) >= 3  # at least one line while it ran
