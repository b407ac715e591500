"""Code flips: how many quantized weights differ between two models of the same architecture under one quantizer.

For grid quantizers (RTN) the integer codes of both models are compared directly, and the fraction of weights
whose change |w_b − w_a| is below half a step (Δ_a/2) is reported: such a change can flip a code only across
a rounding boundary. For the others (GPTQ, AWQ, bitsandbytes), both models are quantized (GPTQ/AWQ with the
same calibration text) and a "flip" is a quantized weight whose value differs; the half-step fraction then
uses the RTN grid of the same bit width and group size (GPTQ/AWQ), and is None for bitsandbytes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from qunlearn.quant.base import GridQuantizer, Quantizer, RTNQuantizer
from qunlearn.quant.layers import target_linears, weight_matrix
from qunlearn.quant.registry import get_quantizer


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
    total = {
        key: sum(m[key] for m in modules.values())
        for key in ("weights", "flips", "below_half_step")
        if all(key in m for m in modules.values())
    }
    for counts in [*modules.values(), total]:
        counts["flip_fraction"] = counts["flips"] / max(1, counts["weights"])
        if "below_half_step" in counts:
            counts["below_half_step_fraction"] = counts["below_half_step"] / max(1, counts["weights"])
    return {"scheme": scheme, "overall": total, "modules": modules}


# Edges of the histogram of where moved weights started inside their RTN bin: |w/Δ − round(w/Δ)|, 0 = bin centre,
# 0.5 = a rounding boundary. A change can only flip a code if it starts near enough an edge to cross it.
BIN_POSITION_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
# Edges of the histogram of the moved weights' |change| / Δ: 0, then 20 log-spaced bins per decade from 1e-6 to
# 1e3 steps (each bin 12% wide), then everything larger. Quantiles read from it are exact to within one bin.
CHANGE_BINS_PER_DECADE = 20
CHANGE_EDGES = (
    0.0,
    *(10 ** (k / CHANGE_BINS_PER_DECADE) for k in range(-6 * CHANGE_BINS_PER_DECADE, 3 * CHANGE_BINS_PER_DECADE + 1)),
    math.inf,
)


def _histogram(values: torch.Tensor, edges: tuple[float, ...]) -> list[int]:
    """Counts of `values` in [edges[i], edges[i+1]) (the last bin closed), on any device."""
    bounds = torch.tensor(edges[1:-1], dtype=values.dtype, device=values.device)
    index = torch.bucketize(values, bounds, right=True)
    return torch.bincount(index, minlength=len(edges) - 1).tolist()


@torch.no_grad()
def weight_movement(w_a: torch.Tensor, w_b: torch.Tensor, bits: int, group_size: int = 128) -> dict[str, Any]:
    """How the change from `w_a` to `w_b` sits on `w_a`'s RTN grid: counts of weights that moved at all, of those
    starting in the zero bin (|w_a| < Δ/2), of flipped codes (each matrix on its own grid), of moved weights whose
    code did not flip (they stay inside their bin), the moved weights' |change|/Δ (mean, max and a histogram over
    `CHANGE_EDGES`), and a histogram of where in their bin the moved weights started (`BIN_POSITION_EDGES`)."""
    if w_a.shape != w_b.shape:
        raise ValueError(f"shapes differ: {tuple(w_a.shape)} vs {tuple(w_b.shape)}")
    q = RTNQuantizer(name=f"rtn{bits}", bits=bits, group_size=group_size)
    (codes_a, step), codes_b = q.codes(w_a), q.codes(w_b)[0]
    a = w_a.float().reshape(step.shape[0], step.shape[1], -1)
    delta = step.unsqueeze(-1).expand_as(a)
    moved = w_b.float().reshape(a.shape) != a
    scaled = a[moved] / delta[moved]
    change = (w_b.float().reshape(a.shape) - a).abs()[moved] / delta[moved]
    position = (scaled - torch.round(scaled)).abs()
    same_code = (codes_a == codes_b).reshape(a.shape)
    return {
        "weights": w_a.numel(),
        "moved": int(moved.sum()),
        "moved_in_zero_bin": int((torch.round(scaled) == 0).sum()),
        "flips": int((codes_a != codes_b).sum()),
        "moved_kept_code": int((moved & same_code).sum()),
        "mean_change_in_steps": float(change.mean()) if len(change) else 0.0,
        "max_change_in_steps": float(change.max()) if len(change) else 0.0,
        "start_position_histogram": _histogram(position, BIN_POSITION_EDGES),
        "change_histogram": _histogram(change, CHANGE_EDGES),
    }


def combine_movements(movements: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`weight_movement` results of several matrices as one: counts and histograms add, the mean change is
    weighted by the moved counts, the max is the max."""
    total: dict[str, Any] = {}
    change_sum = 0.0
    for counts in movements:
        change_sum += counts["mean_change_in_steps"] * counts["moved"]
        for key, value in counts.items():
            if key == "max_change_in_steps":
                total[key] = max(total.get(key, 0.0), value)
            elif isinstance(value, list):
                total[key] = [a + b for a, b in zip(total.get(key, [0] * len(value)), value)]
            elif key != "mean_change_in_steps":
                total[key] = total.get(key, 0) + value
    total["mean_change_in_steps"] = change_sum / max(1, total.get("moved", 0))
    return total


