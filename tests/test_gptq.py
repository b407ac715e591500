"""Specification of GPTQ (quant/gptq.py): its grid, Hessians, their inverse and the passes that collect them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from helpers import one_block_with_inputs
from qunlearn.errors import UserInputError
from qunlearn.quant import gptq, memory
from qunlearn.quant.base import record_module_inputs
from qunlearn.quant.gptq import (
    HessianAccumulator,
    gptq_quantize,
    hessian_passes,
    invert_hessian,
    pass_hessians,
    shared_input_groups,
)
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_codes, rtn_quantize

# --- GPTQ -----------------------------------------------------------------------------------------------


def correlated_inputs(tokens: int, width: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, width // 4, generator=gen) @ torch.randn(
        width // 4, width, generator=gen
    ) + 0.1 * torch.randn(tokens, width, generator=gen)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator()
    acc.add(x)
    return acc.hessian()


@pytest.mark.parametrize("options", [{}, {"act_order": True}, {"static_groups": False}, {"block_size": 16}])
def test_gptq_output_error_is_lower_than_rtn_on_the_same_grid(options):
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    x = correlated_inputs(512, 128, seed=2)
    rtn_error = torch.linalg.norm(x @ (w - rtn_quantize(w, 4, group_size=32)).T)
    gptq_error = torch.linalg.norm(x @ (w - gptq_quantize(w, hessian_of(x), 4, group_size=32, **options)).T)
    assert gptq_error < 0.8 * rtn_error


def test_gptq_with_static_groups_stays_on_the_rtn_grid():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    q = gptq_quantize(w, hessian_of(correlated_inputs(256, 64, seed=4)), 3, group_size=16)
    step = rtn_codes(w, 3, group_size=16)[1].repeat_interleave(16, dim=1)
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() >= -4 and codes.max() <= 3


def test_gptq_hessian_is_two_over_sequences_times_the_sum_of_xxt_over_tokens():
    acc = HessianAccumulator()
    acc.add(torch.tensor([[[1.0, 0.0], [1.0, 2.0]]]))  # one sequence of two tokens
    acc.add(torch.tensor([[0.0, 1.0]]))  # one sequence of one token (no batch dimension)
    expected = torch.tensor([[2.0, 2.0], [2.0, 5.0]])  # (2/2)·([[2, 2], [2, 4]] + [[0, 0], [0, 1]])
    assert torch.allclose(acc.hessian(), expected)  # up to fp32 rounding of √2·√2


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_dampened_inverse_in_the_hessians_own_memory():
    hessian = hessian_of(correlated_inputs(256, 32, seed=6))
    dampened = hessian + 0.01 * torch.mean(torch.diag(hessian)) * torch.eye(32)
    consumed = hessian.clone()
    inverse = invert_hessian(consumed, 0.01)
    factor = inverse.factor
    assert factor.data_ptr() == consumed.data_ptr()  # no second in×in matrix
    assert torch.equal(factor, torch.triu(factor))
    assert torch.allclose(factor.T @ factor, torch.linalg.inv(dampened), rtol=1e-3, atol=1e-5)
    assert inverse.perm is None and not inverse.dead.any()


def test_inverse_hessian_equals_the_out_of_place_calls_of_llm_compressor_bit_for_bit():
    hessian = hessian_of(correlated_inputs(256, 48, seed=7))
    expected = hessian.clone()
    torch.diagonal(expected).add_(0.01 * torch.mean(torch.diag(expected)))
    expected = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(expected)), upper=True)
    assert torch.equal(invert_hessian(hessian, 0.01).factor, expected)


def test_slices_cover_every_index_once_and_hold_at_most_the_element_budget(monkeypatch):
    monkeypatch.setattr(memory, "SLICE_ELEMENTS", 10)
    assert memory.slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]  # 3 rows of 3 ≤ 10 elements each
    assert memory.slices(2, 100) == [slice(0, 1), slice(1, 2)]  # wider than the budget: one index at a time


def test_act_order_permutes_the_hessian_in_place_a_slice_at_a_time(monkeypatch):
    monkeypatch.setattr(memory, "SLICE_ELEMENTS", 24)  # three rows of 8 per slice: slices end inside the matrix
    matrix = torch.arange(64.0).reshape(8, 8)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    expected = matrix[perm][:, perm]
    gptq.permute_in_place(matrix, perm)
    assert torch.equal(matrix, expected)


def test_hessian_sums_added_a_slice_of_rows_at_a_time_equal_the_whole_product(monkeypatch):
    x = correlated_inputs(300, 40, seed=8)
    rows = math.sqrt(2) * x
    whole = rows.T @ rows
    monkeypatch.setattr(memory, "SLICE_ELEMENTS", 7 * 40)  # 7 rows a slice: the last slice is short
    assert torch.equal(hessian_of(x), whole)


def test_gptq_zeroes_dead_columns():
    x = correlated_inputs(128, 16, seed=5)
    x[:, 3] = 0
    q = gptq_quantize(torch.randn(4, 16), hessian_of(x), 4, group_size=-1)
    assert torch.all(q[:, 3] == 0)


@torch.no_grad()
def test_layers_reading_the_same_input_share_one_hessian_from_a_pass_that_stops_after_them():
    block, linears, inputs = one_block_with_inputs()
    separate = {n: HessianAccumulator() for n in linears}
    record_module_inputs(block, linears, inputs, lambda name, args, _kw: separate[name].add(args[0]))
    own = {name: accumulator.hessian() for name, accumulator in separate.items()}
    groups = shared_input_groups(block, linears, inputs[0])
    assert [[n.removeprefix("model.layers.0.") for n in names] for names in groups] == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    mlp_calls = []
    block.mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))
    for groups_of_pass in ([groups[0]], groups[:2], groups[2:]):
        for names, shared in zip(groups_of_pass, pass_hessians(block, groups_of_pass, linears, inputs)):
            for name in names:
                assert torch.equal(shared, own[name])
    assert len(mlp_calls) == len(inputs)  # only the pass that reached gate/up and down ran the MLP


def test_gptq_hessian_passes_hold_no_more_than_the_largest_hessian_and_go_last_called_first():
    qkv, o, gate_up, down = ["q", "k", "v"], ["o"], ["gate", "up"], ["down"]
    widths = {"q": 4096, "k": 4096, "v": 4096, "o": 4096, "gate": 4096, "up": 4096, "down": 11008}  # Llama-2-7B
    assert hessian_passes([qkv, o, gate_up, down], widths) == [[down], [qkv, o, gate_up]]
    widths["down"] = 4096  # four equal Hessians: one each
    assert hessian_passes([qkv, o, gate_up, down], widths) == [[down], [gate_up], [o], [qkv]]


def test_gptq_names_a_projection_layer_its_block_never_calls():
    block, linears, inputs = one_block_with_inputs()
    block.unused_proj = nn.Linear(64, 64)
    linears["model.layers.0.unused_proj"] = block.unused_proj
    with pytest.raises(
        UserInputError, match="LlamaDecoderLayer's forward pass does not call model.layers.0.unused_proj"
    ):
        get_quantizer("gptq4", group_size=32).quantize_block(block, linears, inputs)


@torch.no_grad()
def test_gptq_quantizes_each_layer_with_its_own_hessian_of_one_pass_over_the_unquantized_block():
    block, linears, inputs = one_block_with_inputs()
    own = {name: HessianAccumulator() for name in linears}
    record_module_inputs(block, linears, inputs, lambda name, args, _kw: own[name].add(args[0]))
    expected = {name: gptq_quantize(m.weight, own[name].hessian(), 4, 32) for name, m in linears.items()}
    get_quantizer("gptq4", group_size=32).quantize_block(block, linears, inputs)
    for name, linear in linears.items():
        assert torch.equal(linear.weight, expected[name]), name


# --- on the tiny benchmark's model ----------------------------------------------------------------------


def test_gptq_on_the_tiny_model_keeps_every_weight_on_the_rtn_grid(tiny):
    model, tokenizer, texts = tiny
    quantized = get_quantizer("gptq3", n_samples=4, seq_len=64).quantize(copy.deepcopy(model), tokenizer, texts)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        before, after = model.get_submodule(name).weight, quantized.get_submodule(name).weight
        codes, step = rtn_codes(before, 3, group_size=-1)  # tiny rows are ≤ 176 wide: one group per row
        moved = after / step
        assert torch.allclose(moved, moved.round(), atol=1e-4) and moved.abs().max() <= 4
        assert not torch.equal(moved.round().to(torch.int8), codes)  # error feedback changed some codes
    assert torch.equal(quantized.lm_head.weight, model.lm_head.weight)
