"""Code-flip rate: how many quantized weights differ between two models of the same architecture under one quantizer.

For grid quantizers (RTN) the integer codes of both models are compared directly, and the fraction of weights
whose change |w_b − w_a| is below half a step (Δ_a/2) is reported: such a change can flip a code only across
a rounding boundary. For the others (GPTQ, AWQ, bitsandbytes), both models are quantized (GPTQ/AWQ with the
same calibration text) and a "flip" is a quantized weight whose value differs; the half-step fraction then
uses the RTN grid of the same bit width and group size (GPTQ/AWQ), and is None for bitsandbytes.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from qunlearn.quant.base import GridQuantizer, Quantizer, RTNQuantizer
from qunlearn.quant.layers import target_linears, weight_matrix
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_codes


def _module_counts(w_a: torch.Tensor, w_b: torch.Tensor, flips: torch.Tensor, step: torch.Tensor | None) -> dict:
    """Counts for one module: weights, flips, and weights that moved less than half a step (if a step is known)."""
    counts = {"weights": w_a.numel(), "flips": int(flips.sum())}
    if step is not None:
        change = (w_b.float() - w_a.float()).abs().reshape(step.shape[0], step.shape[1], -1)
        counts["below_half_step"] = int((change < step.unsqueeze(-1) / 2).sum())
    return counts


@torch.no_grad()
def code_flips(
    model_a: nn.Module,
    model_b: nn.Module,
    quantizer: str | Quantizer,
    tokenizer: Any = None,
    calibration_texts: list[str] | None = None,
) -> dict[str, Any]:
    """Per-module and overall flip fraction (and below-half-step fraction) between two models under a quantizer."""
    q = get_quantizer(quantizer) if isinstance(quantizer, str) else quantizer
    linears_a, linears_b = target_linears(model_a, q.skip), target_linears(model_b, q.skip)
    if linears_a.keys() != linears_b.keys():
        raise ValueError("models differ in their Linear layers; code flips need the same architecture")
    grid = q if isinstance(q, GridQuantizer) else None
    if isinstance(q, RTNQuantizer):
        quant_a, quant_b = linears_a, linears_b
    else:
        quant_a = target_linears(q.quantize(copy.deepcopy(model_a), tokenizer, calibration_texts), q.skip)
        quant_b = target_linears(q.quantize(copy.deepcopy(model_b), tokenizer, calibration_texts), q.skip)
    modules = {}
    for name, lin_a in linears_a.items():
        w_a, w_b = weight_matrix(lin_a), weight_matrix(linears_b[name])
        if w_a.shape != w_b.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(w_a.shape)} vs {tuple(w_b.shape)})")
        if isinstance(q, RTNQuantizer):
            (codes_a, step), codes_b = q.codes(w_a), q.codes(w_b)[0]
            flips = codes_a != codes_b
        else:
            step = grid.codes(w_a)[1] if grid else None
            flips = weight_matrix(quant_a[name]) != weight_matrix(quant_b[name])
        modules[name] = _module_counts(w_a, w_b, flips, step)
    return summarise(q.name, modules)


def summarise(scheme: str, modules: dict[str, dict]) -> dict[str, Any]:
    """Add fractions per module and the totals over all modules."""
    total = {key: sum(m[key] for m in modules.values()) for key in ("weights", "flips", "below_half_step")
             if all(key in m for m in modules.values())}
    for counts in [*modules.values(), total]:
        counts["flip_fraction"] = counts["flips"] / max(1, counts["weights"])
        if "below_half_step" in counts:
            counts["below_half_step_fraction"] = counts["below_half_step"] / max(1, counts["weights"])
    return {"scheme": scheme, "overall": total, "modules": modules}


# Edges of the histogram of where moved weights started inside their RTN bin: |w/Δ − round(w/Δ)|, 0 = bin centre,
# 0.5 = a rounding boundary. A change can only flip a code if it starts near enough an edge to cross it.
BIN_POSITION_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@torch.no_grad()
def weight_movement(w_a: torch.Tensor, w_b: torch.Tensor, bits: int, group_size: int = 128) -> dict[str, Any]:
    """How the change from `w_a` to `w_b` sits on `w_a`'s RTN grid: counts of weights that moved at all, of those
    starting in the zero bin (|w_a| < Δ/2), of flipped codes, the moved weights' |change|/Δ (mean and max), and a
    histogram of where in their bin the moved weights started (`BIN_POSITION_EDGES`)."""
    if w_a.shape != w_b.shape:
        raise ValueError(f"shapes differ: {tuple(w_a.shape)} vs {tuple(w_b.shape)}")
    q = RTNQuantizer(name=f"rtn{bits}", bits=bits, group_size=group_size)
    (codes_a, step), codes_b = q.codes(w_a), q.codes(w_b)[0]
    a = w_a.float().reshape(step.shape[0], step.shape[1], -1)
    delta = step.unsqueeze(-1).expand_as(a)
    moved = (w_b.float().reshape(a.shape) != a)
    scaled = a[moved] / delta[moved]
    change = (w_b.float().reshape(a.shape) - a).abs()[moved] / delta[moved]
    position = (scaled - torch.round(scaled)).abs()
    histogram = torch.histogram(position, bins=torch.tensor(BIN_POSITION_EDGES)).hist if len(position) else None
    return {
        "weights": w_a.numel(),
        "moved": int(moved.sum()),
        "moved_in_zero_bin": int((torch.round(scaled) == 0).sum()),
        "flips": int((codes_a != codes_b).sum()),
        "mean_change_in_steps": float(change.mean()) if len(change) else 0.0,
        "max_change_in_steps": float(change.max()) if len(change) else 0.0,
        "start_position_histogram": [int(x) for x in histogram] if histogram is not None else [0] * (len(BIN_POSITION_EDGES) - 1),
    }


# An Adam step of about lr is lost in bf16 storage (8-bit significand) once |w| exceeds lr·2^8 to lr·2^9.
BF16_HALF_ULP_EXPONENT = 9


def bf16_matching_lr(model: nn.Module, group_size: int = 128) -> float:
    """The LR at which lr·2^9 is half the median 4-bit RTN step of the model's quantized linears: with bf16
    weights, only weights inside the 4-bit zero bin can then move (the regime of MUSE's 7B runs at lr 1e-5)."""
    steps = torch.cat([rtn_codes(weight_matrix(lin).detach(), 4, group_size)[1].flatten()
                       for lin in target_linears(model).values()])
    return float(steps.median()) / 2 / 2**BF16_HALF_ULP_EXPONENT
