"""Settings from the environment, the lake layout, and the Spark step arguments."""

from __future__ import annotations

import sys

import pytest

from orchard.config import PROJECT_ROOT, Settings
from orchard.layout import LakeLayout, RunLayout, slug
from orchard.spark import steps
from orchard.uris import local_path, normalise_uri


@pytest.mark.backs("default region in the EU")
def test_defaults_are_the_embedded_local_setup():
    settings = Settings.from_env({})
    assert settings.target == "local"
    assert settings.lake == f"file://{PROJECT_ROOT}/lake"
    assert settings.default_source == str(PROJECT_ROOT / "data" / "sample")
    assert settings.spark_conn_id == "orchard_spark"
    assert settings.spark_jobs_dir == str(PROJECT_ROOT / "spark_jobs")
    assert settings.pyspark_python == sys.executable
    assert (settings.weights, settings.weights_fallback) == ("imagenet", "random")
    assert settings.region == "eu-west-1"  # EU by default (photos may be personal data)
    assert settings.schedule == "@daily"


def test_environment_overrides(tmp_path):
    settings = Settings.from_env(
        {
            "ORCHARD_LAKE": str(tmp_path / "my lake") + "/",
            "ORCHARD_WEIGHTS_FALLBACK": "fail",
            "ORCHARD_TARGET": "LOCAL",
        }
    )
    assert settings.lake == f"file://{tmp_path}/my lake"
    assert settings.weights_fallback == "fail"
    assert settings.target == "local"


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="ORCHARD_TARGET='gpu'"):
        Settings.from_env({"ORCHARD_TARGET": "gpu"})


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/lake/", "s3://bucket/lake"),
        ("file:///srv/lake", "file:///srv/lake"),
        ("file:/srv/lake/", "file:///srv/lake"),
        ("/srv/a b/lake", "file:///srv/a b/lake"),
    ],
)
def test_normalise_uri(uri, expected):
    assert normalise_uri(uri) == expected


def test_run_ids_become_safe_path_names():
    assert slug("manual__2026-11-21T10:00:00.123+00:00") == "manual__2026-11-21T10_00_00.123_00_00"
    assert slug("Apple Golden 1") == "Apple_Golden_1"
    with pytest.raises(ValueError, match="no characters"):
        slug("::")


OWN_PATHS = [
    "root", "inference_model", "inputs", "inputs_file", "features", "quarantine", "featurize_summary",
    "pca", "model", "pca_summary", "csv_parts", "csv", "manifest", "report_folder", "report",
]  # fmt: skip


def own_paths(run: RunLayout) -> dict[str, str]:
    return {name: getattr(run, name) for name in OWN_PATHS}


def test_run_layout_keeps_runs_apart():
    one = LakeLayout("s3://b/lake").run("Fruits 360", "manual__1")
    two = LakeLayout("s3://b/lake").run("Fruits 360", "scheduled__2")
    assert one.images == two.images == "s3://b/lake/images/Fruits_360"
    assert one.csv == "s3://b/lake/runs/manual__1/attempt-1/pcaFeatures.csv"
    assert one.cache == two.cache == "s3://b/lake/cache/features"  # shared by all runs
    assert one.models == two.models == "s3://b/lake/cache/models"
    outputs = own_paths(one)
    assert all(v.startswith("s3://b/lake/runs/manual__1/attempt-1") for v in outputs.values())
    assert not set(outputs.values()) & set(own_paths(two).values())


def test_each_attempt_of_a_run_has_its_own_prefix():
    first = LakeLayout("file:///lake").run("sample", "manual__1", attempt=1)
    again = LakeLayout("file:///lake").run("sample", "manual__1", attempt=2)
    assert again.root == "file:///lake/runs/manual__1/attempt-2"
    assert not set(own_paths(first).values()) & set(own_paths(again).values())
    assert first.images == again.images and first.cache == again.cache  # shared by every attempt
    assert RunLayout.from_xcom(again.to_xcom()) == again
    assert LakeLayout("file:///lake").latest == "file:///lake/latest.json"
    with pytest.raises(ValueError, match="attempt"):
        RunLayout("file:///lake", "sample", "r1", attempt=0)
    with pytest.raises(ValueError, match="no characters"):
        RunLayout("file:///lake", "::", "r1")


