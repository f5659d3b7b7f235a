"""The run report: plots that open as images, one page with no outside resources."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
from PIL import Image

from orchard.report import build_report, scree_png

MANIFEST = {
    "run_id": "manual__2026-11-21T10:00:00+00:00",
    "source": "/data/fruits",
    "counts": {"inputs": 32, "featurized": 30, "quarantined": 2},
    "pca": {"k": 4, "target_variance": None, "variance_kept": 0.81},
    "weights": {"requested": "imagenet", "used": "random:42", "meaningful": False, "warnings": []},
    "warnings": ["IMAGENET WEIGHTS UNAVAILABLE: seeded random weights"],
    "timings_seconds": {"upload_images": 0.5, "featurize": 17.9, "pca": 18.7},
    "versions": {"spark": "4.2.0", "tensorflow": "2.21.0"},
    "outputs": {"csv": "file:///lake/runs/x/pcaFeatures.csv"},
}


def tables(n=30, k=4):
    rng = np.random.default_rng(0)
    labels = np.repeat(["Apple <Red>", "Kiwi", "Plum"], n // 3)
    centres = {"Apple <Red>": (-3, 0), "Kiwi": (3, 0), "Plum": (0, 3)}
    scores = [np.r_[np.array(centres[lab]) + rng.normal(size=2), rng.normal(size=k - 2)] for lab in labels]
    pca = pd.DataFrame(
        {"path": [f"{lab}/{i}.jpg" for i, lab in enumerate(labels)], "label": labels, "pca": scores}
    )
    quarantine = pd.DataFrame(
        {"path": ["Kiwi/bad.jpg", "notes <script>.txt"], "label": ["Kiwi", "_unlabelled"],
         "reason": ["cannot decode image: truncated", "unsupported file type '.txt'"]}
    )  # fmt: skip
    summary = {
        "k": k,
        "target_variance": None,
        "explained_variance_ratio_all": [0.4, 0.25, 0.1, 0.06, 0.05, 0.04],
    }
    return summary, pca, quarantine


def test_report_files_are_pngs_and_one_self_contained_page():
    summary, pca, quarantine = tables()
    files = build_report(MANIFEST, summary, pca, quarantine)
    assert set(files) == {"scree.png", "pc_scatter.png", "report.html"}
    for name in ("scree.png", "pc_scatter.png"):
        image = Image.open(io.BytesIO(files[name]))
        assert image.format == "PNG"
        assert image.size[0] >= 800  # large enough to read
    page = files["report.html"].decode("utf-8")
    # Both plots are embedded; nothing is fetched from anywhere.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert '<td id="inputs">32</td>' in page
    assert '<td id="featurized">30</td>' in page
    assert '<td id="quarantined">2</td>' in page
    assert "k = 4 components keep 81.0% of the variance" in page
    assert "IMAGENET WEIGHTS UNAVAILABLE" in page  # the warning banner
    assert "featurize" in page and "17.9 s" in page
    assert "random:42" in page and "2.21.0" in page
    # File names are data, never markup.
    assert "notes &lt;script&gt;.txt" in page and "<script>" not in page


def test_scree_plot_marks_k():
    # Rendered with and without a variance target; k beyond the components drawn is still marked.
    for target in (None, 0.9):
        png = scree_png([0.5, 0.3, 0.1, 0.05, 0.05], k=3, target=target)
        assert Image.open(io.BytesIO(png)).format == "PNG"


def test_report_of_a_run_with_one_component_and_no_quarantine():
    summary, pca, quarantine = tables(k=2)
    pca["pca"] = [s[:1] for s in pca["pca"]]
    files = build_report({**MANIFEST, "warnings": []}, {**summary, "k": 1}, pca, quarantine.iloc[:0])
    page = files["report.html"].decode()
    assert "Quarantine (0)" in page
    # Random weights requested on purpose: no fallback warning, but the page still says so.
    assert "Weights random:42: not trained weights" in page


def test_scatter_markers_shrink_as_points_multiply(monkeypatch):
    from matplotlib.axes import Axes

    from orchard.report import scatter_png

    sizes = []
    real = Axes.scatter
    monkeypatch.setattr(
        Axes, "scatter", lambda self, *a, s=None, **k: sizes.append(s) or real(self, *a, s=s, **k)
    )
    for n in (30, 500, 3_000, 50_000):
        scatter_png(np.zeros(n), np.zeros(n), ["a"] * n)
    assert sizes == [30, 30, 5, 2]
