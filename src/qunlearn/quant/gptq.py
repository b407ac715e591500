"""GPTQ (Frantar et al. 2023) on the RTN grid: column-by-column quantization with Hessian-weighted error feedback."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qunlearn.errors import NumericalError
from qunlearn.quant.base import BlockInput, CalibratedQuantizer, record_module_inputs
from qunlearn.quant.layers import weight_matrix
from qunlearn.quant.rtn import (
    absmax_scales,
    default_denominator,
    effective_group_size,
    group_absmax,
    round_to_codes,
    rtn_quantize,
)

# A Hessian that Cholesky rejects is retried with the dampening multiplied by these; then the layer gets RTN.
DAMP_RETRY_FACTORS = (10.0, 100.0)


class HessianAccumulator:
    """Accumulates H = (2/N)·Σ xxᵀ over the N input rows (tokens) a Linear layer sees, in fp32, in place."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs (..., in_features)."""
        rows = x.reshape(-1, x.shape[-1]).float()
        if self.sums is None:
            self.sums = rows.T @ rows
        else:
            self.sums += rows.T @ rows
        self.count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """(2/N)·Σ xxᵀ, scaled in place: the accumulator is used up (no second in×in matrix)."""
        if self.sums is None:
            raise ValueError("GPTQ: no calibration input reached this layer")
        hessian, self.sums = self.sums.mul_(2.0 / self.count), None
        return hessian


def upper_cholesky_of_inverse(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹; dampens `hessian` in place, and keeps at most two
    in×in matrices besides it alive (down_proj of a 7B model: 485 MB each)."""
    hessian.diagonal().add_(damp * torch.mean(torch.diag(hessian)))
    try:
        factor = torch.linalg.cholesky(hessian)
        factor = torch.cholesky_inverse(factor)
        return torch.linalg.cholesky(factor, upper=True)
    except torch.linalg.LinAlgError:
        raise NumericalError(f"GPTQ: Hessian not positive definite with dampening {damp}") from None


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
    """Fake-quantized `w` (out × in) by GPTQ with input Hessian `hessian` (in × in), returned in `w`'s dtype.

    Static groups take each group's scale from the original weights (so the grid equals RTN's); dynamic
    groups take it from the error-updated weights when the group's first column is reached. Dead input
    columns (zero Hessian diagonal) are set to zero. With `act_order`, columns go in decreasing diag(H).
    """
    weight = w.detach().float().clone()
    columns = weight.shape[1]
    g = effective_group_size(columns, group_size)
    den = default_denominator(bits) if denominator is None else denominator
    scales = absmax_scales(group_absmax(weight, g), bits, denominator)
    hessian = hessian.float().clone()
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    group_of = torch.arange(columns, device=weight.device) // g
    perm = torch.argsort(torch.diag(hessian), descending=True) if act_order else None
    if perm is not None:
        weight, hessian = weight[:, perm], hessian[perm][:, perm]
        group_of = group_of[perm] if static_groups else group_of
    hinv = upper_cholesky_of_inverse(hessian, damp)
    del hessian  # our dampened copy; the caller's stays intact for a retry
    quantized = torch.zeros_like(weight)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        block = weight[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % g == 0:
                current = torch.cat([block[:, i:], weight[:, i2:]], dim=1)[:, :g]
                scales[:, group_of[col]] = current.abs().amax(dim=1) / den
            step = scales[:, group_of[col]]
            q = round_to_codes(block[:, i], step, bits) * step
            quantized[:, col] = q
            err = (block[:, i] - q) / hinv[col, col]
            block[:, i:] -= err.unsqueeze(1) * hinv[col, col:i2].unsqueeze(0)
            errors[:, i] = err
        weight[:, i2:] -= errors @ hinv[i1:i2, i2:]
    if perm is not None:
        quantized = quantized[:, torch.argsort(perm)]
    return quantized.to(w.dtype)


@dataclass
class GPTQQuantizer(CalibratedQuantizer):
    """GPTQ per decoder block: Hessians from one pass of the block's inputs, then every selected layer quantized.

    A layer whose damped Hessian is not positive definite is retried with more dampening, then quantized by
    RTN (as llm-compressor does); each such layer is recorded in `fallbacks`.
    """

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    static_groups: bool = True

    def quantize_block(self, block: nn.Module, linears: dict[str, nn.Module], inputs: list[BlockInput]) -> None:
        seen = {name: HessianAccumulator() for name in linears}
        record_module_inputs(block, linears, inputs, lambda name, args, _kwargs: seen[name].add(args[0]))
        for name, linear in linears.items():
            weight = weight_matrix(linear)
            weight.copy_(self._quantize_layer(name, weight, seen.pop(name).hessian()))

    def _quantize_layer(self, name: str, weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
        """GPTQ at the set dampening, else at the first larger one that works, else RTN (recording the fallback)."""
        for damp in (self.damp, *(self.damp * f for f in DAMP_RETRY_FACTORS)):
            try:
                quantized = gptq_quantize(
                    weight,
                    hessian,
                    self.bits,
                    self.group_size,
                    self.denominator,
                    self.block_size,
                    damp,
                    self.act_order,
                    self.static_groups,
                )
            except NumericalError:
                continue
            if damp != self.damp:
                self.fall_back(
                    [name], f"dampening {damp:g}", f"Hessian not positive definite at dampening {self.damp:g}"
                )
            return quantized
        self.fall_back([name], "RTN", f"Hessian not positive definite up to dampening {damp:g}")
        return rtn_quantize(weight, self.bits, self.group_size, self.denominator)
