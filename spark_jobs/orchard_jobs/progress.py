"""Progress of the featurize stage, logged by the driver while Spark works.

The driver's log is what the Airflow task log shows for a local spark-submit and what an EMR
step's log shows (client deploy mode). Python workers cannot report to the driver while a task
runs (and accumulators from pandas UDFs are lost on Spark 3.5), so progress is counted in
finished tasks of the featurize stage: round-robin repartitioning gives every task the same
number of images (±1), so finished tasks times images per task is the number of images done.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("orchard.progress")


def progress_line(done_tasks: int, tasks: int, images: int, elapsed: float) -> str:
    """One progress line: images done of the total, share, rate and an estimate of what is left."""
    done = images if done_tasks >= tasks else round(images * done_tasks / max(tasks, 1))
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f", ~{(images - done) / rate:.0f} s left" if 0 < done < images and rate > 0 else ""
    share = 100.0 * done / images if images else 100.0
    return (
        f"featurize progress: {done}/{images} images ({share:.0f}%), tasks {done_tasks}/{tasks}, "
        f"{rate:.1f} images/s, {elapsed:.0f} s elapsed{left}"
    )


class StageProgress:
    """Log progress of the Spark jobs run under `group` every `every` seconds, and once at the end.

    Use as a context manager around the action that runs the featurization.
    """

    def __init__(self, spark_context: Any, group: str, tasks: int, images: int, every: float = 10.0):
        self.sc = spark_context
        self.group = group
        self.tasks = tasks
        self.images = images
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orchard-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> StageProgress:
        self.sc.setJobGroup(self.group, f"orchard featurize of {self.images} files")
        self._started = time.monotonic()
        log.info("featurize started: %s files in %s tasks", self.images, self.tasks)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            log.info(progress_line(self.tasks, self.tasks, self.images, time.monotonic() - self._started))

    def done_tasks(self) -> int:
        """Finished tasks of the featurize stage (the group's stage with `tasks` tasks)."""
        tracker = self.sc.statusTracker()
        done = 0
        for job_id in tracker.getJobIdsForGroup(self.group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job else ():
                stage = tracker.getStageInfo(stage_id)
                if stage and stage.numTasks == self.tasks:
                    done = max(done, stage.numCompletedTasks)
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                done = self.done_tasks()
            except Exception as exc:  # progress must never break the job
                log.debug("progress unavailable: %s", exc)
                continue
            log.info(progress_line(done, self.tasks, self.images, time.monotonic() - self._started))
