"""Update-size diagnostics on hand-worked tensors: |Δw| / Δ₄ quantiles, weights kept in their bin, flips per type."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qunlearn.quant.diagnostics import (
    CHANGE_EDGES,
    combine_movements,
    histogram_quantile,
    update_size,
    update_size_reading,
    weight_movement,
)

# One group of four, absmax 1 -> 4-bit step 1/8; the second weight moves inside the zero bin (0.25 step), the third
# from code 2.5 (rounds to 2) to 2.75 (rounds to 3): one flip. Every value is exact in binary.
Q_START = [1.0, 0.03125, 0.3125, -0.40625]
Q_END = [1.0, 0.0, 0.34375, -0.40625]
# absmax 0.5 -> step 1/16; the second weight moves 1/64 = 0.25 step, from code 4 to 4.25 (still 4): no flip.
DOWN_START = [0.5, 0.25, 0.0, 0.0]
DOWN_END = [0.5, 0.265625, 0.0, 0.0]


class Block(nn.Module):
    def __init__(self, q: list[float], down: list[float]):
        super().__init__()
        self.q_proj, self.down_proj = nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.tensor([q]))
            self.down_proj.weight.copy_(torch.tensor([down]))


def _bin(value: float) -> int:
    return next(i for i in range(len(CHANGE_EDGES) - 1) if CHANGE_EDGES[i] <= value < CHANGE_EDGES[i + 1])


def test_weight_movement_counts_weights_kept_in_their_bin_and_bins_the_change():
    result = weight_movement(torch.tensor([Q_START]), torch.tensor([Q_END]), bits=4, group_size=4)
    assert result["moved"] == 2 and result["flips"] == 1 and result["moved_kept_code"] == 1
    hist = result["change_histogram"]
    assert sum(hist) == 2 and hist[_bin(0.25)] == 2


def test_histogram_quantile_interpolates_inside_the_bin():
    edges, counts = (0.0, 1.0, 10.0, 100.0, math.inf), [1, 2, 1, 0]
    assert histogram_quantile(counts, edges, 0.1) == pytest.approx(0.4)  # rank 0.4 of 1 in [0, 1): linear
    assert histogram_quantile(counts, edges, 0.5) == pytest.approx(10**0.5)  # rank 2: half way through [1, 10)
    assert histogram_quantile(counts, edges, 0.9) == pytest.approx(10 * 10**0.6)  # rank 3.6: 0.6 into [10, 100)
    assert histogram_quantile([0, 0, 0, 3], edges, 0.5) == 100.0  # the open last bin reads as its lower edge
    assert histogram_quantile([0, 0, 0, 0], edges, 0.5) is None


def test_combine_movements_adds_counts_and_weights_the_mean():
    a = {"weights": 4, "moved": 1, "flips": 0, "mean_change_in_steps": 0.1, "max_change_in_steps": 0.1, "h": [1, 0]}
    b = {"weights": 4, "moved": 3, "flips": 1, "mean_change_in_steps": 0.5, "max_change_in_steps": 0.9, "h": [1, 2]}
    total = combine_movements([a, b])
    assert total == {
        "weights": 8,
        "moved": 4,
        "flips": 1,
        "max_change_in_steps": 0.9,
        "h": [2, 2],
        "mean_change_in_steps": pytest.approx((0.1 + 3 * 0.5) / 4),
    }


def test_update_size_of_a_hand_worked_block():
    size = update_size(Block(Q_START, DOWN_START), Block(Q_END, DOWN_END), bits=4, group_size=4)
    overall = size["overall"]
    assert (overall["weights"], overall["moved"], overall["flips"], overall["moved_kept_code"]) == (8, 3, 1, 2)
    assert overall["moved_fraction"] == pytest.approx(3 / 8)
    assert overall["within_bin_fraction"] == pytest.approx(2 / 3)
    # every move is 0.25 of a 4-bit step: the quantiles land in 0.25's bin (bins are 12% wide)
    assert overall["median_change_in_steps"] == pytest.approx(0.25, rel=0.12)
    assert overall["p90_change_in_steps"] == pytest.approx(0.25, rel=0.12)
    assert size["by_type"]["q_proj"]["flip_fraction"] == pytest.approx(0.25)
    assert size["by_type"]["down_proj"]["flip_fraction"] == 0.0
    assert size["by_type"]["down_proj"]["moved"] == 1
    reading = update_size_reading(size)
    assert "4× smaller than the 4-bit step, but 33% of the moved weights leave their bin" in reading
    assert "expected to undo only part of them" in reading
    # only the down_proj move (0.25 step, code kept): every moved weight stays in its bin
    kept = update_size(Block(Q_START, DOWN_START), Block(Q_START, DOWN_END), bits=4, group_size=4)
    assert kept["overall"]["within_bin_fraction"] == 1.0
    assert update_size_reading(kept).endswith("4× smaller than the 4-bit step: quantization is expected to undo them.")


def test_update_size_reading_for_identical_and_for_large_updates():
    same = update_size(Block(Q_START, DOWN_START), Block(Q_START, DOWN_START), bits=4, group_size=4)
    assert same["overall"]["moved"] == 0 and same["overall"]["median_change_in_steps"] is None
    assert "identical" in update_size_reading(same)
    # the second weight jumps from code 0 to code 5 (5 steps): large relative to the step
    big = update_size(
        Block(Q_START, DOWN_START), Block([1.0, 0.625, 0.3125, -0.40625], DOWN_START), bits=4, group_size=4
    )
    assert big["overall"]["median_change_in_steps"] == pytest.approx(4.75, rel=0.12)
    assert "not expected to undo" in update_size_reading(big)
