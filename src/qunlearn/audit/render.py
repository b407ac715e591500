"""audit.md, audit.json and a self-contained audit.html (the report's page style, the plot as a data URI)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from qunlearn.fileio import atomic_write_json, atomic_write_text
from qunlearn.quant.registry import caveats
from qunlearn.report.fallbacks import describe, group_fallbacks
from qunlearn.report.plots import Plot, figure_png
from qunlearn.report.render import html_figure, html_page, html_table


def _pct(value: float | None) -> str:
    return "n/a (nothing forgotten)" if value is None else f"{100 * value + 0.0:.1f}%"  # + 0.0: no "-0.0%"


def _flips(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.3f}%"


def _label(audit: dict, key: str) -> str:
    return audit["labels"].get(key, key)


def rows(audit: dict) -> tuple[list[str], list[list[str]]]:
    """The verdict table: one row per attack with the benchmark's own numbers, recovery per signal, the verdict and
    the share of code flips; the target and unlearned baselines first."""
    keys = list(audit["baselines"]["target"])
    signals = [s["name"] for s in audit["signals"]]
    header = (
        ["attack", "verdict"]
        + [_label(audit, k) for k in keys]
        + [f"{_label(audit, s)} recovery" for s in signals]
        + ["code flips vs target"]
    )
    body = [
        [name, "—"] + [f"{audit['baselines'][name][k]:.2f}" for k in keys] + [""] * (len(signals) + 1)
        for name in ("target", "unlearned")
    ]
    for a in audit["attacks"]:
        body.append(
            [a["name"], a["verdict"]]
            + [f"{a['scores'][k]:.2f}" for k in keys]
            + [_pct(a["recovery"][s]["recovery"]) for s in signals]
            + [_flips(a["code_flip_fraction"])]
        )
    return header, body


def update_rows(audit: dict) -> tuple[list[str], list[list[str]]]:
    """Update sizes per module type: weights moved and codes flipped under the RTN grid of the diagnostics."""
    size = audit["update_size"]
    header = ["module type", "weights", "moved %", f"codes flipped % (rtn{size['bits']})"]
    body = [
        [kind, str(c["weights"]), f"{100 * c['moved_fraction']:.2f}", f"{100 * c['flip_fraction']:.4f}"]
        for kind, c in size["by_type"].items()
    ]
    return header, body


def _notes(audit: dict) -> list[str]:
    t = audit["thresholds"]
    signals = audit["signals"]
    names = ", ".join(f"{_label(audit, s['name'])} ({s['kind']})" for s in signals)
    levels = (
        f"Levels: an attack recovers when it brings back more than {100 * t['recovers']:.0f}% of the "
        f"target − unlearned gap on any signal, partial when more than {100 * t['partial']:.0f}%, and holds "
        f"otherwise. Signals: {names}. A gap of at most ε ("
        + ", ".join(f"{_label(audit, s['name'])} {s['epsilon']:g}" for s in signals)
        + " points) means nothing was forgotten on that signal, which counts as recovers."
    )
    notes = [levels]
    if any(s["kind"] == "membership" for s in signals):
        notes.append(
            "Membership signals count like the others: recovery is the move back toward the target's "
            "value (for PrivLeak, back toward the strongly negative value of a model that saw the data)."
        )
    flips = (
        "Code flips: fraction of quantized weights that differ between the target and the unlearned model "
        "under the attack's quantizer (the root cause of quantization recovery)."
    )
    if "integrity" in audit:
        notes.insert(0, f"Integrity checks {audit['integrity']}.")
    dtype = audit["settings"].get("dtype", "fp32")
    if dtype != "fp32":
        notes.append(
            f"Every model was loaded in {dtype} (--dtype {dtype}): the baselines, update size, code flips, "
            f"quantization and relearning saw {dtype} weights; a precision attack loads the unlearned "
            "checkpoint in its own dtype instead."
        )
    notes += [*audit["notes"], flips, *caveats(a["quantizer"] for a in audit["attacks"])]
    cases = [(a["name"], f) for a in audit["attacks"] for f in a["fallbacks"]]
    notes += [f"{', '.join(names)} fallback: {describe(f)}." for names, f in group_fallbacks(cases)]
    notes += [f"Skipped {s['name']}: {s['reason']}" for s in audit["skipped"]]
    return notes


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _size_line(audit: dict) -> str:
    o = audit["update_size"]["overall"]
    within = "–" if o["within_bin_fraction"] is None else f"{100 * o['within_bin_fraction']:.1f}%"
    return (
        f"Over the {o['moved']} moved weights, |w_unlearned − w_target| / Δ{audit['update_size']['bits']}: "
        f"median {_num(o['median_change_in_steps'])}, 90th percentile {_num(o['p90_change_in_steps'])}, "
        f"max {_num(o['max_change_in_steps'])}; {within} stay inside their bin."
    )


def to_markdown(audit: dict) -> str:
    header, body = rows(audit)
    lines = [
        "# qunlearn audit",
        "",
        f"- benchmark: {audit['benchmark']}",
        f"- target: `{audit['target']}`",
        f"- unlearned: `{audit['unlearned']}`",
    ]
    lines += [f"- corpus: `{audit['corpus']}`"] if audit["corpus"] else []
    lines += ["", f"**{audit['summary']}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    lines += [""] + [f"- {n}" for n in _notes(audit)]
    size_header, size_body = update_rows(audit)
    lines += [
        "",
        "## Update size",
        "",
        audit["update_size_reading"],
        "",
        _size_line(audit),
        "",
        "| " + " | ".join(size_header) + " |",
        "|" + "---|" * len(size_header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in size_body]
    return "\n".join(lines) + "\n"


def recovery_plot(audit: dict) -> Plot:
    """Bars: recovery (% of the gap) per attack and signal, the two thresholds dashed; hatched = nothing forgotten."""
    names = [a["name"] for a in audit["attacks"]]
    signals = [s["name"] for s in audit["signals"]]
    fig = Figure(figsize=(max(6, 0.9 * len(names) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    x, width = np.arange(len(names)), 0.8 / max(1, len(signals))
    for i, signal in enumerate(signals):
        recs = [a["recovery"][signal]["recovery"] for a in audit["attacks"]]
        bars = ax.bar(
            x + (i - (len(signals) - 1) / 2) * width,
            [100 if r is None else 100 * r for r in recs],
            width,
            label=_label(audit, signal),
            color=f"C{i}",
        )
        for bar, r in zip(bars, recs):
            if r is None:
                bar.set_hatch("//")
    t = audit["thresholds"]
    ax.axhline(100 * t["recovers"], color="red", linestyle="--", linewidth=1, label="recovers above")
    ax.axhline(100 * t["partial"], color="orange", linestyle=":", linewidth=1, label="partial above")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("recovered (% of target − unlearned gap)")
    ax.set_title("Recovery per attack (hatched: nothing was forgotten)")
    ax.legend(fontsize="small")
    return Plot("audit.png", "Recovery of the forgotten knowledge per attack", figure_png(fig))


def to_html(audit: dict, plot: Plot) -> str:
    meta = f"benchmark {audit['benchmark']} · target {audit['target']} · unlearned {audit['unlearned']}"
    body = [
        html_table(*rows(audit)),
        html_figure(plot),
        *map(_note, _notes(audit)),
        "<h2>Update size</h2>",
        f"<p>{html.escape(audit['update_size_reading'])}</p>",
        _note(_size_line(audit)),
        html_table(*update_rows(audit)),
    ]
    return html_page("qunlearn audit", meta, audit["summary"], body)


def write_audit(audit: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write audit.json, audit.md and audit.html under `out_dir`; returns their paths."""
    out = Path(out_dir)
    paths = {name: out / name for name in ("audit.json", "audit.md", "audit.html")}
    atomic_write_json(paths["audit.json"], audit)
    atomic_write_text(paths["audit.md"], to_markdown(audit))
    atomic_write_text(paths["audit.html"], to_html(audit, recovery_plot(audit)))
    return paths
