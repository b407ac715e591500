"""Specification of the fidelity study's own helpers (benchmarks/fidelity.py, docs/fidelity.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

FIDELITY = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


def load_fidelity():
    """benchmarks/fidelity.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("fidelity", FIDELITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_matching_lr_puts_lr_times_512_at_half_the_median_4bit_step():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(4, 2, bias=False))
    with torch.no_grad():  # row absmax 8, 16, 24 | 32, 40 -> 4-bit steps 1..5, median 3
        model[0].weight.copy_(torch.tensor([[8.0, 0, 0, 0], [0, -16, 0, 0], [0, 0, 24, 0]]))
        model[1].weight.copy_(torch.tensor([[32.0, 0, 0, 0], [0, 0, 0, -40]]))
    assert load_fidelity().bf16_matching_lr(model, group_size=4) == 3 / 2 / 512
