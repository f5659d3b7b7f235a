"""Run inside the stack's Airflow image: the bodies of upload_images, convert_model and plan (what the
DAG runs before its Spark steps) on the S3 lake of the container's settings. Prints one JSON line."""

import json

from orchard.config import Settings
from orchard.layout import RunLayout
from orchard.tasks import pipeline

settings = Settings.from_env()
assert settings.lake_on_s3, settings.lake
params = {
    "source": "/opt/airflow/images",
    "limit": None,
    "weights": "random:5",
    "weights_fallback": "fail",
    "pca_mode": "refit",
}
upload = pipeline.upload_images(settings, params, "stack_s3_boundary")
run = RunLayout.from_xcom(upload["run"])
model = pipeline.convert_model(settings, params, run)
plan = pipeline.plan_local(settings, run, model, "local[2]")
print(
    json.dumps(
        {"inputs_file": run.inputs_file, "sync": upload["sync"], "model": model, "plan": plan}, default=str
    )
)
