"""Render a `Report` as Markdown, CSV, JSON and one self-contained HTML page (inline CSS, plots as data URIs)."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from qunlearn.report.tables import Report, Table

if TYPE_CHECKING:
    from qunlearn.report.plots import Plot

MISSING = "–"

HEADLINE_NOTE = (
    "Retained = a model's score as a % of the reference, the target under the same quantizer (not the "
    "full-precision target); – where a score is missing or the target's score is 0. Means are over the models "
    "with a defined ratio under that quantizer."
)
MUSE_NOTE = (
    "VerbMem_f and KnowMem_f: ROUGE-L F1 × 100 on the forget set (lower = more forgotten). KnowMem_r: the same on "
    "the retain set (higher = more utility kept). PrivLeak: (AUC − AUC_retrain) / AUC_retrain in % (0 is ideal; "
    "strongly negative = still remembered). – = not computed."
)
UTILITY_NOTE = "KnowMem_r (ROUGE-L F1 × 100) and raw perplexity on retain and holdout text."
CODE_FLIPS_NOTE = (
    "Percentage of quantized integer codes that differ from the target's under the same quantizer: near 0 means "
    "quantizing the unlearned model gives back the quantized target. Moved < ½ step: percentage of weights that "
    "moved less than half a quantization step. For grid schemes, |Δw|/Δ is how far the moved weights went in units "
    "of the scheme's step (median and 90th percentile) and 'kept in bin' the share of moved weights whose code did "
    "not flip: a median well below 0.5 with most moved weights kept in their bin means the updates are smaller "
    "than the step, and quantization is expected to undo them."
)
CODE_FLIPS_BY_TYPE_NOTE = (
    "Percentage of codes that differ from the target's, per module type (the last part of the "
    "layer's name), under each grid scheme."
)
FALLBACKS_NOTE = (
    "Where a quantizer could not do what its settings ask, it did this instead; each case is said once, with the "
    "models it happened on (every layer per model and quantizer: quantizer_fallbacks.json)."
)
NOTES = {
    "headline": HEADLINE_NOTE,
    "muse": MUSE_NOTE,
    "utility": UTILITY_NOTE,
    "codeflip": CODE_FLIPS_NOTE,
    "codeflip_types": CODE_FLIPS_BY_TYPE_NOTE,
}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d8dee8; }
.summary { font-size: 1.1rem; background: #eef4fb; border-left: 4px solid #3b78c2; padding: .6rem 1rem; }
.note, .meta { color: #55606e; font-size: .9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .85rem; }
th, td { border: 1px solid #d8dee8; padding: .25rem .5rem; white-space: nowrap; }
th { background: #f3f6fa; } td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 600; }
td.missing { color: #a0a8b4; text-align: center; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #d8dee8; }
figcaption { color: #55606e; font-size: .9rem; }
"""


@dataclass(frozen=True)
class Section:
    """One part of the report, the same in every format: a heading, a note, then a table, plots or a list."""

    title: str
    text: str
    table: Table | None = None
    plots: tuple[Plot, ...] = ()
    items: tuple[str, ...] = ()


def sections(report: Report, plots: tuple[Plot, ...]) -> list[Section]:
    """The report's parts in reading order: headline, the quantizer fallbacks (when there are any), plots, then
    each table."""
    headline, *rest = report.tables
    fallbacks = tuple(note.text for note in report.fallbacks)
    return [
        Section("Headline", HEADLINE_NOTE, headline),
        *([Section("Quantizer fallbacks", FALLBACKS_NOTE, items=fallbacks)] if fallbacks else []),
        Section("Plots", "", plots=plots),
        *(Section(table.title, NOTES[table.name], table) for table in rest),
    ]


def cell(value: float | None, fmt: str) -> str:
    """A table cell as text: the number in the table's format, or "–" where it is missing."""
    return MISSING if value is None else format(value, fmt)


def _meta(report: Report) -> str:
    """The line under the title: which run and how many results the report was built from."""
    return f"Config hash: {report.config_hash or 'all (not filtered)'} · {report.n_records} results"


