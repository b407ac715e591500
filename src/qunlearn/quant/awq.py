"""AWQ (Lin et al. 2024) on the RTN grid: activation-aware per-channel scales folded into the previous op.

Follows llm-compressor's AWQModifier: scales `s = mean|x|^α / (w_mean^(1-α) + 1e-4)` (duo scaling) or
`mean|x|^α`, normalised by sqrt(max·min); α searched on a grid (the identity included) to minimise the
parent module's output MSE with the balance layers fake-quantized as `Q(W·s)/s`; then the smooth op's
weight is divided by `s` and the balance layers' weights multiplied by `s`, and all projection layers get RTN.
The scaling pairs of each model family come from one table, `awq_layouts.LAYOUTS`; a block not in it gets RTN
(recorded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from qunlearn.quant.activations import ActivationStore
from qunlearn.quant.awq_layouts import QUERY_KEY_LAYERS, Mapping, block_mappings
from qunlearn.quant.base import BlockInput, CalibratedQuantizer, StopBlock, block_output, record_module_inputs
from qunlearn.quant.layers import weight_matrix
from qunlearn.quant.memory import release_freed_memory, slices
from qunlearn.quant.rtn import (
    absmax_scales,
    default_denominator,
    effective_group_size,
    fake_quantize_,
    group_absmax,
    round_to_codes,
    rtn_quantize,
)


def weight_means(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel, the mean over the output rows of all `weights` of |w| / max|w| of its quantization group.

    Summed one layer at a time in fp64 and returned in fp64, as llm-compressor does (so the scales are fp64 too);
    one fp32 temporary of a layer's size is alive, and fp64 ones of a slice of columns.
    """
    total, rows = None, 0
    for w in weights:
        normalised = w.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True).abs_()
        normalised.view(w.shape[0], -1, group_size).div_(group_absmax(w, group_size).unsqueeze(-1) + 1e-6)
        column_sums = torch.cat(
            [normalised[:, part].sum(dim=0, dtype=torch.float64) for part in slices(w.shape[1], w.shape[0])]
        )
        total = column_sums if total is None else total + column_sums
        rows += w.shape[0]
    return total / rows


