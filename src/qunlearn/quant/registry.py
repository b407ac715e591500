"""Quantizer names → specs: `get_quantizer("rtn4", group_size=64)` builds a configured quantizer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from qunlearn.quant.awq import AWQQuantizer
from qunlearn.quant.base import FullPrecision, Quantizer, RTNQuantizer
from qunlearn.quant.bnb import BnbQuantizer
from qunlearn.quant.gptq import GPTQQuantizer


@dataclass(frozen=True)
class QuantizerSpec:
    """A registered quantizer: its class, the fixed settings its name stands for, a summary for `--help`, and a
    caveat (where its results differ from the real thing) that `--help`, the report and the audit show."""

    cls: type[Quantizer]
    settings: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    caveat: str = ""


QUANTIZERS: dict[str, QuantizerSpec] = {
    "fp": QuantizerSpec(FullPrecision, {}, "full precision (no quantization)"),
    **{f"rtn{b}": QuantizerSpec(RTNQuantizer, {"bits": b}, f"{b}-bit absmax round-to-nearest") for b in (8, 4, 3, 2)},
    **{f"gptq{b}": QuantizerSpec(GPTQQuantizer, {"bits": b}, f"{b}-bit GPTQ") for b in (8, 4, 3)},
    "awq4": QuantizerSpec(AWQQuantizer, {"bits": 4}, "4-bit AWQ"),
    "bnb-int8": QuantizerSpec(
        BnbQuantizer,
        {"fmt": "int8"},
        "bitsandbytes INT8 weights, LLM.int8's per-row format",
        caveat="the fake-quant leaves out LLM.int8's fp16 outlier path for activations above 6.0, which real=True "
        "keeps",
    ),
    **{f"bnb-{f}": QuantizerSpec(BnbQuantizer, {"fmt": f}, f"bitsandbytes {f.upper()}") for f in ("fp4", "nf4")},
}


def get_quantizer(name: str, **options: Any) -> Quantizer:
    """A quantizer by registered name, with options (group_size, skip, n_samples, …) overriding its defaults."""
    try:
        spec = QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer '{name}'; choose one of {', '.join(QUANTIZERS)}") from None
    allowed = {f.name for f in fields(spec.cls) if f.init} - {"name"} - set(spec.settings)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    if "skip" in options:
        options["skip"] = tuple(options["skip"])
    return spec.cls(name=name, **spec.settings, **options)


def quantizer_fields(name: str) -> dict[str, str]:
    """Option name → annotation of the options quantizer `name` takes (its fixed settings excluded)."""
    spec = QUANTIZERS[name]
    return {f.name: str(f.type) for f in fields(spec.cls) if f.name != "name" and f.name not in spec.settings}


def caveats(names: Iterable[str]) -> list[str]:
    """One line, "NAME caveat: ...", for each registered quantizer among `names` that has a caveat (each once)."""
    known = [n for n in dict.fromkeys(names) if n in QUANTIZERS]  # results may name a quantizer removed since
    return [f"{n} caveat: {QUANTIZERS[n].caveat}." for n in known if QUANTIZERS[n].caveat]