def test_local_path_reads_file_uris_literally():
    assert str(local_path("file:///srv/a b/x%20y.csv")) == "/srv/a b/x%20y.csv"
    with pytest.raises(ValueError, match="not a local"):
        local_path("s3://bucket/x")


def render(args: list[str], run: RunLayout, params: dict, basis: RunLayout | None = None) -> list[str]:
    """The arguments as a task renders them: the run's layout from the upload's XCom, the published
    basis from convert_model's, the params."""
    from jinja2 import Environment

    class TaskInstance:
        def xcom_pull(self, task_ids: str, key: str) -> dict | None:
            if (task_ids, key) == (steps.MODEL_TASK, "basis"):
                return None if basis is None else basis.to_xcom()
            assert (task_ids, key) == (steps.UPLOAD_TASK, "run")
            return run.to_xcom()

    env = Environment()
    context = {**steps.MACROS, "ti": TaskInstance(), "params": params}
    return [env.from_string(arg).render(context) for arg in args]


def test_step_arguments_name_every_output():
    run = LakeLayout("file:///lake").run("sample", "r1", attempt=3)
    params = {"partitions": None, "limit": 5, "pca_k": None, "pca_variance": 0.9, "pca_mode": "refit"}
    featurize = render(steps.dag_featurize_args(), run, params)
    pca = render(steps.dag_pca_args(), run, params)
    flags = dict(zip(featurize[::2], featurize[1::2], strict=True))
    assert flags["--images"] == "file:///lake/images/sample"
    assert flags["--features"] == run.features
    assert flags["--model"] == "file:///lake/runs/r1/attempt-3/inference_model.json" == run.inference_model
    assert flags["--cache"] == "file:///lake/cache/features"
    assert (flags["--partitions"], flags["--limit"]) == ("0", "5")
    pca_flags = dict(zip(pca[::2], pca[1::2], strict=True))
    assert pca_flags["--features"] == run.features
    assert pca_flags["--csv-parts"] == run.csv_parts
    assert (pca_flags["--k"], pca_flags["--variance"]) == ("0", "0.9")
    assert (pca_flags["--cache"], pca_flags["--mode"]) == ("file:///lake/cache/features", "refit")
    assert not pca_flags["--basis"] and not pca_flags["--basis-summary"]  # nothing published yet
    # A published basis (an attempt of another run, written on the S3 URI) is read on this run's lake URI.
    published = LakeLayout("s3://bucket/lake").run("sample", "r0", attempt=2)
    on_s3 = LakeLayout("s3a://bucket/lake").run("sample", "r1")
    pca = render(steps.dag_pca_args(), on_s3, {**params, "pca_mode": "reuse"}, basis=published)
    pca_flags = dict(zip(pca[::2], pca[1::2], strict=True))
    assert pca_flags["--basis"] == "s3a://bucket/lake/runs/r0/attempt-2/pca_model"
    assert pca_flags["--basis-summary"] == "s3a://bucket/lake/runs/r0/attempt-2/pca.json"
    assert pca_flags["--mode"] == "reuse"
    assert steps.spark_conf()["spark.sql.execution.arrow.maxRecordsPerBatch"] == str(steps.ARROW_BATCH)


def test_a_lake_on_minio_for_local_spark_uses_s3a_and_the_endpoint():
    settings = Settings.from_env(
        {
            "ORCHARD_LAKE": "s3://orchard/lake",
            "ORCHARD_S3_ENDPOINT": "http://minio:9000",
            "ORCHARD_S3_ENCRYPTION": "sse-s3",
        }
    )
    assert settings.lake_on_s3
    assert settings.spark_lake == "s3a://orchard/lake"
    conf = steps.local_spark_conf(settings)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://minio:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"].endswith(
        "EnvironmentVariableCredentialsProvider"
    )
    assert conf["spark.hadoop.fs.s3a.encryption.algorithm"] == "SSE-S3"
    assert not any("secret" in key.lower() or "access.key" in key for key in conf)
    kms = Settings.from_env({"ORCHARD_LAKE": "s3://orchard/lake", "ORCHARD_KMS_KEY_ID": "k-1"})
    kms_conf = steps.local_spark_conf(kms)
    assert (
        kms_conf["spark.hadoop.fs.s3a.encryption.algorithm"],
        kms_conf["spark.hadoop.fs.s3a.encryption.key"],
    ) == (
        "SSE-KMS",
        "k-1",
    )


