"""The report's numbers as pure functions, records in → rows out: the MUSE table, the headline, utility, code flips.

The headline (forgotten knowledge retained) is computed here and only here, in `headline()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import mean

from qunlearn.evaluate.registry import FORGET_METRICS, RESULTS
from qunlearn.quant.registry import caveats
from qunlearn.report.fallbacks import FallbackNote, fallback_notes
from qunlearn.results import CODE_FLIPS

REFERENCES = ("target", "retrain")
BASELINES = ("ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr")
SURE_SUFFIX = "_sure"
FULL_PRECISION = "fp"


@dataclass(frozen=True)
class Col:
    """One table column: a metric's value (or one key of its `extra`), times `scale`."""

    label: str
    metric: str
    extra: str | None = None
    scale: float = 1.0
    optional: bool = False  # dropped when no cell has a value


@dataclass(frozen=True)
class Table:
    """A renderer-agnostic table: `groups[i]` is the spanning header of `columns[i]` ("" for none); `caveats` are
    the registry's notes on the quantizers it shows (one line each, rendered under the table)."""

    name: str
    title: str
    groups: tuple[str, ...]
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    fmt: str = ".1f"
    caveats: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResultIndex:
    """The current results keyed by (model, quantizer, metric), with models and quantizers in display order."""

    models: tuple[str, ...]
    quantizers: tuple[str, ...]
    cells: dict[tuple[str, str, str], dict]

    def get(self, model: str, quantizer: str, col: Col) -> float | None:
        """The cell's value for `col`, or None where it is missing or not a finite number."""
        record = self.cells.get((model, quantizer, col.metric))
        if record is None:
            return None
        value = record["value"] if col.extra is None else (record.get("extra") or {}).get(col.extra)
        return _finite(value, col.scale)

    def has(self, model: str, quantizer: str, metrics: tuple[str, ...]) -> bool:
        """Whether any of `metrics` has a record for this model and quantizer."""
        return any((model, quantizer, metric) in self.cells for metric in metrics)


@dataclass(frozen=True)
class Report:
    """Everything the renderers and plots need, derived from one set of records."""

    config_hash: str | None
    n_records: int
    quantizers: tuple[str, ...]
    headline: dict
    tables: tuple[Table, ...]
    tradeoff: tuple[tuple[str, str, float, float], ...]
    fallbacks: tuple[FallbackNote, ...] = ()


def _finite(value: object, scale: float = 1.0) -> float | None:
    """`value × scale` as a float, or None where it is not a finite number (NaN/inf never reach a report)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) * scale


def model_group(model: str) -> str:
    """ "reference" (target, retrain), "sure" (a `_sure` variant) or "baseline" (any other unlearned model)."""
    if model in REFERENCES:
        return "reference"
    return "sure" if model.endswith(SURE_SUFFIX) else "baseline"


def _model_key(model: str, first_seen: int) -> tuple[int, int, int]:
    """Sort key: target, retrain, baselines, SURE variants; known methods in paper order, others as they came."""
    group = model_group(model)
    base = model.removesuffix(SURE_SUFFIX) if group == "sure" else model
    known = (REFERENCES + BASELINES).index(base) if base in REFERENCES + BASELINES else None
    rank = {"reference": 0, "baseline": 1, "sure": 2}[group]
    return (rank, 0, known) if known is not None else (rank, 1, first_seen)


def index_results(records: list[dict]) -> ResultIndex:
    """Index records by cell; quantizers in order of first appearance with `fp` first, models in paper order."""
    cells = {(r["model"], r["quantizer"], r["metric"]): r for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    quantizers = list(dict.fromkeys(r["quantizer"] for r in records))
    if FULL_PRECISION in quantizers:
        quantizers.remove(FULL_PRECISION)
        quantizers.insert(0, FULL_PRECISION)
    ordered = sorted(models, key=lambda m: _model_key(m, models.index(m)))
    return ResultIndex(tuple(ordered), tuple(quantizers), cells)


def _ratio(index: ResultIndex, model: str, quantizer: str, metric: str) -> float | None:
    """`metric(model, q) / metric(target, q)` in %, or None when either is missing or the target's is 0."""
    col = Col(metric, metric)
    score, reference = index.get(model, quantizer, col), index.get("target", quantizer, col)
    if score is None or reference is None or reference == 0:
        return None
    return 100.0 * score / reference


