"""A run's features as one table, read as a user would read a local lake: through its index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def read_features(features: Path, cache: Path | None = None) -> pd.DataFrame:
    """(path, label, features) of a features output: the features themselves, or, for an index
    (path, label, sha256, segment), the cache rows it names, one per path."""
    table = pd.read_parquet(features)
    if "segment" not in table.columns:
        return table
    assert cache is not None, f"{features} is an index into the features cache: give the cache"
    rows = []
    for segment, group in table.groupby("segment"):
        cached = pd.read_parquet(cache / segment).drop_duplicates("sha256").set_index("sha256").features
        rows.append(group.assign(features=list(cached.loc[group.sha256])))
    found = pd.concat(rows) if rows else table.assign(features=[])
    assert len(found) == len(table) and all(len(np.asarray(v)) for v in found.features)
    return found[["path", "label", "features"]].reset_index(drop=True)
