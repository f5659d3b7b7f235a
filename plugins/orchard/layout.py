"""Where everything lives in the lake. Every lake path is built here, and nowhere else.

    {lake}/images/<dataset>/...                  the source as of its last upload (shared by runs)
    {lake}/cache/features/...                    features by image content and weights (shared)
    {lake}/cache/models/<weights>/               the ONNX model per weights (shared)
    {lake}/runs/<run id>/attempt-<n>/...         one attempt of a run: its inputs and outputs
    {lake}/latest.json                           the newest finished attempt of any run
    {lake}/lake.json                             the version of this layout (orchard.storage.lake)
    {lake}/state/source_watch.json               the source watch's last fingerprint
    {lake}/erasures/<time>.json                  one record per erasure (forget_images)
    {lake}/artifacts/<content hash>/...          the EMR steps' code and bootstrap, staged
    {lake}/artifacts/wheelhouse/<hash>/          the EMR nodes' wheels
    {lake}/emr-logs/                             the EMR clusters' logs (default LogUri)
    {lake}/history/<time>-<run>-attempt-<n>.json  what each finished attempt did, where, how fast

Each attempt of a run (a first run, then each clear-and-rerun of it) writes under its own prefix,
and `latest.json` moves to an attempt only once that attempt has finished: what readers see is
never rewritten under them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ATTEMPT = re.compile(r"attempt-([1-9][0-9]*)/")
MANIFEST = "manifest.json"


def slug(text: str) -> str:
    """A name safe in any URI and Hadoop path (no ':' or '+', which Hadoop paths reject)."""
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    if not cleaned:
        raise ValueError(f"{text!r} has no characters usable in a path")
    return cleaned


@dataclass(frozen=True)
class LakeLayout:
    """The lake's shared places, under the lake URI `lake` (file://, s3:// or s3a://)."""

    lake: str

    def images(self, dataset: str) -> str:
        """The synced images of a dataset (the source folder's or prefix's name)."""
        return f"{self.lake}/images/{slug(dataset)}"

    @property
    def cache(self) -> str:
        """Features by image content (SHA-256) and weights, shared by all runs: never computed twice."""
        return f"{self.lake}/cache/features"

    def feature_cache(self, model_sha256: str) -> str:
        """The cached features of one model (as orchard_jobs.features.cache_uri names its folder)."""
        return f"{self.cache}/model={model_sha256[:16]}"

    @property
    def models(self) -> str:
        """The featurization model converted to ONNX, per weights, shared by all runs."""
        return f"{self.lake}/cache/models"

    @property
    def runs(self) -> str:
        """Where every run's attempts are."""
        return f"{self.lake}/runs"

    def run_folder(self, run_id: str) -> str:
        """All attempts of one run."""
        return f"{self.runs}/{slug(run_id)}"

    def attempt_of(self, run_id: str, uri: str) -> int | None:
        """The attempt number of a URI below `run_folder(run_id)`, or None for any other URI."""
        folder = self.run_folder(run_id) + "/"
        match = _ATTEMPT.match(uri[len(folder) :]) if uri.startswith(folder) else None
        return int(match.group(1)) if match else None

    @property
    def latest(self) -> str:
        """Points at the newest finished attempt: run id, attempt, CSV, manifest, report."""
        return f"{self.lake}/latest.json"

    @property
    def format_file(self) -> str:
        """The version of the lake's layout, so that a later Orchard knows what it reads."""
        return f"{self.lake}/lake.json"

    def manifests(self, uris: list[str]) -> list[str]:
        """The manifests among URIs listed below `runs`: one per attempt, at its root."""
        return [u for u in uris if self._is_manifest(u)]

    def _is_manifest(self, uri: str) -> bool:
        rest = uri[len(self.runs) + 1 :].split("/") if uri.startswith(self.runs + "/") else []
        return len(rest) == 3 and _ATTEMPT.match(rest[1] + "/") is not None and rest[2] == MANIFEST

    @property
    def watch_state(self) -> str:
        """The source watch's last fingerprint of the source folder."""
        return f"{self.lake}/state/source_watch.json"

    def erasure_record(self, stamp: str) -> str:
        """The record of one erasure, named by its UTC time."""
        return f"{self.lake}/erasures/{stamp}.json"

    def artifacts(self, content_hash: str) -> str:
        """The EMR steps' code and bootstrap, under the hash of their content."""
        return f"{self.lake}/artifacts/{content_hash}"

    def wheelhouse(self, requirements_hash: str) -> str:
        """The EMR nodes' wheels, under the hash of the requirements and architecture."""
        return f"{self.lake}/artifacts/wheelhouse/{requirements_hash}"

    @property
    def emr_logs(self) -> str:
        """The EMR clusters' logs (their LogUri), unless ORCHARD_EMR_LOG_URI says otherwise."""
        return f"{self.lake}/emr-logs/"

    @property
    def history(self) -> str:
        """One record per finished attempt (its machine, work and phases): what plans calibrate on."""
        return f"{self.lake}/history"

    def history_record(self, stamp: str, run_id: str, attempt: int) -> str:
        """A finished attempt's record, named by its UTC time first, so name order is time order."""
        return f"{self.history}/{stamp}-{slug(run_id)}-attempt-{attempt}.json"

    def run(self, dataset: str, run_id: str, attempt: int = 1) -> RunLayout:
        """The layout of one attempt of a run."""
        return RunLayout(self.lake, dataset, run_id, attempt)


