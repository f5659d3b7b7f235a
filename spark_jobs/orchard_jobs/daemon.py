"""The Python worker daemon of Orchard's Spark steps (`spark.python.daemon.module`).

Spark's daemon forks one Python worker per task slot; importing the workers' libraries here, once,
before the forks, saves every worker ~1 s of imports at start-up and shares those pages between
them. Imports only: no thread pool or model exists before a fork.
"""

import numpy  # ruff: ignore[unused-import]
import onnxruntime  # ruff: ignore[unused-import]
import pandas  # ruff: ignore[unused-import]
import pyarrow  # ruff: ignore[unused-import]
import pyarrow.parquet  # ruff: ignore[unused-import] - the pca step decodes its files in the workers
from PIL import Image  # ruff: ignore[unused-import]
from pyspark import daemon

if __name__ == "__main__":
    daemon.manager()
