"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from qunlearn.evaluate.registry import FORGET_METRICS, RESULTS
from qunlearn.report.tables import Report, model_group


@dataclass(frozen=True)
class Plot:
    """One rendered plot: its path relative to the output folder, a caption and the PNG bytes."""

    path: str
    caption: str
    png: bytes


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def _color(report: Report, quantizer: str) -> str:
    """One colour per quantizer, the same in every plot."""
    return f"C{report.quantizers.index(quantizer) % 10}"


def retained_png(report: Report) -> bytes:
    """Grouped bars: forgotten knowledge retained (% of the target) per model, one bar per quantizer."""
    head = report.headline
    metrics = [m for m in FORGET_METRICS if head[m]["per_model"]] or list(FORGET_METRICS[:1])
    quantizers = head["quantizers"]
    fig = Figure(figsize=(11, 1 + 3.4 * len(metrics)), layout="constrained")
    width = 0.8 / max(len(quantizers), 1)
    for ax, metric in zip(fig.subplots(len(metrics), 1, squeeze=False)[:, 0], metrics):
        per_model = head[metric]["per_model"]
        x = np.arange(len(per_model))
        for i, q in enumerate(quantizers):
            heights = [np.nan if ratios[q] is None else ratios[q] for ratios in per_model.values()]
            ax.bar(x + (i - (len(quantizers) - 1) / 2) * width, heights, width, label=q, color=_color(report, q))
        ax.axhline(100, color="0.3", linestyle="--", linewidth=1)
        ax.set_xticks(x, list(per_model), rotation=30, ha="right")
        ax.set_ylabel(f"{RESULTS[metric].label} retained (%)")
        ax.set_title(f"{RESULTS[metric].label} as a % of the target under the same quantizer (dashed: the target)")
    if quantizers:
        fig.legend(
            *fig.axes[0].get_legend_handles_labels(),
            title="quantizer",
            loc="outside upper center",
            ncols=min(len(quantizers), 8),
        )
    return figure_png(fig)


GROUP_MARKERS = {"reference": "*", "baseline": "o", "sure": "^"}
GROUP_LABELS = {"reference": "target / retrain", "baseline": "baseline", "sure": "SURE variant"}


def tradeoff_png(report: Report) -> bytes:
    """Utility vs forgetting: KnowMem_r against KnowMem_f, one point per model × quantizer."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    for model, quantizer, forget, retain in report.tradeoff:
        group = model_group(model)
        ax.scatter(
            forget,
            retain,
            color=_color(report, quantizer),
            marker=GROUP_MARKERS[group],
            s=110 if group == "reference" else 50,
            edgecolors="black",
            linewidths=0.4,
        )
        if group == "reference" and quantizer == report.quantizers[0]:
            ax.annotate(model, (forget, retain), textcoords="offset points", xytext=(6, -12), fontsize="small")
    ax.set_xlabel("KnowMem_f ↓ (forget set; lower = more forgotten)")
    ax.set_ylabel("KnowMem_r ↑ (retain set; higher = more utility kept)")
    ax.set_title("Utility vs forgetting: one point per model × quantizer")
    ax.grid(True, alpha=0.3)
    quantizers = list(dict.fromkeys(point[1] for point in report.tradeoff))
    groups = list(dict.fromkeys(model_group(point[0]) for point in report.tradeoff))
    handles = [Line2D([], [], color=_color(report, q), marker="s", linestyle="", label=q) for q in quantizers]
    handles += [
        Line2D([], [], color="0.5", marker=GROUP_MARKERS[g], linestyle="", label=GROUP_LABELS[g]) for g in groups
    ]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return figure_png(fig)


PLOTS = (
    ("plots/retained.png", "Forgotten knowledge retained per model and quantizer", retained_png),
    ("plots/tradeoff.png", "Utility vs forgetting: KnowMem_r against KnowMem_f", tradeoff_png),
)


def render_plots(report: Report) -> tuple[Plot, ...]:
    """Every plot of the report, rendered in memory."""
    return tuple(Plot(path, caption, draw(report)) for path, caption, draw in PLOTS)
