"""The run report: plots that open as images, one page with no outside resources."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
from PIL import Image

from orchard.report.render import build_report, scree_png

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

    from orchard.report.render import scatter_png

    sizes = []
    real = Axes.scatter
    monkeypatch.setattr(
        Axes, "scatter", lambda self, *a, s=None, **k: sizes.append(s) or real(self, *a, s=s, **k)
    )
    for n in (30, 500, 3_000, 50_000):
        scatter_png(np.zeros(n), np.zeros(n), ["a"] * n)
    assert sizes == [30, 30, 5, 2]


def page_of(manifest, quarantine=None) -> str:
    summary, pca, default_quarantine = tables()
    bad = default_quarantine if quarantine is None else quarantine
    return build_report(manifest, summary, pca, bad)["report.html"].decode("utf-8")


def test_markup_in_quarantine_rows_run_id_and_source_is_escaped():
    hostile = "<script>alert('x')</script>"
    quarantine = pd.DataFrame(
        {"path": [f"Kiwi/{hostile}.jpg"], "label": ["Kiwi"], "reason": [f"not an image {hostile}"]}
    )
    page = page_of({**MANIFEST, "run_id": f"manual__{hostile}", "source": f"/data/{hostile}"}, quarantine)
    assert "<script" not in page
    assert "Kiwi/&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.jpg" in page
    assert "not an image &lt;script&gt;" in page
    assert "<title>Orchard run manual__&lt;script&gt;" in page
    assert "<code>/data/&lt;script&gt;" in page


def timing_cells(page: str) -> dict[str, str]:
    table = page[page.index('<table id="timings">') :]
    table = table[: table.index("</table>")]
    return dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", table))


def test_an_unchanged_rerun_says_there_was_nothing_to_copy():
    counts = {**MANIFEST["counts"], "uploaded": 0, "upload_skipped_unchanged": 32, "from_cache": 30}
    timings = {"upload_images": 0.04, "featurize": 6.0, "pca": 9.0}
    cells = timing_cells(page_of({**MANIFEST, "counts": counts, "timings_seconds": timings}))
    assert cells["upload_images"] == "nothing to copy (32 files unchanged)"
    assert cells["featurize"] == "6.0 s (30 of 30 features from the cache)"
    assert cells["pca"] == "9.0 s"

    counts = {**counts, "uploaded": 5, "upload_skipped_unchanged": 27, "from_cache": 0}
    cells = timing_cells(page_of({**MANIFEST, "counts": counts}))
    assert cells["upload_images"] == "0.5 s (5 files copied, 27 unchanged)"
    assert cells["featurize"] == "17.9 s"


def test_versions_lead_with_the_inference_engine():
    engine = {"name": "onnxruntime", "version": "1.31.1"}
    page = page_of({**MANIFEST, "engine": engine, "versions": {"python": "3.11.7", "onnxruntime": "1.31.1"}})
    versions = page[page.index('<table id="versions">') :]
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", versions[: versions.index("</table>")])
    assert rows[0] == ("inference engine", "onnxruntime 1.31.1")
    # A manifest from before the engine was recorded: the engine from the package versions.
    page = page_of({**MANIFEST, "versions": {"onnxruntime": "1.30.0"}})
    assert "<tr><th>inference engine</th><td>onnxruntime 1.30.0</td></tr>" in page


EMR = {
    "cluster_id": "j-2AXXXXXXGAPLF",
    "state": "TERMINATED",
    "created": "2026-11-21T10:00:00+00:00",
    "ended": "2026-11-21T10:42:30+00:00",
    "lifetime_seconds": 2550.0,
    "normalized_instance_hours": 24,
    "instances": [
        {"role": "MASTER", "type": "m5.xlarge", "count": 1, "market": "ON_DEMAND"},
        {"role": "CORE", "type": "m5.xlarge", "count": 2, "market": "SPOT"},
    ],
    "estimate": {
        "cost": 0.5101,
        "currency": "USD",
        "instance_hours": 2.125,
        "prices": {"m5.xlarge": 0.24},
        "basis": "0.24/h for m5.xlarge",
    },
    "missing_prices": [],
}


def cluster_cells(page: str) -> dict[str, str]:
    table = page[page.index('<table id="cluster">') :]
    return dict(re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", table[: table.index("</table>")]))


def test_cluster_section_with_an_estimated_cost():
    assert '<table id="cluster">' not in page_of(MANIFEST)  # the local target has no cluster
    cells = cluster_cells(page_of({**MANIFEST, "emr": EMR}))
    assert cells["cluster"] == "j-2AXXXXXXGAPLF (TERMINATED)"
    assert cells["lifetime"] == "42 min 30 s"
    assert cells["normalized instance-hours"] == "24"
    assert cells["instances"] == "1 x m5.xlarge (master, on-demand), 2 x m5.xlarge (core, spot)"
    assert cells["estimated cost"] == "estimate: 0.51 USD (2.12 instance-hours at 0.24/h for m5.xlarge)"


def test_cluster_section_without_a_price_says_which_setting_to_set():
    cells = cluster_cells(page_of({**MANIFEST, "emr": {**EMR, "estimate": None}}))
    assert cells["estimated cost"] == "no price configured: set ORCHARD_EMR_PRICE_PER_HOUR"
    cells = cluster_cells(
        page_of({**MANIFEST, "emr": {**EMR, "estimate": None, "missing_prices": ["r5.xlarge"]}})
    )
    assert "no price configured for r5.xlarge" in cells["estimated cost"]
    running = {**EMR, "ended": None, "lifetime_seconds": 4000.0}
    cells = cluster_cells(page_of({**MANIFEST, "emr": running}))
    assert cells["lifetime"] == "1 h 06 min so far (not terminated yet)"
    assert cells["estimated cost"].startswith("estimate so far: 0.51 USD")


def test_the_k_label_stays_clear_of_the_cumulated_line():
    from orchard.report.render import scree_figure

    # k lands where the cumulated line is high and the label was drawn over it.
    for ratios, k in (([0.5, 0.3, 0.1, 0.05, 0.05], 3), (list(np.full(40, 1 / 40)), 30), ([0.97, 0.03], 1)):
        fig = scree_figure(ratios, k=k, target=0.9)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes[1]  # the cumulated share's axes
        (label,) = [t for t in axes.texts if t.get_text().startswith("k = ")]
        box = label.get_window_extent(renderer)
        line = axes.lines[0]
        top_of_line = axes.transData.transform((0, max(line.get_ydata())))[1]
        assert box.y0 > top_of_line, (ratios, k)
        assert box.y1 <= axes.get_window_extent(renderer).y1
        from matplotlib import pyplot as plt

        plt.close(fig)
