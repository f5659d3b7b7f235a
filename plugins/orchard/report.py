"""The run report: a scree plot, a PC1/PC2 scatter and one self-contained HTML page.

Written next to the run's outputs (`runs/<run>/report/`): `scree.png`, `pc_scatter.png` and
`report.html`, whose images are embedded so the page can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# More classes than this and the legend would hide the plot: the scatter says how many there are.
MAX_LEGEND = 20
MAX_QUARANTINE_ROWS = 200


def scree_png(ratios: Sequence[float], k: int, target: float | None) -> bytes:
    """Explained variance per component (bars) and cumulated (line), with the chosen k marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    shown = max(min(len(ratios), max(2 * k, 20), 100), 1)
    shown_ratios = np.asarray(ratios[:shown], dtype=float)
    components = np.arange(1, len(shown_ratios) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.bar(components, shown_ratios * 100, color="#4c72b0", label="explained by the component")
    ax.set_xlabel("principal component")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("explained variance (%)")
    cumulative = ax.twinx()
    cumulative.plot(components, np.cumsum(shown_ratios) * 100, color="#dd8452", marker=".", label="cumulated")
    cumulative.set_ylabel("cumulated explained variance (%)")
    cumulative.set_ylim(0, 105)
    kept = float(np.sum(shown_ratios[:k])) * 100
    ax.axvline(k + 0.5, color="#c44e52", linestyle="--", linewidth=1.5)
    # The label sits on the side of the line with more room.
    right_side = k < 0.6 * len(shown_ratios)
    cumulative.annotate(
        f"k = {k} ({kept:.1f}% kept)",
        xy=(k + 0.5, min(kept, 100)),
        xytext=(8 if right_side else -8, -18),
        textcoords="offset points",
        ha="left" if right_side else "right",
        color="#c44e52",
        fontweight="bold",
    )
    if target:
        cumulative.axhline(target * 100, color="grey", linestyle=":", linewidth=1)
        cumulative.annotate(
            f"target {target:.0%}",
            xy=(len(shown_ratios), target * 100),
            ha="right",
            va="bottom",
            color="grey",
        )
    handles = ax.get_legend_handles_labels()[0] + cumulative.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right")
    ax.set_title("Explained variance by principal component")
    fig.tight_layout()
    return _png(fig)


def scatter_png(pc1: npt.ArrayLike, pc2: npt.ArrayLike, labels: Sequence[str]) -> bytes:
    """PC1 against PC2, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    x, y, names = np.asarray(pc1), np.asarray(pc2), np.asarray(labels, dtype=object)
    classes = sorted(set(names))
    colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    # Markers shrink as points multiply (30 up to 500 points, 2 from 7,500), so clouds stay readable.
    size = float(np.clip(15_000 / max(len(x), 1), 2, 30))
    for i, name in enumerate(classes):
        mask = names == name
        ax.scatter(
            x[mask],
            y[mask],
            s=size,
            alpha=0.75,
            color=colours(i % colours.N),
            label=f"{name} ({mask.sum()})",
        )
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(f"PC1 / PC2 of {len(x)} images, {len(classes)} labels")
    if len(classes) <= MAX_LEGEND:
        ax.legend(loc="best", fontsize="small", markerscale=1.5 if size < 30 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _rows(pairs: Mapping[str, Any]) -> str:
    return "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs.items()
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def report_html(
    manifest: Mapping[str, Any], scree: bytes, scatter: bytes, quarantine: Sequence[tuple]
) -> str:
    """One page, no external resources: counts, plots, timings, weights, versions, quarantine."""
    counts = manifest["counts"]
    pca = manifest["pca"]
    weights = manifest["weights"]
    notes = list(manifest.get("warnings", []))
    if not weights.get("meaningful", True) and not notes:
        notes.append(
            f"Weights {weights.get('used')}: not trained weights, so the features and plots of this run "
            "carry no visual meaning (a plumbing test)."
        )
    warnings = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in notes)
    timings = {k: f"{v:.1f} s" for k, v in manifest.get("timings_seconds", {}).items() if v is not None}
    shown = quarantine[:MAX_QUARANTINE_ROWS]
    quarantine_rows = "".join(
        f"<tr><td>{html.escape(str(path))}</td><td>{html.escape(str(reason))}</td></tr>"
        for path, reason in shown
    )
    more = (
        f"<p>and {len(quarantine) - len(shown)} more (see the quarantine output)</p>"
        if len(quarantine) > len(shown)
        else ""
    )
    target = f", target {pca['target_variance']:.0%}" if pca.get("target_variance") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Orchard run {html.escape(manifest["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
.counts td {{ font-size: 1.4em; font-weight: bold; }}
.warning {{ background: #fde2e1; border-left: 4px solid #c44e52; padding: .6em; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>Orchard run <code>{html.escape(manifest["run_id"])}</code></h1>
<p>Source: <code>{html.escape(str(manifest.get("source")))}</code></p>
{warnings}
<h2>Images</h2>
<table class="counts"><tr><th>inputs</th><th>featurized</th><th>quarantined</th></tr>
<tr><td id="inputs">{counts["inputs"]}</td><td id="featurized">{counts["featurized"]}</td>
<td id="quarantined">{counts["quarantined"]}</td></tr></table>
<h2>PCA: k = {pca["k"]} components keep {pca["variance_kept"]:.1%} of the variance{target}</h2>
{_img(scree, "scree plot")}
{_img(scatter, "PC1/PC2 scatter")}
<h2>Timings</h2><table>{_rows(timings)}</table>
<h2>Weights</h2><table>{_rows({k: v for k, v in weights.items() if k != "warnings"})}</table>
<h2>Versions</h2><table>{_rows(manifest.get("versions", {}))}</table>
<h2>Quarantine ({len(quarantine)})</h2>
<table><tr><th>path</th><th>reason</th></tr>{quarantine_rows}</table>{more}
<h2>Outputs</h2><table>{_rows(manifest["outputs"])}</table>
</body></html>
"""


def build_report(
    manifest: Mapping[str, Any], pca_summary: Mapping[str, Any], pca_scores: Any, quarantine: Any
) -> dict[str, bytes]:
    """The report's files by name, from the manifest, the PCA summary and the two tables (pandas)."""
    scree = scree_png(
        pca_summary["explained_variance_ratio_all"], pca_summary["k"], pca_summary["target_variance"]
    )
    matrix = np.stack(pca_scores["pca"].to_numpy()) if len(pca_scores) else np.zeros((0, 2))
    second = matrix[:, 1] if matrix.shape[1] > 1 else np.zeros(len(matrix))
    scatter = scatter_png(matrix[:, 0], second, pca_scores["label"].fillna("_unlabelled").tolist())
    bad = sorted(zip(quarantine["path"], quarantine["reason"], strict=True))
    page = report_html(manifest, scree, scatter, bad)
    return {"scree.png": scree, "pc_scatter.png": scatter, "report.html": page.encode("utf-8")}
