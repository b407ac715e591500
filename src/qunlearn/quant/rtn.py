"""Round-to-nearest (RTN) absmax quantization on groups of a weight matrix's rows, as plain tensor functions.

The seed's grid: per group of `g` consecutive input weights of a row, `Δ = max|w| / 2^(N-1)` and
`Q(w) = Δ · clamp(round(w/Δ), -2^(N-1), 2^(N-1)-1)`. The denominator is a parameter so that other
libraries' conventions can be reproduced (llm-compressor uses `(2^N - 1)/2`, i.e. `amax / 7.5` at 4 bits).
"""

from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8


def code_range(bits: int) -> tuple[int, int]:
    """The signed integer range of an N-bit code: (-2^(N-1), 2^(N-1) - 1)."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be between {MIN_BITS} and {MAX_BITS}, got {bits}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def default_denominator(bits: int) -> float:
    """The seed's scale denominator 2^(N-1)."""
    code_range(bits)
    return float(2 ** (bits - 1))


def effective_group_size(columns: int, group_size: int) -> int:
    """The group size actually used: `group_size`, or the whole row when it is -1 or does not divide the row.

    Silent: quantizers report the layers that fell back to per-row scales once per run (`GridQuantizer`).
    """
    if group_size == -1 or group_size >= columns:
        return columns
    if group_size <= 0:
        raise ValueError(f"group_size must be positive or -1 (per row), got {group_size}")
    return columns if columns % group_size else group_size


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """View a 2-D weight in fp32 as (rows, groups, g)."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(w.shape)}")
    g = effective_group_size(w.shape[1], group_size)
    return w.float().reshape(w.shape[0], w.shape[1] // g, g)


def group_absmax(w: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """max|w| of every group, shape (rows, groups), as max(max w, -min w): no temporary |w| of w's size."""
    low, high = torch.aminmax(_grouped(w, group_size), dim=-1)
    return torch.maximum(high, low.neg())


def absmax_scales(absmax: torch.Tensor, bits: int, denominator: float | None = None) -> torch.Tensor:
    """Step sizes Δ = absmax / denominator (2^(N-1) by default)."""
    return absmax / (default_denominator(bits) if denominator is None else denominator)


def round_to_codes(x: torch.Tensor, step: torch.Tensor, bits: int, *, in_place: bool = False) -> torch.Tensor:
    """clamp(round(x/Δ), -2^(N-1), 2^(N-1)-1) as floats, `step` broadcast against `x`; where Δ = 0 the code is 0.

    One temporary of x's size, or none `in_place` (x is overwritten with the codes).
    """
    lo, hi = code_range(bits)
    safe = torch.where(step == 0, 1.0, step)
    return (x.div_(safe) if in_place else x / safe).round_().clamp_(lo, hi)


def codes_from_scales(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (int8, shape of `w`) for given per-group scales of shape (rows, groups)."""
    grouped = w.float().reshape(scales.shape[0], scales.shape[1], -1)
    return round_to_codes(grouped, scales.unsqueeze(-1), bits).reshape(w.shape).to(torch.int8)


def rtn_codes(
    w: torch.Tensor, bits: int, group_size: int = 128, denominator: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, same shape as `w`) and fp32 per-group scales (rows, groups) of `w`."""
    scales = absmax_scales(group_absmax(w, group_size), bits, denominator)
    return codes_from_scales(w, scales, bits), scales


def fake_quantize_(w: torch.Tensor, bits: int, group_size: int = 128, denominator: float | None = None) -> torch.Tensor:
    """Overwrite a contiguous fp32 weight matrix with Δ · code of `rtn_codes(w)`, with no temporary of its size."""
    if w.dtype != torch.float32 or not w.is_contiguous():
        raise ValueError(f"fake_quantize_ works on a contiguous fp32 matrix, got {w.dtype} with strides {w.stride()}")
    scales = absmax_scales(group_absmax(w, group_size), bits, denominator).unsqueeze(-1)
    round_to_codes(_grouped(w, group_size), scales, bits, in_place=True).mul_(scales)
    return w


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int = 128, denominator: float | None = None) -> torch.Tensor:
    """Fake-quantized (dequantized) `w` on the RTN grid, computed in one fp32 copy and returned in `w`'s dtype."""
    work = w.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return fake_quantize_(work, bits, group_size, denominator).to(w.dtype)
