"""The run report: a scree plot, a PC1/PC2 scatter and one self-contained HTML page.

Written next to the run's outputs (`runs/<run>/report/`): `scree.png`, `pc_scatter.png` and
`report.html`, whose images are embedded so the page can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import numpy.typing as npt

from orchard.layout import RunLayout
from orchard.storage.lake import Lake

log = logging.getLogger(__name__)

# More classes than this and the legend would hide the plot: the scatter says how many there are.
MAX_LEGEND = 20
MAX_QUARANTINE_ROWS = 200


def scree_png(ratios: Sequence[float], k: int, target: float | None) -> bytes:
    """Explained variance per component (bars) and cumulated (line), with the chosen k marked."""
    return _png(scree_figure(ratios, k, target))


def scree_figure(ratios: Sequence[float], k: int, target: float | None) -> Any:
    """The scree plot as a matplotlib figure (closed by `_png`)."""
    plt = _pyplot()

    shown = max(min(len(ratios), max(2 * k, 20), 100), 1)
    shown_ratios = np.asarray(ratios[:shown], dtype=float)
    components = np.arange(1, len(shown_ratios) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.bar(components, shown_ratios * 100, color="#4c72b0", label="explained by the component")
    ax.set_xlabel("principal component")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylabel("explained variance (%)")
    cumulative = ax.twinx()
    cumulative.plot(components, np.cumsum(shown_ratios) * 100, color="#dd8452", marker=".", label="cumulated")
    cumulative.set_ylabel("cumulated explained variance (%)")
    # Headroom above 100% on both axes: the k label sits in that band, where neither the bars nor the
    # cumulated line can run under it.
    headroom = 1.2
    cumulative.set_ylim(0, 100 * headroom)
    cumulative.set_yticks(range(0, 101, 20))
    ax.set_ylim(0, max(float(shown_ratios.max(initial=0)) * 100, 1e-9) * headroom)
    kept = float(np.sum(shown_ratios[:k])) * 100
    ax.axvline(k + 0.5, color="#c44e52", linestyle="--", linewidth=1.5)
    # The label sits on the side of the line with more room.
    right_side = k < 0.6 * len(shown_ratios)
    cumulative.annotate(
        f"k = {k} ({kept:.1f}% kept)",
        xy=(k + 0.5, 1),
        xycoords=("data", "axes fraction"),
        xytext=(6 if right_side else -6, -6),
        textcoords="offset points",
        ha="left" if right_side else "right",
        va="top",
        color="#c44e52",
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
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
    return fig


def scatter_png(pc1: npt.ArrayLike, pc2: npt.ArrayLike, labels: Sequence[str]) -> bytes:
    """PC1 against PC2, one colour per label."""
    plt = _pyplot()

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


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (the Agg backend)."""
    # Deferred: ~0.5 s to import, for the report task alone, not each time a DAG is parsed.
    import matplotlib  # ruff: ignore[import-outside-top-level]

    matplotlib.use("Agg")
    from matplotlib import pyplot  # ruff: ignore[import-outside-top-level]

    return pyplot


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


_TEMPLATES = Path(__file__).parent / "templates"


@functools.cache
def templates() -> jinja2.Environment:
    """Orchard's page templates; every value is escaped unless a template says otherwise."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def timing_rows(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The timings table: seconds per step, and what the step had to do when that explains them."""
    counts = manifest.get("counts", {})
    rows = {}
    for step, seconds in manifest.get("timings_seconds", {}).items():
        if seconds is None:
            continue
        text = f"{seconds:.1f} s"
        if step == "upload_images" and "uploaded" in counts:
            unchanged = counts.get("upload_skipped_unchanged", 0)
            if counts["uploaded"] == 0:
                # An unchanged re-run: its upload step only compared the source with the lake.
                text = f"nothing to copy ({unchanged} files unchanged)"
            else:
                text += f" ({counts['uploaded']} files copied, {unchanged} unchanged)"
        elif step == "featurize" and counts.get("from_cache"):
            text += f" ({counts['from_cache']} of {counts['featurized']} features from the cache)"
        rows[step] = text
    return rows