@dataclass(frozen=True)  # ruff: ignore[too-many-public-methods] - a property per path of an attempt
class RunLayout:
    """The URIs of one attempt of a run: the synced images it reads, and its own outputs."""

    lake: str
    dataset: str
    run_id: str
    attempt: int = 1

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise ValueError(f"attempt must be 1 or more, got {self.attempt}")
        for name in (self.dataset, self.run_id):
            slug(name)  # refuses a name with nothing usable in a path, now rather than later

    @property
    def shared(self) -> LakeLayout:
        """The lake's shared places."""
        return LakeLayout(self.lake)

    @property
    def images(self) -> str:
        """The dataset's synced images (shared by the dataset's runs)."""
        return self.shared.images(self.dataset)

    @property
    def cache(self) -> str:
        """The shared features cache."""
        return self.shared.cache

    @property
    def models(self) -> str:
        """The shared ONNX models."""
        return self.shared.models

    @property
    def root(self) -> str:
        """Everything this attempt writes is below here."""
        return f"{self.shared.run_folder(self.run_id)}/attempt-{self.attempt}"

    @property
    def inference_model(self) -> str:
        """Which ONNX model this attempt featurizes with, and the account of its weights."""
        return f"{self.root}/inference_model.json"

    @property
    def inputs(self) -> str:
        """What the source held when this attempt uploaded it: the paths the featurize step reads."""
        return f"{self.root}/inputs"

    @property
    def inputs_file(self) -> str:
        """The one Parquet file of `inputs`."""
        return f"{self.inputs}/part-00000.parquet"

    @property
    def features(self) -> str:
        """1280 features per featurized image (Parquet)."""
        return f"{self.root}/features"

    @property
    def quarantine(self) -> str:
        """One row, with its reason, per input that could not be featurized (Parquet)."""
        return f"{self.root}/quarantine"

    @property
    def featurize_summary(self) -> str:
        """The featurize step's counts, timings and versions."""
        return f"{self.root}/featurize.json"

    @property
    def pca(self) -> str:
        """The PCA scores (Parquet)."""
        return f"{self.root}/pca"

    @property
    def model(self) -> str:
        """The fitted PCA model (a pyspark.ml PCAModel)."""
        return f"{self.root}/pca_model"

    @property
    def pca_summary(self) -> str:
        """The PCA step's k, variance and columns."""
        return f"{self.root}/pca.json"

    @property
    def csv_parts(self) -> str:
        """The CSV's rows in parts, as the PCA step wrote them."""
        return f"{self.root}/csv_parts"

    @property
    def csv(self) -> str:
        """The one pcaFeatures.csv."""
        return f"{self.root}/pcaFeatures.csv"

    @property
    def manifest(self) -> str:
        """What this attempt read, produced and used."""
        return f"{self.root}/{MANIFEST}"

    @property
    def plan(self) -> str:
        """The run's plan, made before its steps: the work, the machines, predicted time and cost."""
        return f"{self.root}/plan.json"

    @property
    def report_folder(self) -> str:
        """The report page and its plots."""
        return f"{self.root}/report"

    @property
    def report(self) -> str:
        """The report page."""
        return f"{self.report_folder}/report.html"

    def outputs(self) -> dict[str, str]:
        """The outputs a manifest lists, by name."""
        return {
            name: getattr(self, name)
            for name in ("plan", "features", "quarantine", "pca", "model", "csv", "report")
        }

    def to_xcom(self) -> dict[str, Any]:
        """What defines this layout, as plain data (XCom, JSON)."""
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: Any) -> RunLayout:
        """The layout `to_xcom` described."""
        return cls(str(data["lake"]), str(data["dataset"]), str(data["run_id"]), int(data["attempt"]))
