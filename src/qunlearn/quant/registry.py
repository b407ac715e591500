"""Quantizer names → specs: `get_quantizer("rtn4", group_size=64)` builds a configured quantizer."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from qunlearn.errors import QuantizerUnavailableError, UserInputError
from qunlearn.quant.awq import AWQQuantizer
from qunlearn.quant.base import FullPrecision, Quantizer, RTNQuantizer
from qunlearn.quant.bnb import BnbQuantizer
from qunlearn.quant.gptq import GPTQQuantizer


@dataclass(frozen=True)
class QuantizerSpec:
    """A registered quantizer: its class and the fixed settings its name stands for."""

    cls: type[Quantizer]
    settings: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


QUANTIZERS: dict[str, QuantizerSpec] = {
    "fp": QuantizerSpec(FullPrecision, {}, "full precision (no quantization)"),
    **{f"rtn{b}": QuantizerSpec(RTNQuantizer, {"bits": b}, f"{b}-bit absmax round-to-nearest") for b in (8, 4, 3, 2)},
    **{f"gptq{b}": QuantizerSpec(GPTQQuantizer, {"bits": b}, f"{b}-bit GPTQ") for b in (8, 4, 3)},
    "awq4": QuantizerSpec(AWQQuantizer, {"bits": 4}, "4-bit AWQ"),
    "bnb-int8": QuantizerSpec(
        BnbQuantizer,
        {"fmt": "int8"},
        "bitsandbytes INT8 weights (LLM.int8's per-row format; the fake-quant leaves out LLM.int8's fp16 outlier "
        "path for activations above 6.0, which real=True keeps)",
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


def configured_quantizer(
    scheme: str, group_size: int | None = None, n_samples: int | None = None, device: str | None = None
) -> Quantizer:
    """The quantizer `scheme` with each given option that it takes (others are ignored: RTN has no `n_samples`),
    validated, and available here; errors name the command-line flag."""
    if group_size is not None and not (group_size > 0 or group_size == -1):
        raise UserInputError(f"--group-size must be positive or -1 (per row), got {group_size}")
    if n_samples is not None and n_samples < 1:
        raise UserInputError(f"--n-samples must be at least 1, got {n_samples}")
    takes = {f.name for f in fields(QUANTIZERS[scheme].cls) if f.init} if scheme in QUANTIZERS else set()
    given = {"group_size": group_size, "n_samples": n_samples, "device": device}
    quantizer = get_quantizer(scheme, **{k: v for k, v in given.items() if v is not None and k in takes})
    reason = quantizer.unavailable_reason()
    if reason:
        raise QuantizerUnavailableError(f"--scheme {scheme} not available: {reason}")
    return quantizer
