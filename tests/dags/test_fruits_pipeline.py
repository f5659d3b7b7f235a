"""DAG integrity: imports cleanly, parses with nothing configured, has the expected graph and form."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DAG_ID = "fruits_pipeline"
DAGS = ["forget_images", DAG_ID]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


EMR_GRAPH = {
    "check_aws": [],
    "stage_artifacts": ["check_aws"],
    "upload_images": ["check_aws"],
    "convert_model": ["upload_images"],
    # The plan sizes the cluster: before it, after the model (the cache's folder) and the staging
    # (the instance type's vCPUs and memory).
    "plan": ["convert_model", "stage_artifacts", "upload_images"],
    "create_cluster": ["plan"],
    "add_featurize_step": ["create_cluster", "stage_artifacts", "upload_images"],
    "wait_featurize": ["add_featurize_step", "create_cluster", "upload_images"],
    "add_pca_step": ["create_cluster", "stage_artifacts", "upload_images", "wait_featurize"],
    "wait_pca": ["add_pca_step", "create_cluster", "upload_images"],
    "export_csv": ["upload_images", "wait_pca"],
    "terminate_cluster": ["create_cluster", "export_csv"],
    "report": ["create_cluster", "export_csv", "terminate_cluster", "upload_images"],
    "retention": ["report", "stage_artifacts"],
    "check_outcome": ["retention", "terminate_cluster"],
}


def parse_in_clean_interpreter(extra_env: dict[str, str]) -> dict:
    """Parse the DAG folder in a new interpreter with no AIRFLOW_CONN_* and only `extra_env` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "ORCHARD_"))}
    script = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'pyspark', 'pandas') if m in sys.modules]\n"
        "dag = bag.dags.get('fruits_pipeline')\n"
        "graph = {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {}\n"
        "teardowns = [t.task_id for t in dag.tasks if t.is_teardown] if dag else []\n"
        "timetable = type(dag.timetable).__name__ if dag else None\n"
        "waits = {t.task_id: [t.base_seconds, t.seconds_per_image, repr(t.images), t.log_uri, t.deferrable]"
        " for t in (dag.tasks if dag else []) if hasattr(t, 'seconds_per_image')}\n"
        "step_ids = {t.task_id: t.step_id for t in (dag.tasks if dag else []) if hasattr(t, 'step_id')}\n"
        "operators = {t.task_id: type(t).__name__ for t in (dag.tasks if dag else [])}\n"
        "limits = {t.task_id: t.steps[0]['HadoopJarStep']['Args'][:3] for t in (dag.tasks if dag else [])"
        " if type(t).__name__ == 'RunStepsOperator'}\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},"
        " 'dags': sorted(bag.dag_ids), 'heavy': heavy, 'graph': graph, 'teardowns': teardowns,"
        " 'timetable': timetable, 'summary': str(dag.schedule) if dag else None, 'waits': waits,"
        " 'step_ids': step_ids, 'operators': operators, 'limits': limits}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env={**env, **extra_env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parses_with_no_connections_variables_or_settings_and_no_heavy_imports():
    result = parse_in_clean_interpreter({})
    assert (result["errors"], result["dags"], result["heavy"]) == ({}, DAGS, [])
    assert set(result["graph"]) == {
        "upload_images",
        "convert_model",
        "plan",
        "featurize",
        "pca",
        "export_csv",
        "report",
        "retention",
    }
    assert result["summary"] == "@daily"  # the documented default schedule


@pytest.mark.parametrize(
    ("value", "timetable"), [("none", "NullTimetable"), ("0 3 * * 1", "CronTriggerTimetable")]
)
def test_schedule_is_configurable(value, timetable):
    result = parse_in_clean_interpreter({"ORCHARD_SCHEDULE": value})
    assert (result["errors"], result["dags"]) == ({}, DAGS)
    assert result["timetable"] == timetable


def test_asset_schedule_adds_the_source_watch():
    result = parse_in_clean_interpreter({"ORCHARD_SCHEDULE": "asset"})
    assert (result["errors"], result["heavy"]) == ({}, [])
    assert result["dags"] == [*DAGS, "orchard_source_watch"]
    assert result["timetable"] == "AssetTriggeredTimetable"