def scale_grid(n_grid: int, duo_scaling: bool) -> list[tuple[float, bool]]:
    """(α, duo) pairs to try: with duo scaling, the identity (0, False) then n_grid-1 points of [0, 1]."""
    if duo_scaling:
        return [(0.0, False)] + [(i / (n_grid - 2), True) for i in range(n_grid - 1)]
    return [(i / (n_grid - 1), False) for i in range(n_grid)]


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float, duo: bool) -> torch.Tensor:
    """The per-channel scale vector for one grid point, normalised so that max·min = 1."""
    scales = (
        (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
        if duo
        else x_mean.pow(ratio).clamp(min=1e-4)
    )
    scales = scales / (scales.max() * scales.min()).sqrt()
    return torch.nan_to_num(scales, nan=1.0, posinf=1.0)


def search_scales(
    balances: list[nn.Module],
    run_parent: Callable[[], Iterable[torch.Tensor]],
    x_mean: torch.Tensor,
    bits: int,
    group_size: int,
    denominator: float | None = None,
    n_grid: int = 20,
    duo_scaling: bool = True,
    reference: ActivationStore | None = None,
) -> tuple[torch.Tensor, float]:
    """The scales (and α) minimising the parent's output MSE with balance weights set to Q(W·s)/s; weights restored.

    `run_parent` yields the parent's output per calibration sample; the unquantized outputs are kept in `reference`
    (an empty store; default: in memory) and each candidate's are compared with them one sample at a time. Beyond
    the model it holds one copy of the balance weights (to restore them): each candidate is quantized in the layers'
    own weights (fp32) or, a slice of rows at a time, in one small fp32 workspace (other dtypes, transposed Conv1D
    weights).
    """
    weights = [weight_matrix(b) for b in balances]
    w_mean = weight_means(weights, effective_group_size(weights[0].shape[1], group_size))  # before the copies
    originals = [w.detach().clone() for w in weights]
    reference = ActivationStore() if reference is None else reference
    elements = 0
    for output in run_parent():
        reference.append(output)
        elements += output.numel()
    workspace = candidate_workspace(weights)
    best: tuple[float, torch.Tensor | None, float] = (float("inf"), None, -1.0)
    try:
        for ratio, duo in scale_grid(n_grid, duo_scaling):
            scales = candidate_scales(x_mean, w_mean, ratio, duo)
            for layer, w in zip(balances, originals):
                write_candidate(weight_matrix(layer), w, scales, workspace, bits, group_size, denominator)
            error = sum(((o.float() - r.float()) ** 2).sum() for o, r in zip(run_parent(), reference)).item()
            error /= elements
            if error < best[0]:
                best = (error, scales.clone(), ratio)
    finally:
        for layer, w in zip(balances, originals):
            weight_matrix(layer).copy_(w)
        reference.close()
    if best[1] is None:
        raise ValueError("AWQ: no finite output error in the scale search (NaN in the parent's outputs?)")
    return best[1], best[2]


def write_candidate(
    weight: torch.Tensor,
    original: torch.Tensor,
    scales: torch.Tensor,
    workspace: torch.Tensor | None,
    bits: int,
    group_size: int,
    denominator: float | None,
) -> None:
    """weight ← Q(original·s)/s, a slice of rows at a time (Q's groups lie within rows): products and quotients in the
    scales' fp64, rounded to the weight's dtype, and Q in fp32 (as llm-compressor computes them), in the weight itself
    or, when it is not contiguous fp32, in `workspace` (a slice's worth of fp32)."""
    in_place = _in_place(weight)
    for rows in slices(*weight.shape):
        height = rows.stop - rows.start
        scaled = weight[rows] if in_place else workspace[: height * weight.shape[1]].view(height, -1)
        torch.mul(original[rows], scales, out=scaled)
        fake_quantize_(scaled, bits, group_size, denominator)
        if not in_place:
            weight[rows].copy_(scaled)
        weight[rows].div_(scales)


def _in_place(weight: torch.Tensor) -> bool:
    """True when a weight can be fake-quantized in its own memory (contiguous fp32)."""
    return weight.dtype == torch.float32 and weight.is_contiguous()


def candidate_workspace(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """One fp32 buffer holding a slice of rows of any of `weights` that cannot be fake-quantized in place, or None."""
    sizes = [(part.stop - part.start) * w.shape[1] for w in weights if not _in_place(w) for part in slices(*w.shape)]
    return torch.empty(max(sizes), dtype=torch.float32, device=weights[0].device) if sizes else None


def apply_scales(mapping: Mapping, scales: torch.Tensor) -> None:
    """Fold `scales` in: the smooth op's output divided by s, the balance layers' inputs multiplied by s."""
    smooth = mapping.smooth
    if smooth.weight.dim() == 1:  # a norm: y = norm(x) · (offset + w)
        smooth.weight.copy_((smooth.weight + mapping.offset) / scales - mapping.offset)
    else:
        tail = weight_matrix(smooth)[-len(scales) :]
        for rows in slices(*tail.shape):  # the scales are fp64: a slice at a time keeps the fp64 temporary small
            tail[rows].div_(scales[rows].view(-1, 1))
    if getattr(smooth, "bias", None) is not None:
        smooth.bias[-len(scales) :].div_(scales)
    for layer in mapping.balances:
        weight = weight_matrix(layer)
        for rows in slices(*weight.shape):
            weight[rows].mul_(scales.view(1, -1))


def search_clip(
    w: torch.Tensor,
    x: torch.Tensor,
    bits: int,
    group_size: int,
    denominator: float | None = None,
    n_grid: int = 20,
    max_shrink: float = 0.5,
) -> torch.Tensor:
    """Per-group clipping thresholds (rows, groups) minimising ‖Q(clip(W))x − Wx‖ per group over a shrink grid."""
    den = default_denominator(bits) if denominator is None else denominator
    amax = group_absmax(w, group_size)
    rows, groups = amax.shape
    grouped = w.float().reshape(rows, groups, -1)
    xg = x.reshape(-1, groups, grouped.shape[-1]).float()
    reference = torch.einsum("rgk,tgk->rgt", grouped, xg)
    best_max, best_err = amax.clone(), torch.full_like(amax, float("inf"))
    for i in range(int(max_shrink * n_grid)):
        max_val = amax * (1 - i / n_grid)
        step = absmax_scales(max_val, bits, den).unsqueeze(-1)
        clipped = torch.clamp(grouped, -max_val.unsqueeze(-1), max_val.unsqueeze(-1))
        quantized = round_to_codes(clipped, step, bits) * step
        err = (torch.einsum("rgk,tgk->rgt", quantized, xg) - reference).pow(2).mean(dim=-1)
        better = err < best_err
        best_err, best_max = torch.where(better, err, best_err), torch.where(better, max_val, best_max)
    return best_max


def mapping_calibration(
    block: nn.Module, mappings: list[Mapping], inputs: Iterable[BlockInput], store: Callable[[], ActivationStore]
) -> list[tuple[ActivationStore, torch.Tensor]]:
    """One pass of the block: per mapping, its parent's (args, kwargs) on every sample, kept in a new `store()`, and
    the mean |x| per input channel of its balance layers (|x| summed in fp32 a sample at a time, as llm-compressor
    does: no token matrix).
    """
    if not mappings:
        return []
    parents = {f"parent{i}": m.parent for i, m in enumerate(mappings)}
    firsts = {f"first{i}": m.balances[0] for i, m in enumerate(mappings)}
    cached = {name: store() for name in parents}
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(firsts, 0)

    def record(name: str, args: tuple, kwargs: dict) -> None:
        if name in cached:
            cached[name].append((args, kwargs))
            return
        x = args[0].abs().flatten(0, -2).float()
        sums[name] = sums[name] + x.sum(dim=0) if name in sums else x.sum(dim=0)
        counts[name] += x.shape[0]

    record_module_inputs(block, {**parents, **firsts}, inputs, record)
    if not all(counts.values()):
        raise ValueError(f"AWQ: no calibration input reached a balance layer of {type(block).__name__}")
    return [(cached[f"parent{i}"], sums[f"first{i}"] / counts[f"first{i}"]) for i in range(len(mappings))]


def first_input_rows(
    block: nn.Module, layers: dict[str, nn.Module], inputs: Iterable[BlockInput], rows: int
) -> dict[str, torch.Tensor]:
    """Per named layer, the first `rows` token rows it reads over the block's calibration inputs (fewer when there
    are fewer), from one pass of the unchanged block; once every layer has its rows, forward passes stop early."""
    taken: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    counts = dict.fromkeys(layers, 0)

    def record(name: str, args: tuple, _kwargs: dict) -> None:
        if min(counts.values()) >= rows:
            raise StopBlock
        if counts[name] < rows:
            x = args[0].reshape(-1, args[0].shape[-1])[: rows - counts[name]].clone()  # not a view of the sample
            taken[name].append(x)
            counts[name] += x.shape[0]

    record_module_inputs(block, layers, inputs, record)
    return {name: torch.cat(parts) for name, parts in taken.items()}


@dataclass
class AWQQuantizer(CalibratedQuantizer):
    """AWQ per decoder block: scale search per mapping, scales folded in, optional clip search; RTN once the block's
    smoothed, unquantized outputs have been passed to the next block (as llm-compressor and AutoAWQ do)."""

    n_grid: int = 20
    duo_scaling: bool = True
    clip: bool = False
    clip_tokens: int = 512

    def quantize_block(self, block: nn.Module, linears: dict[str, nn.Module], inputs: ActivationStore) -> None:
        mappings = block_mappings(block, linears)
        if mappings is None:
            self.fall_back(list(linears), "RTN", f"no AWQ layout for {type(block).__name__} blocks")
            mappings = []
        store = functools.partial(self.activation_store, inputs.device)
        calibration = mapping_calibration(block, mappings, inputs, store)
        for mapping in mappings:
            cached, x_mean = calibration.pop(0)
            release_freed_memory()
            scales, _ = search_scales(
                mapping.balances,
                lambda m=mapping, c=cached: (block_output(m.parent(*a, **k)) for a, k in c),
                x_mean,
                self.bits,
                self.group_size,
                self.denominator,
                self.n_grid,
                self.duo_scaling,
                reference=store(),
            )
            cached.close()  # this mapping's cached inputs are freed here
            apply_scales(mapping, scales)
        if self.clip:
            self._clip(block, linears, inputs)

    def finish_block(self, linears: dict[str, nn.Module]) -> None:
        """RTN on the smoothed layers, once the next block has been given this block's unquantized outputs."""
        for linear in linears.values():
            weight = weight_matrix(linear)
            weight.copy_(rtn_quantize(weight, self.bits, self.group_size, self.denominator))

    def _clip(self, block: nn.Module, linears: dict[str, nn.Module], inputs: ActivationStore) -> None:
        """Clip each weight group (except queries/keys, whose errors softmax amplifies) to its searched threshold,
        judged on the first `clip_tokens` token rows the layer reads."""
        chosen = {n: m for n, m in linears.items() if not n.endswith(QUERY_KEY_LAYERS)}
        seen = first_input_rows(block, chosen, inputs, self.clip_tokens)
        for name, linear in chosen.items():
            x = seen.pop(name)
            weight = weight_matrix(linear)
            max_val = search_clip(weight, x, self.bits, self.group_size, self.denominator).unsqueeze(-1)
            grouped = weight.reshape(max_val.shape[0], max_val.shape[1], -1)
            weight.copy_(torch.clamp(grouped, -max_val, max_val).reshape(weight.shape))