def plan_section(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan made before the steps, each phase's prediction beside what happened (None: no plan,
    as in manifests written before plans)."""
    plan = manifest.get("plan")
    if not plan:
        return None
    work, machine = plan["work"], plan["machine"]
    where = (
        f"{machine['nodes']} core node(s) x {machine['instance_type']}"
        if machine.get("instance_type")
        else machine["key"]
    )
    rows = []
    for row in plan.get("comparison") or [
        {"phase": n, "predicted": p["seconds"], "actual": None, "ratio": None}
        for n, p in plan["phases"].items()
    ]:
        rows.append(
            (
                row["phase"],
                _duration(row["predicted"]),
                "unknown" if row["actual"] is None else _duration(row["actual"]),
                "" if row["ratio"] is None else f"{row['ratio']:.2f}",
                plan["phases"].get(row["phase"], {}).get("basis", ""),
            )
        )
    cost = plan.get("cost")
    bound = " (a lower bound: not everything could be predicted)" if cost and cost.get("lower_bound") else ""
    return {
        "work": f"{work['inputs']} images: {work['featurize_now']} to featurize, "
        f"{work['from_cache']} from the cache",
        "machine": f"{where}, {machine['vcpu']} vCPUs and {machine['slots']} task slots per node",
        "sizing": plan["sizing"].get("reason"),
        "rows": rows,
        "unknown": plan.get("unknown", []),
        "assumed": plan.get("assumed", []),
        "cost": f"{cost['cost']:.2f} USD predicted{bound} ({cost['basis']})" if cost else None,
    }


def version_rows(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The versions table, led by the inference engine that computed the features."""
    versions = {str(k): str(v) for k, v in manifest.get("versions", {}).items()}
    engine = manifest.get("engine")
    if engine:
        return {"inference engine": f"{engine['name']} {engine['version']}", **versions}
    if "onnxruntime" in versions:  # manifests written before the engine was recorded
        return {"inference engine": f"onnxruntime {versions['onnxruntime']}", **versions}
    return versions


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _market(market: str) -> str:
    return market.lower().replace("_", "-")


def _lifetime(emr: Mapping[str, Any]) -> str:
    seconds = emr.get("lifetime_seconds")
    if seconds is None:
        return "unknown"
    return _duration(seconds) + ("" if emr.get("ended") else " so far (not terminated yet)")


def cluster_rows(emr: Mapping[str, Any]) -> dict[str, Any]:
    """The cluster section: what `orchard.aws.emr.cluster_cost` found, the cost labelled an estimate."""
    instances = ", ".join(
        f"{group['count']} x {group['type']} ({group['role'].lower()}, {_market(group['market'])})"
        for group in emr.get("instances", [])
    )
    rows = [
        ("cluster", f"{emr['cluster_id']} ({emr.get('state', 'unknown state')})"),
        ("lifetime", _lifetime(emr)),
        ("normalized instance-hours", emr.get("normalized_instance_hours")),
        ("instances", instances or "none listed"),
    ]
    estimate = emr.get("estimate")
    if estimate:
        cost = (
            f"estimate{'' if emr.get('ended') else ' so far'}: {estimate['cost']:.2f} {estimate['currency']} "
            f"({estimate['instance_hours']:.2f} instance-hours at {estimate['basis']})"
        )
    elif emr.get("missing_prices"):
        cost = (
            f"no price configured for {', '.join(emr['missing_prices'])}: set ORCHARD_EMR_PRICE_PER_HOUR "
            "or add them to ORCHARD_EMR_PRICES"
        )
    else:
        cost = emr.get("no_estimate") or "no price configured: set ORCHARD_EMR_PRICE_PER_HOUR"
    return {"rows": rows, "cost": cost}


def report_html(
    manifest: Mapping[str, Any], scree: bytes, scatter: bytes, quarantine: Sequence[tuple]
) -> str:
    """One page, no external resources: counts, plots, timings, cluster, weights, versions, quarantine."""
    weights = manifest["weights"]
    notes = list(manifest.get("warnings", []))
    if not weights.get("meaningful", True) and not notes:
        notes.append(
            f"Weights {weights.get('used')}: not trained weights, so the features and plots of this run "
            "carry no visual meaning (a plumbing test)."
        )
    return (
        templates()
        .get_template("report.html.j2")
        .render(
            run_id=manifest["run_id"],
            source=str(manifest.get("source")),
            notes=notes,
            counts=manifest["counts"],
            pca=manifest["pca"],
            scree=base64.b64encode(scree).decode("ascii"),
            scatter=base64.b64encode(scatter).decode("ascii"),
            timings=timing_rows(manifest),
            plan=plan_section(manifest),
            cluster=cluster_rows(manifest["emr"]) if manifest.get("emr") else None,
            weights={k: v for k, v in weights.items() if k != "warnings"},
            versions=version_rows(manifest),
            quarantine=quarantine[:MAX_QUARANTINE_ROWS],
            quarantine_total=len(quarantine),
            outputs=manifest["outputs"],
        )
    )


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


REPORT_TYPES = {".png": "image/png", ".html": "text/html; charset=utf-8"}


def write_report(lake: Lake, run: RunLayout) -> str:
    """The report (plots + one HTML page) in the attempt's `report/`; returns the page's URI."""
    manifest = lake.read_json(run.manifest)
    pca_summary = lake.read_json(run.pca_summary)
    scores = lake.read_parquet(run.pca)
    quarantine = lake.read_parquet(run.quarantine)
    files = build_report(manifest, pca_summary, scores, quarantine)
    for name, data in files.items():
        lake.write_bytes(f"{run.report_folder}/{name}", data, REPORT_TYPES[name[name.rindex(".") :]])
    log.info("run report: %s", run.report)
    log.info("report plots: %s/scree.png, %s/pc_scatter.png", run.report_folder, run.report_folder)
    return run.report