def test_emr_target_renders_the_full_graph_with_no_connections():
    result = parse_in_clean_interpreter({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://bucket/lake"})
    assert (result["errors"], result["dags"], result["heavy"]) == ({}, DAGS, [])
    assert result["graph"] == EMR_GRAPH
    assert sorted(result["teardowns"]) == ["check_outcome", "terminate_cluster"]


def test_emr_step_waits_are_sized_from_the_uploads_image_count():
    """The sensors get the upload's image count (an XCom) and the DAG's sizing; the log URI defaults
    under the lake. step_timeout's arithmetic is tested in tests/plugins/test_emr.py."""
    result = parse_in_clean_interpreter({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://bucket/lake"})
    count = "XComArg(<Task(_PythonDecoratedOperator): upload_images>, 'image_count')"
    logs = "s3://bucket/lake/emr-logs/"
    assert result["waits"] == {
        "wait_featurize": [45 * 60, 0.1, count, logs, True],
        "wait_pca": [20 * 60, 0.01, count, logs, True],
    }
    # The cluster's own bound on each step: the same sizing, from the same count (rendered in
    # tests/plugins/test_emr.py), so it holds if Airflow dies.
    images = "ti.xcom_pull(task_ids='upload_images', key='image_count')"
    assert result["limits"] == {
        "add_featurize_step": [
            "timeout",
            "--kill-after=60",
            f"{{{{ step_time_limit({images}, 2700, 0.1) }}}}",
        ],
        "add_pca_step": ["timeout", "--kill-after=60", f"{{{{ step_time_limit({images}, 1200, 0.01) }}}}"],
    }


@pytest.mark.backs("an Airflow task killed mid-run")
def test_retried_emr_tasks_find_the_cluster_and_steps_of_their_run_again():
    """A retried sensor renders its step id again from the add-steps task's XCom; a retried add-steps
    task returns the step already on the cluster and a retried create_cluster its run's cluster
    (RunStepsOperator, RunClusterOperator: tests/plugins/test_emr.py)."""
    result = parse_in_clean_interpreter({"ORCHARD_TARGET": "emr", "ORCHARD_LAKE": "s3://bucket/lake"})
    assert result["step_ids"] == {
        "wait_featurize": "{{ ti.xcom_pull(task_ids='add_featurize_step')[0] }}",
        "wait_pca": "{{ ti.xcom_pull(task_ids='add_pca_step')[0] }}",
    }
    operators = result["operators"]
    assert operators["create_cluster"] == "RunClusterOperator"
    assert operators["add_featurize_step"] == operators["add_pca_step"] == "RunStepsOperator"


def test_task_graph(dag):
    upstream = {task_id: sorted(task.upstream_task_ids) for task_id, task in dag.task_dict.items()}
    assert upstream == {
        "upload_images": [],
        "convert_model": ["upload_images"],
        "plan": ["convert_model", "upload_images"],
        "featurize": ["plan", "upload_images"],
        "pca": ["featurize", "upload_images"],
        "export_csv": ["pca", "upload_images"],
        "report": ["export_csv", "upload_images"],
        "retention": ["report"],
    }


def test_spark_steps_are_spark_submits_of_the_jobs(dag):
    featurize, pca = dag.get_task("featurize"), dag.get_task("pca")
    assert type(featurize).__name__ == "SparkSubmitOperator"
    assert featurize.application == str(ROOT / "spark_jobs" / "featurize.py")
    assert pca.application == str(ROOT / "spark_jobs" / "pca.py")
    assert featurize._conn_id == pca._conn_id == "orchard_spark"


def test_one_run_at_a_time_and_documented(dag):
    assert dag.max_active_runs == 1
    assert not dag.catchup
    assert dag.start_date is not None
    assert "pcaFeatures.csv" in dag.doc_md
    assert "## Reading the report" in dag.doc_md


def test_every_param_is_a_documented_form_field(dag):
    assert set(dag.params) == {
        "source", "pca_k", "pca_variance", "pca_mode", "weights", "weights_fallback", "limit", "partitions"
    }  # fmt: skip
    for name, param in dag.params.items():
        assert param.schema.get("title"), name
        assert param.description, name
        assert param.schema.get("type"), name  # the form renders a field of the right kind
        bounded = {"enum", "pattern", "minimum", "exclusiveMinimum", "minLength"} & set(param.schema)
        assert bounded, f"{name} accepts anything"


@pytest.mark.parametrize(
    "conf",
    [
        {"pca_variance": 1.5},
        {"pca_variance": 0},
        {"pca_k": 0},
        {"pca_k": 5000},
        {"limit": -3},
        {"weights": "resnet50"},
        {"weights_fallback": "maybe"},
        {"pca_mode": "sometimes"},
    ],
)
def test_invalid_params_are_refused(dag, conf):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match=f"param {next(iter(conf))}"):
        params.update(conf)
        params.validate()


@pytest.mark.parametrize(
    "conf",
    [{}, {"pca_k": 10, "limit": 40}, {"weights": "random:7"}, {"weights": "s3://b/w/mobilenet.weights.h5"}],
)
def test_valid_params_pass(dag, conf):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    params.update(conf)
    params.validate()
