"""Quantizer fallbacks from where a run records them to the lines its reports say.

A quantizer lists in `Quantizer.fallbacks` each place where it did something other than its settings ask
({"layers", "used", "reason"}). The grid keeps each (model, quantizer) cell's list in `<out>/quantizer_fallbacks.json`
(keyed "model@quantizer", with the run's config hash); the report and the audit say each distinct fallback once,
with the models or attacks it happened on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qunlearn.fileio import atomic_write_json, read_json

FALLBACKS_FILE = "quantizer_fallbacks.json"


def cell_key(model: str, quantizer: str) -> str:
    """The key of one (model, quantizer) cell in the fallbacks file."""
    return f"{model}@{quantizer}"


def load_fallbacks(path: str | Path, config_hash: str | None = None) -> dict[str, dict[str, Any]]:
    """The run's fallback records by cell key ({"model", "quantizer", "config_hash", "fallbacks"}), only
    `config_hash`'s when given; empty when there is no file (nothing quantized yet)."""
    path = Path(path)
    records = read_json(path) if path.is_file() else {}
    return {key: r for key, r in records.items() if config_hash is None or r["config_hash"] == config_hash}


def record_fallbacks(
    path: str | Path, model: str, quantizer: str, config_hash: str, fallbacks: list[dict[str, Any]]
) -> None:
    """Set one cell's fallbacks (an empty list: none) in the run's file, atomically, keeping every other cell's."""
    records = load_fallbacks(path)
    records[cell_key(model, quantizer)] = {
        "model": model,
        "quantizer": quantizer,
        "config_hash": config_hash,
        "fallbacks": fallbacks,
    }
    atomic_write_json(path, records)


def describe(fallback: dict[str, Any]) -> str:
    """What was used instead and why, with the number of layers and the first one's name."""
    layers = fallback["layers"]
    count = f"{len(layers)} layer{'' if len(layers) == 1 else 's'}"
    return f"{fallback['reason']}; {fallback['used']} used instead for {count} (e.g. {layers[0]})"


def group_fallbacks(cases: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(who, fallback) pairs → each distinct fallback (same reason, replacement and layers) once, with everyone it
    happened to, in order of first appearance."""
    groups: dict[tuple, tuple[list[str], dict[str, Any]]] = {}
    for who, fallback in cases:
        key = (fallback["reason"], fallback["used"], tuple(fallback["layers"]))
        names, _ = groups.setdefault(key, ([], fallback))
        if who not in names:
            names.append(who)
    return [(tuple(names), fallback) for names, fallback in groups.values()]


@dataclass(frozen=True)
class FallbackNote:
    """One distinct fallback of a quantizer in a grid run, and the models it happened on."""

    quantizer: str
    used: str
    reason: str
    layers: int
    example_layer: str
    models: tuple[str, ...]
    text: str


def fallback_notes(
    records: Iterable[dict[str, Any]], quantizers: tuple[str, ...], models: tuple[str, ...]
) -> tuple[FallbackNote, ...]:
    """The grid's fallbacks, per quantizer (in `quantizers` order, others after) and deduplicated over models (listed
    in `models` order, others after)."""

    def rank(order: tuple[str, ...], name: str) -> int:
        return order.index(name) if name in order else len(order)

    records = sorted(records, key=lambda r: (rank(quantizers, r["quantizer"]), rank(models, r["model"])))
    notes = []
    for quantizer in dict.fromkeys(r["quantizer"] for r in records):
        cases = [(r["model"], f) for r in records if r["quantizer"] == quantizer for f in r["fallbacks"]]
        for on, fallback in group_fallbacks(cases):
            notes.append(
                FallbackNote(
                    quantizer,
                    fallback["used"],
                    fallback["reason"],
                    len(fallback["layers"]),
                    fallback["layers"][0],
                    on,
                    f"{quantizer} fallback: {describe(fallback)}, on {', '.join(on)}.",
                )
            )
    return tuple(notes)