def histogram_quantile(counts: list[int], edges: tuple[float, ...], q: float) -> float | None:
    """The q-quantile of values binned by `edges`, interpolated inside its bin (geometrically between positive
    edges, linearly from 0); None when there are no values. A quantile in the open last bin is its lower edge."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lo, hi, share = edges[i], edges[i + 1], (rank - seen) / count
            if math.isinf(hi):
                return lo
            return lo + share * (hi - lo) if lo == 0 else lo * (hi / lo) ** share
        seen += count
    return edges[-2]


def module_type(name: str) -> str:
    """A linear layer's type: the last component of its name (q_proj, down_proj, c_attn, ...)."""
    return name.rsplit(".", 1)[-1]


def _with_fractions(counts: dict[str, Any]) -> dict[str, Any]:
    moved = max(1, counts["moved"])
    return counts | {
        "moved_fraction": counts["moved"] / max(1, counts["weights"]),
        "flip_fraction": counts["flips"] / max(1, counts["weights"]),
        "within_bin_fraction": counts["moved_kept_code"] / moved if counts["moved"] else None,
    }


@torch.no_grad()
def update_size(model_a: nn.Module, model_b: nn.Module, bits: int = 4, group_size: int = 128) -> dict[str, Any]:
    """How big the update from `model_a` (target) to `model_b` (unlearned) is against the `bits`-bit RTN step Δ of
    `model_a`, over the quantized linears: |w_b − w_a| / Δ of the moved weights (median, 90th percentile, from
    `CHANGE_EDGES`), the share of moved weights that keep their code (stay inside their bin), and the share of
    codes that flip per module type. Small updates inside their bins are what quantization undoes."""
    linears_a, linears_b = target_linears(model_a), target_linears(model_b)
    if linears_a.keys() != linears_b.keys():
        raise ValueError("models differ in their Linear layers; update sizes need the same architecture")
    modules = {
        name: weight_movement(lin.weight, linears_b[name].weight, bits, group_size) for name, lin in linears_a.items()
    }
    types = dict.fromkeys(module_type(name) for name in modules)
    overall = combine_movements(modules.values())
    histogram = overall.pop("change_histogram")
    overall = _with_fractions(overall) | {
        "median_change_in_steps": histogram_quantile(histogram, CHANGE_EDGES, 0.5),
        "p90_change_in_steps": histogram_quantile(histogram, CHANGE_EDGES, 0.9),
    }
    by_type = {}
    for kind in types:
        counts = combine_movements(m for name, m in modules.items() if module_type(name) == kind)
        by_type[kind] = {
            k: v
            for k, v in _with_fractions(counts).items()
            if k in ("weights", "moved", "flips", "moved_fraction", "flip_fraction")
        }
    del overall["start_position_histogram"]
    return {"bits": bits, "group_size": group_size, "overall": overall, "by_type": by_type}


def update_size_fields(size: dict[str, Any]) -> dict[str, Any]:
    """The numbers of `update_size` that a results line carries: quantiles, shares and flip rate per module type."""
    overall = size["overall"]
    keep = ("median_change_in_steps", "p90_change_in_steps", "within_bin_fraction", "moved_fraction")
    return {key: overall[key] for key in keep} | {
        "flips_by_type": {kind: counts["flip_fraction"] for kind, counts in size["by_type"].items()}
    }


# Share of moved weights that must keep their code for the reading "quantization is expected to undo them".
UNDO_WITHIN_BIN = 0.9


def update_size_reading(size: dict[str, Any]) -> str:
    """A plain reading of `update_size` for quantization: undone (median move < half a step and ≥ 90% of moved
    weights inside their bin), partly undone (≥ 50% inside), or not undone."""
    overall, bits = size["overall"], size["bits"]
    if not overall["moved"]:
        return "The two models have identical quantized weights: unlearning changed none of them."
    median, p90 = overall["median_change_in_steps"], overall["p90_change_in_steps"]
    within = overall["within_bin_fraction"]
    where = (
        f"Unlearning moved {100 * overall['moved_fraction']:.1f}% of the weights by a median {median:.3g} of "
        f"the {bits}-bit step (90th percentile {p90:.3g}); {100 * within:.1f}% of them stay inside their "
        f"{bits}-bit bin and {100 * overall['flip_fraction']:.3f}% of all codes flip"
    )
    if median >= 0.5 or within < 0.5:
        return f"{where}. Updates are comparable to the {bits}-bit step: quantization is not expected to undo them."
    smaller = f"Updates are {1 / median:.0f}× smaller than the {bits}-bit step"
    if within >= UNDO_WITHIN_BIN:
        return f"{where}. {smaller}: quantization is expected to undo them."
    return (
        f"{where}. {smaller}, but {100 * (1 - within):.0f}% of the moved weights leave their bin: quantization "
        "is expected to undo only part of them."
    )
