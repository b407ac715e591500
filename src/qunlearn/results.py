"""`<out>/results.jsonl`, the one home of a run's numbers: one JSON object per finished grid cell, later lines
replacing earlier ones. The grid writes its lines (built by `metric_records`/`record`) with `fileio.append_jsonl`; the grid's resume and the
report read it with `finished_cells`/`load_results`. Record names, labels and directions come from
`qunlearn.evaluate.registry`.
"""

from __future__ import annotations

import json
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qunlearn.evaluate.registry import METRICS
from qunlearn.fileio import read_text

RESULTS_FILE = "results.jsonl"
REQUIRED_KEYS = ("model", "quantizer", "metric", "value", "config_hash")
CODE_FLIPS = "codeflip"  # record name of a model's code flips under one scheme (a grid cell, not a registry metric)


def _parse_line(path: Path, lineno: int, line: str) -> dict | None:
    """One results line as a dict; None (with a warning) for a line cut by a crash mid-write or otherwise not a
    result record, whose cell a resumed run redoes."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    problem = None
    if not isinstance(record, dict):
        problem = "is cut or corrupt (a crash mid-write?)"
    elif missing := [key for key in REQUIRED_KEYS if key not in record]:
        problem = f"lacks {', '.join(missing)}"
    elif record["value"] is not None and (
        isinstance(record["value"], bool) or not isinstance(record["value"], (int, float))
    ):
        problem = f"has a 'value' that is not a number ({record['value']!r})"
    if problem:
        warnings.warn(f"{path}: line {lineno} {problem}; skipped, and a resumed run redoes its cell", stacklevel=3)
        return None
    return record


def read_records(path: str | Path) -> Iterator[dict]:
    """Every complete record of a results file in line order; a missing file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: results file not found (run the grid first)")
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        record = _parse_line(path, lineno, line) if line.strip() else None
        if record is not None:
            yield record


def load_results(path: str | Path, config_hash: str | None = None) -> list[dict]:
    """The current records of a results file: the last line per (model, quantizer, metric), in the order
    each cell first appeared; with `config_hash`, lines of any other hash (stale runs) are dropped first.

    A missing file, or one with no (current) records, raises ValueError naming the file.
    """
    path = Path(path)
    cells: dict[tuple[str, str, str], dict] = {}
    for record in read_records(path):
        if config_hash is None or record["config_hash"] == config_hash:
            cells[(record["model"], record["quantizer"], record["metric"])] = record
    if not cells:
        where = f" with config hash {config_hash}" if config_hash is not None else ""
        raise ValueError(f"{path}: no results{where}")
    return list(cells.values())


def latest_config_hash(path: str | Path) -> str:
    """The config hash of the last line of a results file: the run that wrote it most recently."""
    path = Path(path)
    tail = deque(read_records(path), maxlen=1)
    if not tail:
        raise ValueError(f"{path}: no results")
    return tail[0]["config_hash"]


def finished_cells(path: str | Path, config_hash: str) -> set[tuple[str, str, str]]:
    """(model, quantizer, record name) of every line written under `config_hash`; empty when there is no file."""
    if not Path(path).is_file():
        return set()
    return {(r["model"], r["quantizer"], r["metric"]) for r in read_records(path) if r["config_hash"] == config_hash}


def cell_marker(metric: str) -> str:
    """The record name whose presence marks a metric's cell done: its first result (a metric may write several)."""
    return CODE_FLIPS if metric == CODE_FLIPS else METRICS[metric].results[0].name


def record(
    model: str, quantizer: str, metric: str, value: float | None, config_hash: str, extra: dict[str, Any] | None = None
) -> dict:
    """One results line."""
    line = {"model": model, "quantizer": quantizer, "config_hash": config_hash, "metric": metric, "value": value}
    return line | ({"extra": extra} if extra is not None else {})


def metric_records(model: str, quantizer: str, metric: str, result: dict, config_hash: str) -> list[dict]:
    """The results lines of one evaluated metric, one per number its spec reports (per-item values go to the
    cell file instead); a metric reporting one number also keeps its other scalar fields as `extra`."""
    results = METRICS[metric].results
    if len(results) > 1:
        return [record(model, quantizer, r.name, result[r.key], config_hash) for r in results]
    extra = {k: v for k, v in result.items() if k not in ("value", "items", "seconds")}
    return [record(model, quantizer, results[0].name, result[results[0].key], config_hash, extra)]
