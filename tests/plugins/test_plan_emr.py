"""The emr target's plan task on moto: the work from the lake's listing and cache, rates from a stubbed
history, the vCPU quota left from Service Quotas and EC2, and the cluster spec sized by the plan."""

from __future__ import annotations

import io
import json
import os

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchard import planning
from orchard.config import Settings
from orchard.layout import LakeLayout
from orchard.storage.lake import airflow_lake
from orchard.storage.sync import Input, listing_parquet
from orchard.tasks import pipeline
from tests.conftest import give_ec2_vcpu_quotas
from tests.emr_moto import LAKE, REGION
from tests.plugins.test_planning import emr_history

MODEL = {"sha256": "ab" * 32}
STAGED = {
    "bootstrap": f"{LAKE}/artifacts/h/install-python-deps.sh",
    "requirements": f"{LAKE}/artifacts/h/requirements.txt",
    "wheelhouse": f"{LAKE}/artifacts/wheelhouse/w/wheelhouse.tar",
    "instance": {"type": "m5.xlarge", "vcpu": 4, "memory_gb": 16.0},
}


@pytest.fixture
def lake_with_history(moto_server):
    """A run of 4,000 listed images, 1,000 of them in the cache, and two earlier m5.xlarge runs."""
    settings = Settings.from_env()
    lake = airflow_lake(settings)
    run = LakeLayout(settings.lake).run("photos", "scheduled__2026-12-07", 1)
    digests = [f"{i:064x}" for i in range(4000)]
    lake.write_bytes(
        run.inputs_file, listing_parquet(Input(f"c/{i}.jpg", 10, d) for i, d in enumerate(digests))
    )
    buffer = io.BytesIO()
    pq.write_table(pa.table({"sha256": [*digests[:1000], "f" * 64]}), buffer)
    cache = LakeLayout(settings.lake).feature_cache(MODEL["sha256"])
    lake.write_bytes(f"{cache}/part-0.parquet", buffer.getvalue())
    for record in emr_history():
        planning.write_history(lake, settings.lake, record)
    return settings, lake, run


def plan(settings: Settings, run, **params) -> dict:
    params = {"core_instances": 2, "sizing": "auto", "target_minutes": 15, **params}
    return pipeline.plan_emr(settings, params, run, MODEL, STAGED, "scheduled__2026-12-07", "fruits_pipeline")


def core_count(job_flow: dict) -> int:
    (core,) = [g for g in job_flow["Instances"]["InstanceGroups"] if g["InstanceRole"] == "CORE"]
    return core["InstanceCount"]


def test_auto_sizes_the_cluster_from_the_stubbed_history(lake_with_history, capsys):
    settings, lake, run = lake_with_history
    result = plan(settings, run)
    written = lake.read_json(run.plan)
    assert written == json.loads(json.dumps(result["plan"]))
    assert written["work"]["inputs"] == 4000
    assert (written["work"]["featurize_now"], written["work"]["from_cache"]) == (3000, 1000)
    assert written["history_used"] == ["r2#1", "r1#1"]
    # 740 s + 375 s / n: 2 nodes 927.5 s, 3 nodes 865 s; the target is 15 min (900 s).
    sizing = written["sizing"]
    assert (sizing["mode"], sizing["nodes"], sizing["met"]) == ("auto", 3, True)
    assert sizing["quota_left"] == {"on-demand": 64}
    assert written["machine"]["nodes"] == core_count(result["job_flow"]) == 3
    assert written["total_seconds"] == pytest.approx(865.0) and written["complete"]
    assert "median of 2 earlier clusters" in written["phases"]["cluster_start"]["basis"]
    assert written["cost"] is None  # no price configured
    # Logged before any cluster exists.
    out = capsys.readouterr().out
    assert "plan: 4000 images, 3000 to featurize now, 1000 from the cache" in out
    assert "plan: sizing auto: 3 core node(s)" in out


def test_auto_stays_within_the_vcpu_quota_that_running_instances_leave(lake_with_history, monkeypatch):
    settings, _, run = lake_with_history
    give_ec2_vcpu_quotas(monkeypatch, vcpus=64)
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto_endpoint())
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, InstanceType="m5.xlarge", MinCount=13, MaxCount=13)  # 52 vCPUs
    written = plan(settings, run)["plan"]
    sizing = written["sizing"]
    assert sizing["quota_left"] == {"on-demand": 12}
    assert (sizing["nodes"], sizing["met"]) == (2, False)
    assert "target of 15 min not met" in sizing["reason"]
    assert "vCPU quota left (16 on-demand vCPUs needed, 12 left)" in sizing["reason"]


def test_fixed_sizing_takes_core_instances_and_prices_the_plan(lake_with_history, monkeypatch):
    monkeypatch.setenv("ORCHARD_EMR_PRICES", '{"m5.xlarge": 0.262}')
    _, _, run = lake_with_history
    result = plan(Settings.from_env(), run, sizing="fixed", core_instances=5)
    written = result["plan"]
    assert written["sizing"] == {"mode": "fixed", "reason": "core_instances=5"}
    assert core_count(result["job_flow"]) == written["machine"]["nodes"] == 5
    assert written["total_seconds"] == pytest.approx(740 + 375 / 5)
    assert written["cost"]["cost"] == pytest.approx(6 * 815 / 3600 * 0.262, rel=1e-3)


def test_without_history_the_plan_says_what_it_does_not_know(moto_server):
    settings = Settings.from_env()
    lake = airflow_lake(settings)
    run = LakeLayout(settings.lake).run("photos", "manual__1", 1)
    lake.write_bytes(run.inputs_file, listing_parquet([Input("a/1.jpg", 1, "0" * 64)]))
    no_profile = settings.model_copy(update={"engine_profile": ""})
    result = pipeline.plan_emr(
        no_profile,
        {"core_instances": 2, "sizing": "fixed"},
        run,
        MODEL,
        STAGED,
        "manual__1",
        "fruits_pipeline",
    )
    written = result["plan"]
    assert written["history_used"] == [] and set(written["phases"]) == {"cluster_start"}
    assert written["phases"]["cluster_start"]["seconds"] == planning.DEFAULT_CLUSTER_START
    assert [u.split(":")[0] for u in written["unknown"]] == ["featurize", "between_steps", "pca", "finish"]
    with pytest.raises(ValueError, match="needs a measured featurize rate"):
        pipeline.plan_emr(
            no_profile,
            {"core_instances": 2, "sizing": "auto"},
            run,
            MODEL,
            STAGED,
            "manual__1",
            "fruits_pipeline",
        )


def moto_endpoint() -> str:
    return json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"]