def test_emr_reads_the_lake_through_emrfs_and_a_local_lake_needs_no_s3a():
    emr_settings = Settings.from_env({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://b/l"})
    assert emr_settings.spark_lake == "s3://b/l"
    local = Settings.from_env({})
    assert not local.lake_on_s3
    # A local lake: the common configuration plus the preloading worker daemon, no s3a settings.
    assert steps.local_spark_conf(local) == {
        **steps.spark_conf(),
        "spark.python.daemon.module": "orchard_jobs.daemon",
        "spark.driver.extraJavaOptions": steps.local_java_options(local),
        "spark.sql.files.openCostInBytes": "65536",
    }


def test_the_steps_spark_sql_settings_are_ones_spark_knows(spark):
    # Spark ignores an unknown spark.sql.* key without a word; a registered runtime SQL setting is
    # modifiable. Both targets list the images without block locations (neither has any).
    from orchard.aws import emr
    from orchard_jobs import pca

    conf = steps.local_spark_conf(Settings.from_env({})) | emr.step_conf()
    assert conf["spark.sql.sources.ignoreDataLocality"] == "true"
    conf |= pca.SPARK_CONF  # what the pca step sets in its own session
    sql = [key for key in conf if key.startswith("spark.sql.")]
    assert [key for key in sql if not spark.conf.isModifiable(key)] == []


def test_local_steps_map_the_class_archive_only_when_it_exists(tmp_path):
    archive = tmp_path / "classes.jsa"
    settings = Settings.from_env({"ORCHARD_SPARK_CLASS_ARCHIVE": str(archive)})
    jvm = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:MinHeapFreeRatio=20 -XX:MaxHeapFreeRatio=40"
    assert steps.local_java_options(settings) == jvm  # not built yet
    archive.write_bytes(b"archive")
    assert steps.local_java_options(settings) == f"{jvm} -XX:SharedArchiveFile={archive}"
    off = Settings.from_env({"ORCHARD_SPARK_CLASS_ARCHIVE": ""})
    assert steps.local_java_options(off) == jvm
    conf = steps.local_spark_conf(settings)
    assert conf["spark.driver.extraJavaOptions"] == steps.local_java_options(settings)


@pytest.mark.parametrize(
    ("env", "header", "s3a", "emrfs"),
    [
        # No header: the bucket's default encryption applies, SSE-S3 or SSE-KMS, and a bucket policy
        # that denies any other header than the bucket's key lets it through.
        ({}, {}, None, None),
        ({"ORCHARD_S3_ENCRYPTION": "sse-s3"}, {"ServerSideEncryption": "AES256"}, "SSE-S3",
         {"fs.s3.enableServerSideEncryption": "true"}),
        ({"ORCHARD_KMS_KEY_ID": "k-1"}, {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k-1"}, "SSE-KMS",
         {"fs.s3.enableServerSideEncryption": "true", "fs.s3.serverSideEncryption.kms.keyId": "k-1"}),
    ],
    ids=["bucket-default", "sse-s3", "sse-kms"],
)  # fmt: skip
def test_one_encryption_choice_for_every_writer(env, header, s3a, emrfs):
    """boto3/s3fs (uploads, JSON, CSV), local Spark's s3a and EMR's EMRFS send the same encryption."""
    from orchard.aws import emr

    settings = Settings.from_env({"ORCHARD_LAKE": "s3://orchard/lake", **env})
    assert settings.encryption == header
    assert steps.local_spark_conf(settings).get("spark.hadoop.fs.s3a.encryption.algorithm") == s3a
    flow = emr.job_flow_spec(
        settings, run_id="r", dag_id="d", bootstrap_uri="s3://b/i.sh", requirements_uri="s3://b/r.txt",
        wheelhouse_uri="s3://b/w.tar", instance_type="m5.xlarge", core_instances=2,
    )  # fmt: skip
    found = [c["Properties"] for c in flow["Configurations"] if c["Classification"] == "emrfs-site"]
    assert found == ([emrfs] if emrfs else [])
