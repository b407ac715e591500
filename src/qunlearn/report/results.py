"""Read `<out>/results.jsonl`: one JSON object per finished grid cell, later lines replacing earlier ones."""

from __future__ import annotations

import json
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from qunlearn.fileio import read_text

RESULTS_FILE = "results.jsonl"
REQUIRED_KEYS = ("model", "quantizer", "metric", "value", "config_hash")


def _parse_line(path: Path, lineno: int, line: str) -> dict | None:
    """One results line as a dict; None (with a warning) for a line cut by a crash mid-write, which the
    grid redoes; a well-formed line of the wrong shape raises ValueError naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        warnings.warn(f"{path}: line {lineno} is cut or corrupt (a crash mid-write?); skipped", stacklevel=2)
        return None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
    value = record["value"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{path}:{lineno}: 'value' must be a number or null, got {value!r}")
    return record


def _records(path: Path) -> Iterator[dict]:
    """Every complete record of a results file in line order; a missing file raises ValueError naming it."""
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
    for record in _records(path):
        if config_hash is None or record["config_hash"] == config_hash:
            cells[(record["model"], record["quantizer"], record["metric"])] = record
    if not cells:
        where = f" with config hash {config_hash}" if config_hash is not None else ""
        raise ValueError(f"{path}: no results{where}")
    return list(cells.values())


def latest_config_hash(path: str | Path) -> str:
    """The config hash of the last line of a results file: the run that wrote it most recently."""
    path = Path(path)
    tail = deque(_records(path), maxlen=1)
    if not tail:
        raise ValueError(f"{path}: no results")
    return tail[0]["config_hash"]
