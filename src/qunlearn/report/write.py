"""Write the report files of a run folder from its `results.jsonl` (and `quantizer_fallbacks.json`): md, csv, json,
html and plots/*.png."""

from __future__ import annotations

from pathlib import Path

from qunlearn.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from qunlearn.report.fallbacks import FALLBACKS_FILE, load_fallbacks
from qunlearn.report.plots import render_plots
from qunlearn.report.render import to_csv, to_html, to_json, to_markdown
from qunlearn.report.tables import build_report
from qunlearn.results import RESULTS_FILE, load_results


def write_report(out_dir: Path, config_hash: str | None = None) -> dict[str, Path]:
    """Build the report from `<out_dir>/results.jsonl` and the quantizer fallbacks recorded beside it (only
    `config_hash`'s when given) and write every file atomically; returns each file's path keyed by its path relative
    to `out_dir`."""
    out_dir = Path(out_dir)
    records = load_results(out_dir / RESULTS_FILE, config_hash)
    fallbacks = load_fallbacks(out_dir / FALLBACKS_FILE, config_hash).values()
    report = build_report(records, config_hash, fallbacks)
    plots = render_plots(report)
    written = {plot.path: atomic_write_bytes(out_dir / plot.path, plot.png) for plot in plots}
    written["report.md"] = atomic_write_text(out_dir / "report.md", to_markdown(report, plots))
    written["report.csv"] = atomic_write_text(out_dir / "report.csv", to_csv(report))
    written["report.json"] = atomic_write_json(out_dir / "report.json", to_json(report))
    written["report.html"] = atomic_write_text(out_dir / "report.html", to_html(report, plots))
    return written
