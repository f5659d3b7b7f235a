"""Small files through Hadoop's FileSystem (file:, s3: on EMR, s3a:): the Spark steps' view of the lake.

The Airflow side reaches the same files through orchard.storage.lake; the steps cannot import it (they ship
alone to the cluster) and need Hadoop's own paths and credentials anyway.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession


def _path_and_fs(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm: Any = spark.sparkContext._jvm  # py4j's gateway: untyped
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write (replace) one small UTF-8 file at `uri`."""
    path, fs = _path_and_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """The whole content of one file at `uri` (a model: megabytes, not data sets).

    Hadoop copies it to a local temporary file that Python reads: far quicker than returning the
    bytes through py4j (docs/performance.md, "Featurize step").
    """
    path, fs = _path_and_fs(spark, uri)
    jvm: Any = spark.sparkContext._jvm  # py4j's gateway: untyped
    with tempfile.TemporaryDirectory(prefix="orchard-read-") as tmp:
        local = Path(tmp) / "content"
        # useRawLocalFileSystem: no .crc file beside the copy.
        target = jvm.org.apache.hadoop.fs.Path(jvm.java.io.File(str(local)).toURI())
        fs.copyToLocalFile(False, path, target, True)
        return local.read_bytes()


def read_json(spark: SparkSession, uri: str) -> Any:
    """One small JSON document at `uri`."""
    return json.loads(read_bytes(spark, uri).decode("utf-8"))


def write_json(spark: SparkSession, uri: str, payload: dict[str, Any]) -> None:
    """Write one small JSON document at `uri`."""
    write_text(spark, uri, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def exists(spark: SparkSession, uri: str) -> bool:
    """Whether a file or folder exists at `uri`."""
    path, fs = _path_and_fs(spark, uri)
    return bool(fs.exists(path))


def file_names(spark: SparkSession, uri: str) -> set[str]:
    """Names of the files directly below the folder `uri` (none when it does not exist)."""
    path, fs = _path_and_fs(spark, uri)
    if not fs.exists(path):
        return set()
    return {str(status.getPath().getName()) for status in fs.listStatus(path) if status.isFile()}