def _markdown_table(table: Table) -> list[str]:
    """A pipe table; a column's group label is prefixed to its header (Markdown has no spanning cells); each caveat
    of its quantizers a paragraph under it."""
    if not table.rows:
        return ["No results yet."]
    headers = ["model", *(f"{g} {c}".strip() for g, c in zip(table.groups, table.columns))]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * len(table.columns)]
    lines += ["| " + " | ".join([label, *(cell(v, table.fmt) for v in values)]) + " |" for label, values in table.rows]
    for caveat in table.caveats:
        lines += ["", caveat]
    return lines


def to_markdown(report: Report, plots: tuple[Plot, ...]) -> str:
    """The report as Markdown; plots are linked by their path relative to the output folder."""
    lines = ["# qunlearn report", "", _meta(report), "", f"**{report.headline['summary']}**"]
    for section in sections(report, plots):
        lines += ["", f"## {section.title}", ""] + ([section.text, ""] if section.text else [])
        if section.table is not None:
            lines += _markdown_table(section.table)
        lines += [f"![{plot.caption}]({plot.path})\n" for plot in section.plots]
        lines += [f"- {item}" for item in section.items]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(report: Report) -> str:
    """Every table in long form (table, row, group, column, value); a missing value is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "row", "group", "column", "value"])
    for table in report.tables:
        for label, values in table.rows:
            for group, column, value in zip(table.groups, table.columns, values):
                writer.writerow([table.name, label, group, column, "" if value is None else repr(value)])
    return buffer.getvalue()


def to_json(report: Report) -> dict:
    """The report as plain data: the headline as computed, every table (None for a missing value) and each distinct
    quantizer fallback."""
    return {
        "config_hash": report.config_hash,
        "n_records": report.n_records,
        "headline": report.headline,
        "tables": {
            t.name: {
                "title": t.title,
                "columns": [{"group": g, "label": c} for g, c in zip(t.groups, t.columns)],
                "rows": {label: list(values) for label, values in t.rows},
                "caveats": list(t.caveats),
            }
            for t in report.tables
        },
        "quantizer_fallbacks": [asdict(note) for note in report.fallbacks],
    }


def _html_table(table: Table) -> str:
    """A table with a spanning header row for the column groups (quantizers or metrics), and each caveat of its
    quantizers as a note under it."""
    if not table.rows:
        return "<p class='note'>No results yet.</p>"
    esc = html.escape
    columns = "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    if any(table.groups):
        spans = "".join(f"<th colspan={len(list(span))}>{esc(g)}</th>" for g, span in groupby(table.groups))
        head = f"<tr><th rowspan=2>model</th>{spans}</tr><tr>{columns}</tr>"
    else:
        head = f"<tr><th>model</th>{columns}</tr>"
    body = [
        "<tr><td>"
        + esc(label)
        + "</td>"
        + "".join("<td class='missing'>–</td>" if v is None else f"<td>{cell(v, table.fmt)}</td>" for v in values)
        + "</tr>"
        for label, values in table.rows
    ]
    notes = "".join(f"<p class='note'>{esc(caveat)}</p>" for caveat in table.caveats)
    return f"<div class='scroll'><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>{notes}"


def html_figure(plot: Plot) -> str:
    """A figure with the PNG embedded as a base64 data URI, so the page needs no other file."""
    data = base64.b64encode(plot.png).decode("ascii")
    caption = html.escape(plot.caption)
    return (
        f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'><figcaption>{caption}</figcaption></figure>"
    )


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain table of already formatted cells (first column a row label), escaped."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def html_page(title: str, meta: str, summary: str, body: list[str]) -> str:
    """A self-contained page in the report's style: inline CSS, the title, a meta line, the summary, then `body`
    (HTML fragments, e.g. tables and `html_figure`s); it makes no network request."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(meta)}</p>",
        f"<p class='summary'>{html.escape(summary)}</p>",
        *body,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def to_html(report: Report, plots: tuple[Plot, ...]) -> str:
    """One self-contained page: inline CSS, tables, plots as data URIs; it makes no network request."""
    parts = []
    for section in sections(report, plots):
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
        if section.table is not None:
            parts.append(_html_table(section.table))
        parts += [html_figure(plot) for plot in section.plots]
        if section.items:
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in section.items) + "</ul>")
    return html_page("qunlearn report", _meta(report), report.headline["summary"], parts)