def _group_mean(per_model: dict[str, dict[str, float | None]], group: str, quantizer: str) -> tuple[float | None, int]:
    """Mean of the defined ratios of one group's models under one quantizer, and how many were averaged."""
    values = [
        ratios[quantizer]
        for model, ratios in per_model.items()
        if model_group(model) == group and ratios[quantizer] is not None
    ]
    return (mean(values) if values else None), len(values)


def _summary(quantizers: list[str], knowmem: dict) -> str:
    """One plain sentence in the paper's style: "full precision X% → rtn4 Y%" per group of methods."""

    def part(quantizer: str, value: float | None) -> str:
        name = "full precision" if quantizer == FULL_PRECISION else quantizer
        return f"{name} {'–' if value is None else f'{value:.1f}%'}"

    clauses = []
    for group, name in (("baseline", "the baselines"), ("sure", "the SURE variants")):
        if not any(knowmem["n"][group].values()):
            continue
        parts = [part(q, knowmem["mean"][group][q]) for q in quantizers]
        if quantizers[0] == FULL_PRECISION and len(parts) > 1:
            parts = [f"{parts[0]} → {parts[1]}", *parts[2:]]
        clauses.append(f"over {name}: " + ", ".join(parts))
    if not clauses:
        return "No unlearned model has both its own and the target's KnowMem_f under one quantizer yet."
    return (
        "Forgotten knowledge retained (KnowMem_f as a % of the target's under the same quantizer), averaged "
        + "; ".join(clauses)
        + "."
    )


def headline(index: ResultIndex) -> dict:
    """Forgotten knowledge retained: each unlearned model's KnowMem_f and VerbMem_f as a % of the target's
    under the same quantizer, per model and averaged over the baselines and over the SURE variants."""
    quantizers = [q for q in index.quantizers if any(index.has(m, q, FORGET_METRICS) for m in index.models)]
    result: dict = {"reference": "target under the same quantizer", "quantizers": quantizers}
    for metric in FORGET_METRICS:
        per_model = {
            m: {q: _ratio(index, m, q, metric) for q in quantizers}
            for m in index.models
            if m != "target" and any(index.has(m, q, (metric,)) for q in quantizers)
        }
        stats = {g: {q: _group_mean(per_model, g, q) for q in quantizers} for g in ("baseline", "sure")}
        result[metric] = {
            "per_model": per_model,
            "mean": {g: {q: value for q, (value, _) in by_q.items()} for g, by_q in stats.items()},
            "n": {g: {q: count for q, (_, count) in by_q.items()} for g, by_q in stats.items()},
        }
    result["summary"] = _summary(quantizers, result["knowmem_f"])
    return result


def headline_table(head: dict) -> Table:
    """The headline as a table: means first, then each unlearned model (retrain as a reference point)."""
    quantizers = head["quantizers"]
    metrics = [m for m in FORGET_METRICS if head[m]["per_model"]]
    row_labels = {"baseline": "mean of baselines", "sure": "mean of SURE variants"}
    rows = [
        (label, tuple(head[m]["mean"][g][q] for m in metrics for q in quantizers))
        for g, label in row_labels.items()
        if any(head[m]["n"][g][q] for m in metrics for q in quantizers)
    ]
    models = list(dict.fromkeys(model for m in metrics for model in head[m]["per_model"]))
    rows += [
        (model, tuple(head[m]["per_model"].get(model, {}).get(q) for m in metrics for q in quantizers))
        for model in models
    ]
    return Table(
        "headline",
        "Forgotten knowledge retained (% of the target under the same quantizer)",
        tuple(f"{RESULTS[m].label} retained" for m in metrics for _ in quantizers),
        tuple(q for _ in metrics for q in quantizers),
        tuple(rows),
        caveats=tuple(caveats(quantizers)),
    )


def _cols(*names: str) -> tuple[Col, ...]:
    """Columns for results.jsonl record names, headed by the registry's label and direction."""
    return tuple(Col(RESULTS[name].heading, name) for name in names)


