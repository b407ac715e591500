"""audit.md, audit.json and a self-contained audit.html (inline CSS, the plot as a data URI)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qunlearn.evaluate.registry import FORGET_METRICS as VERDICT_METRICS
from qunlearn.evaluate.registry import RESULTS
from qunlearn.fileio import atomic_write_json, atomic_write_text
from qunlearn.report.plots import Plot, figure_png
from qunlearn.report.render import html_figure, html_page, html_table

LABELS = {name: spec.label for name, spec in RESULTS.items()}


def _pct(value: float | None) -> str:
    return "n/a (nothing forgotten)" if value is None else f"{100 * value:.1f}%"


def _flips(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.3f}%"


def rows(audit: dict) -> tuple[list[str], list[list[str]]]:
    """The verdict table: one row per attack with its scores, recovery, verdict and code-flip rate."""
    metrics = list(audit["baselines"]["target"])
    header = (["attack", "verdict"] + [LABELS[m] for m in metrics]
              + [f"{LABELS[m]} recovery" for m in VERDICT_METRICS] + ["code flips vs target"])
    body = [[name, "—"] + [f"{audit['baselines'][name][m]:.2f}" for m in metrics] + ["", "", ""]
            for name in ("target", "unlearned")]
    for a in audit["attacks"]:
        body.append([a["name"], a["verdict"]] + [f"{a['scores'][m]:.2f}" for m in metrics]
                    + [_pct(a["recovery"][m]["recovery"]) for m in VERDICT_METRICS] + [_flips(a["code_flip_fraction"])])
    return header, body


def _notes(audit: dict) -> list[str]:
    split = audit["split"]
    threshold = (f"Threshold: an attack recovers when it brings back more than {100 * audit['threshold']:.0f}% of "
                 f"the target − unlearned gap on {' or '.join(LABELS[m] for m in audit['verdict_metrics'])}, or when "
                 f"that gap is ≤ {audit['epsilon']} points (nothing was forgotten).")
    half = (f"Evaluation half: {split['eval_verbmem']} VerbMem_f and {split['eval_knowmem']} KnowMem_f items; "
            f"relearning trained on {split['relearn_docs_used']} of {split['forget_docs']} forget documents "
            f"({split['rule']}).")
    flips = ("Code flips: fraction of quantized weights that differ between the target and the unlearned model "
             "under the attack's quantizer (the root cause of quantization recovery).")
    notes = [threshold, half, flips]
    notes += [f"Skipped {s['name']}: {s['reason']}" for s in audit["skipped"]]
    return notes


def to_markdown(audit: dict) -> str:
    header, body = rows(audit)
    lines = ["# qunlearn audit", "", f"- target: `{audit['target']}`", f"- unlearned: `{audit['unlearned']}`",
             f"- corpus: `{audit['corpus']}`", "", f"**{audit['summary']}**", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += [""] + [f"- {n}" for n in _notes(audit)]
    return "\n".join(lines) + "\n"


def recovery_plot(audit: dict) -> Plot:
    """Bars: recovery (% of the gap) per attack and verdict metric, the threshold dashed; hatched = nothing forgotten."""
    names = [a["name"] for a in audit["attacks"]]
    fig = Figure(figsize=(max(6, 0.9 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(names)), 0.8 / len(VERDICT_METRICS)
    for i, metric in enumerate(VERDICT_METRICS):
        recs = [a["recovery"][metric]["recovery"] for a in audit["attacks"]]
        bars = ax.bar(x + (i - (len(VERDICT_METRICS) - 1) / 2) * width,
                      [100 if r is None else 100 * r for r in recs], width, label=LABELS[metric], color=f"C{i}")
        for bar, r in zip(bars, recs):
            if r is None:
                bar.set_hatch("//")
    ax.axhline(100 * audit["threshold"], color="red", linestyle="--", linewidth=1, label="threshold")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("recovered (% of target − unlearned gap)")
    ax.set_title("Recovery per attack (hatched: nothing was forgotten)")
    ax.legend(fontsize="small")
    return Plot("audit.png", "Recovery of the forgotten knowledge per attack", figure_png(fig))


def to_html(audit: dict, plot: Plot) -> str:
    meta = f"target {audit['target']} · unlearned {audit['unlearned']} · corpus {audit['corpus']}"
    notes = [f"<p class='note'>{html.escape(n)}</p>" for n in _notes(audit)]
    return html_page("qunlearn audit", meta, audit["summary"], [html_table(*rows(audit)), html_figure(plot), *notes])


def write_audit(audit: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write audit.json, audit.md and audit.html under `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {name: out / name for name in ("audit.json", "audit.md", "audit.html")}
    atomic_write_json(paths["audit.json"], audit)
    atomic_write_text(paths["audit.md"], to_markdown(audit))
    atomic_write_text(paths["audit.html"], to_html(audit, recovery_plot(audit)))
    return paths
