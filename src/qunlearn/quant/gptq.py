"""GPTQ (Frantar et al. 2023) on the RTN grid: column-by-column quantization with Hessian-weighted error feedback."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from qunlearn.errors import NumericalError, UserInputError
from qunlearn.quant.activations import ActivationStore
from qunlearn.quant.base import BlockInput, CalibratedQuantizer, StopBlock, record_module_inputs
from qunlearn.quant.layers import in_features, weight_matrix
from qunlearn.quant.memory import release_freed_memory, slices
from qunlearn.quant.rtn import (
    absmax_scales,
    default_denominator,
    effective_group_size,
    group_absmax,
    round_to_codes,
    rtn_quantize,
)


class HessianAccumulator:
    """Accumulates H = (2/S)·Σ xxᵀ over the S calibration sequences a Linear layer sees, in fp32, in place.

    The sum runs over every token row x; dividing by sequences rather than tokens and scaling x by √2 before the
    product follow the reference GPTQ code and llm-compressor, so that both compute the same Hessians (GPTQ itself
    is invariant to H's scale). The product is added a slice of rows at a time: each slice is the same dot
    products as the whole product (bit-identical with PyTorch's CPU BLAS, tested), without its in×in temporary.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.sequences = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the inputs of a batch of sequences (batch, tokens, in_features), or of one sequence (tokens, in)."""
        self.sequences += x.shape[0] if x.dim() > 2 else 1
        rows = math.sqrt(2) * x.reshape(-1, x.shape[-1]).float()
        width = rows.shape[1]
        if self.sums is None:
            self.sums = torch.zeros(width, width, device=rows.device)
        parts = slices(width, width)
        product = torch.empty(parts[0].stop, width, device=rows.device)  # one buffer for every slice
        for part in parts:
            taken = product[: part.stop - part.start]
            torch.matmul(rows[:, part].T, rows, out=taken)
            self.sums[part] += taken

    def hessian(self) -> torch.Tensor:
        """(2/S)·Σ xxᵀ, scaled in place: the accumulator is used up (no second in×in matrix)."""
        if self.sums is None:
            raise ValueError("GPTQ: no calibration input reached this layer")
        hessian, self.sums = self.sums.div_(self.sequences), None
        return hessian


def shared_input_groups(block: nn.Module, linears: dict[str, nn.Module], sample: BlockInput) -> list[list[str]]:
    """The layers of `linears` in the order one forward pass of `block` calls them, grouped by the input they read:
    a layer joins the group of the layer called just before it when both received the very same tensor (q/k/v share
    one, gate/up another). A layer the block never calls, or calls twice, is an error naming it."""
    groups: list[list[str]] = []
    last: list[torch.Tensor | None] = [None]

    def record(name: str, args: tuple, _kwargs: dict) -> None:
        if any(name in group for group in groups):
            raise UserInputError(f"GPTQ: {type(block).__name__} calls {name} more than once per forward pass")
        if last[0] is args[0]:
            groups[-1].append(name)
        else:
            groups.append([name])
        last[0] = args[0]

    record_module_inputs(block, linears, [sample], record)
    missing = [name for name in linears if not any(name in group for group in groups)]
    if missing:
        raise UserInputError(f"GPTQ: {type(block).__name__}'s forward pass does not call {missing[0]}")
    return groups


def hessian_passes(groups: list[list[str]], widths: dict[str, int]) -> list[list[list[str]]]:
    """The groups (in call order) split into passes over the block, last-called first: each pass a run of consecutive
    groups whose Hessians together hold no more elements than the largest one alone (`widths`: input width per layer).

    For Llama-2-7B: down_proj's 11008² alone, then q/k/v, o and gate/up (3 × 4096²) in one pass.
    """
    budget = max(widths[group[0]] ** 2 for group in groups)
    passes: list[list[list[str]]] = [[]]
    held = 0
    for group in reversed(groups):
        size = widths[group[0]] ** 2
        if passes[-1] and held + size > budget:
            passes.append([])
            held = 0
        passes[-1].insert(0, group)
        held += size
    return passes


def pass_hessians(
    block: nn.Module, groups: list[list[str]], linears: dict[str, nn.Module], inputs: Iterable[BlockInput]
) -> list[torch.Tensor]:
    """The Hessian of each group of layers sharing an input, from one pass of the block over its calibration inputs
    that stops at the last group's last layer (the layers called later cannot change what the groups see)."""
    accumulators = {group[0]: HessianAccumulator() for group in groups}
    leader_of = {name: group[0] for group in groups for name in group}
    shared: dict[str, torch.Tensor] = {}

    def record(name: str, args: tuple, _kwargs: dict) -> None:
        leader = leader_of[name]
        if name == leader:
            accumulators[leader].add(args[0])
            shared[leader] = args[0]
        elif args[0] is not shared[leader]:
            raise RuntimeError(f"GPTQ: {name} no longer reads the same input as {leader}")
        if name == groups[-1][-1]:
            shared.clear()
            raise StopBlock

    record_module_inputs(block, {name: linears[name] for name in leader_of}, inputs, record)
    return [accumulators.pop(group[0]).hessian() for group in groups]


@dataclass
class InverseHessian:
    """What GPTQ needs from a layer's Hessian: the upper Cholesky factor of its dampened inverse (column-major, as
    LAPACK writes it), the dead input columns (zero Hessian diagonal), the column order (act-order permutation or None).
    """

    factor: torch.Tensor
    dead: torch.Tensor
    perm: torch.Tensor | None


@torch.no_grad()
def invert_hessian(hessian: torch.Tensor, damp: float = 0.01, act_order: bool = False) -> InverseHessian:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, computed in `hessian`'s own memory (H is consumed).

    Each factorisation writes into the column-major view of the symmetric H, so one in×in matrix is alive where
    out-of-place calls need two; the factor equals llm-compressor's bit for bit. Raises NumericalError when
    H + λ·mean(diag H)·I is not positive definite (its layers then get RTN, as in llm-compressor).
    """
    diag = hessian.diagonal()
    dead = diag == 0
    diag[dead] = 1
    perm = torch.argsort(diag, descending=True) if act_order else None
    if perm is not None:
        permute_in_place(hessian, perm)
    diag.add_(damp * torch.mean(torch.diag(hessian)))  # mean of a contiguous copy: the view sums in another order
    column_major = hessian.mT
    info = torch.empty((), dtype=torch.int32, device=hessian.device)
    torch.linalg.cholesky_ex(column_major, out=(column_major, info))
    if int(info) != 0:
        raise NumericalError(f"GPTQ: Hessian not positive definite with dampening {damp:g}")
    torch.cholesky_inverse(column_major, out=column_major)
    torch.linalg.cholesky_ex(column_major, upper=True, out=(column_major, info))
    if int(info) != 0:
        raise NumericalError(f"GPTQ: inverse Hessian not positive definite with dampening {damp:g}")
    return InverseHessian(column_major, dead, perm)


def permute_in_place(matrix: torch.Tensor, perm: torch.Tensor) -> None:
    """Overwrite a square `matrix` with matrix[perm][:, perm], a slice at a time (no second matrix)."""
    for rows in slices(*matrix.shape):  # columns, within each slice of rows
        matrix[rows] = matrix[rows][:, perm]
    for columns in slices(*matrix.shape):  # then rows, within each slice of columns
        matrix[:, columns] = matrix[:, columns][perm]


@torch.no_grad()
def quantize_columns(
    w: torch.Tensor,
    inverse: InverseHessian,
    bits: int,
    group_size: int = 128,
    denominator: float | None = None,
    block_size: int = 128,
    static_groups: bool = True,
) -> torch.Tensor:
    """GPTQ's column sweep: fake-quantized `w` (out × in) in `w`'s dtype, given its layer's inverse Hessian.

    Static groups take each group's scale from the original weights (so the grid equals RTN's); dynamic
    groups take it from the error-updated weights when the group's first column is reached. Dead input
    columns are set to zero. The quantized values overwrite one fp32 working copy of `w`; the error feedback to
    later columns is added in place (`addmm_`), which on CPU is bit-identical to llm-compressor's `W -= E·H⁻¹`.
    """
    weight = w.detach().to(torch.float32, copy=True)  # one copy, whatever the dtype (.float().clone() makes two)
    columns = weight.shape[1]
    g = effective_group_size(columns, group_size)
    den = default_denominator(bits) if denominator is None else denominator
    scales = absmax_scales(group_absmax(weight, g), bits, denominator)
    weight[:, inverse.dead] = 0
    group_of = torch.arange(columns, device=weight.device) // g
    if inverse.perm is not None:
        weight = weight[:, inverse.perm]
        group_of = group_of[inverse.perm] if static_groups else group_of
    group_of = group_of.tolist()
    hinv = inverse.factor
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        local = hinv[i1:i2, i1:i2].contiguous()  # read by rows below: row-major is twice as fast
        block = weight[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % g == 0:
                current = torch.cat([block[:, i:], weight[:, i2:]], dim=1)[:, :g]
                scales[:, group_of[col]] = current.abs().amax(dim=1) / den
            step = scales[:, group_of[col]]
            q = round_to_codes(block[:, i], step, bits) * step
            err = (block[:, i] - q) / local[i, i]
            block[:, i:] -= err.unsqueeze(1) * local[i, i:].unsqueeze(0)
            block[:, i] = q  # the column is final: keep its quantized value where the working weight was
            errors[:, i] = err
        weight[:, i1:i2] = block
        weight[:, i2:].addmm_(errors, hinv[i1:i2, i2:], alpha=-1)
    if inverse.perm is not None:
        weight = weight[:, torch.argsort(inverse.perm)]
    return weight.to(w.dtype)


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int = 128,
    denominator: float | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool = True,
) -> torch.Tensor:
    """Fake-quantized `w` (out × in) by GPTQ with input Hessian `hessian` (in × in, left intact), in `w`'s dtype.

    With `act_order`, columns go in decreasing diag(H). See `quantize_columns` for the grid.
    """
    inverse = invert_hessian(hessian.to(torch.float32, copy=True), damp, act_order)
    return quantize_columns(w, inverse, bits, group_size, denominator, block_size, static_groups)


@dataclass
class GPTQQuantizer(CalibratedQuantizer):
    """GPTQ per decoder block: every selected layer quantized with the Hessian of its unquantized block's inputs.

    Layers reading the same input (q/k/v, gate/up) share one Hessian and its inverse. The Hessians are built in passes
    of the block, last-called layers first (`hessian_passes`), each pass stopped after its layers, so that no more
    Hessian memory than the largest one's is alive: a layer called later cannot change an earlier layer's input, so the
    Hessians equal those of one pass over the unquantized block (as in llm-compressor), bit for bit, for part of an
    extra forward pass per block (Llama: up to gate/up). When the dampened Hessian is not positive definite its
    layers get RTN (as in llm-compressor), recorded in `fallbacks`: the factorisation works in the Hessian's own
    memory, so there is no copy left to retry with more dampening.
    """

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = True

    def quantize_block(self, block: nn.Module, linears: dict[str, nn.Module], inputs: ActivationStore) -> None:
        groups = shared_input_groups(block, linears, inputs[0])
        for groups_of_pass in hessian_passes(groups, {name: in_features(layer) for name, layer in linears.items()}):
            hessians = pass_hessians(block, groups_of_pass, linears, inputs)
            release_freed_memory()  # the forward passes' temporaries, before the inversions
            for names in reversed(groups_of_pass):
                self._quantize_group(names, hessians.pop(), linears)

    def _quantize_group(self, names: list[str], hessian: torch.Tensor, linears: dict[str, nn.Module]) -> None:
        """Quantize a group of layers sharing `hessian` (consumed: the inverse is computed in its memory)."""
        inverse = self._invert(names, hessian)
        for name in names:
            weight = weight_matrix(linears[name])
            if inverse is None:
                weight.copy_(rtn_quantize(weight, self.bits, self.group_size, self.denominator))
            else:
                weight.copy_(
                    quantize_columns(
                        weight,
                        inverse,
                        self.bits,
                        self.group_size,
                        self.denominator,
                        self.block_size,
                        self.static_groups,
                    )
                )

    def _invert(self, names: list[str], hessian: torch.Tensor) -> InverseHessian | None:
        """The inverse Hessian of a group of layers, or None (recorded) when it has none: they get RTN."""
        try:
            return invert_hessian(hessian, self.damp, self.act_order)
        except NumericalError:
            self.fall_back(names, "RTN", f"Hessian not positive definite at dampening {self.damp:g}")
            return None