MUSE_COLS = _cols("verbmem_f", "knowmem_f", "privleak", "knowmem_r")
UTILITY_COLS = _cols("knowmem_r", "ppl_retain", "ppl_holdout")
CODE_FLIPS_COLS = (
    Col("codes flipped %", CODE_FLIPS, scale=100.0),
    Col("moved < ½ step %", CODE_FLIPS, extra="below_half_step", scale=100.0, optional=True),
    Col("median |Δw|/Δ", CODE_FLIPS, extra="median_change_in_steps", optional=True),
    Col("p90 |Δw|/Δ", CODE_FLIPS, extra="p90_change_in_steps", optional=True),
    Col("moved, kept in bin %", CODE_FLIPS, extra="within_bin_fraction", scale=100.0, optional=True),
)


def metric_table(index: ResultIndex, name: str, title: str, cols: tuple[Col, ...], fmt: str = ".1f") -> Table:
    """Models × (quantizer × cols), keeping the models and quantizers that have any of the cols' metrics."""
    metrics = tuple(dict.fromkeys(col.metric for col in cols))
    quantizers = [q for q in index.quantizers if any(index.has(m, q, metrics) for m in index.models)]
    models = [m for m in index.models if any(index.has(m, q, metrics) for q in quantizers)]
    cols = tuple(
        c for c in cols if not c.optional or any(index.get(m, q, c) is not None for m in models for q in quantizers)
    )
    rows = tuple((m, tuple(index.get(m, q, c) for q in quantizers for c in cols)) for m in models)
    return Table(
        name,
        title,
        tuple(q for q in quantizers for _ in cols),
        tuple(c.label for _ in quantizers for c in cols),
        rows,
        fmt,
        tuple(caveats(quantizers)),
    )


def flips_by_type_table(index: ResultIndex) -> Table:
    """Code flips (%) per module type (q_proj, down_proj, ...) for each model, under each scheme that reports them."""
    cells = {
        (m, q): (index.cells[(m, q, CODE_FLIPS)].get("extra") or {}).get("flips_by_type")
        for m in index.models
        for q in index.quantizers
        if (m, q, CODE_FLIPS) in index.cells
    }
    cells = {key: value for key, value in cells.items() if value}
    schemes = [q for q in index.quantizers if any(key[1] == q for key in cells)]
    types = {q: list(dict.fromkeys(t for (m, s), by in cells.items() if s == q for t in by)) for q in schemes}
    models = [m for m in index.models if any(key[0] == m for key in cells)]
    rows = tuple(
        (m, tuple(_finite((cells.get((m, q)) or {}).get(t), 100.0) for q in schemes for t in types[q])) for m in models
    )
    return Table(
        "codeflip_types",
        "Code flips per module type",
        tuple(q for q in schemes for _ in types[q]),
        tuple(f"{t} %" for q in schemes for t in types[q]),
        rows,
        ".3g",
        tuple(caveats(schemes)),
    )


def tradeoff_points(index: ResultIndex) -> tuple[tuple[str, str, float, float], ...]:
    """(model, quantizer, KnowMem_f, KnowMem_r) for every cell that has both: utility vs forgetting."""
    forget, retain = Col("", "knowmem_f"), Col("", "knowmem_r")
    return tuple(
        (m, q, index.get(m, q, forget), index.get(m, q, retain))
        for m in index.models
        for q in index.quantizers
        if index.get(m, q, forget) is not None and index.get(m, q, retain) is not None
    )


def build_report(records: list[dict], config_hash: str | None = None, fallbacks: Iterable[dict] = ()) -> Report:
    """Every table of the report, the headline and the plot data, from the current records; with the run's
    quantizer fallback records (`report.fallbacks.load_fallbacks`), each distinct fallback once."""
    index = index_results(records)
    head = headline(index)
    tables = (
        headline_table(head),
        metric_table(index, "muse", "MUSE metrics per quantizer", MUSE_COLS),
        metric_table(index, "utility", "Utility: KnowMem on the retain set and perplexities", UTILITY_COLS),
        metric_table(index, "codeflip", "Code flips against the target", CODE_FLIPS_COLS, fmt=".3g"),
        flips_by_type_table(index),
    )
    notes = fallback_notes(fallbacks, index.quantizers, index.models)
    return Report(config_hash, len(records), index.quantizers, head, tables, tradeoff_points(index), notes)
