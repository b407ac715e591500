"""Specification of quant/: the RTN grid, GPTQ, AWQ, bitsandbytes, the registry, code flips and the CLI."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from qunlearn.cli import main
from qunlearn.errors import NumericalError, UserInputError
from qunlearn.fileio import read_json, read_yaml
from qunlearn.models.io import load_model, save_model
from qunlearn.quant import gptq, memory
from qunlearn.quant.activations import ActivationStore
from qunlearn.quant.awq import (
    apply_scales,
    candidate_workspace,
    first_input_rows,
    mapping_calibration,
    search_scales,
    weight_means,
    write_candidate,
)
from qunlearn.quant.awq_layouts import block_mappings
from qunlearn.quant.base import CalibratedQuantizer, block_output, capture_block_inputs, record_module_inputs
from qunlearn.quant.bnb import BnbQuantizer, bnb_unavailable_reason
from qunlearn.quant.calibration import calibration_sequences, calibration_texts
from qunlearn.quant.diagnostics import code_flips, weight_movement
from qunlearn.quant.gptq import (
    HessianAccumulator,
    gptq_quantize,
    hessian_passes,
    invert_hessian,
    pass_hessians,
    shared_input_groups,
)
from qunlearn.quant.layers import decoder_layers
from qunlearn.quant.registry import QUANTIZERS, get_quantizer
from qunlearn.quant.rtn import fake_quantize_, rtn_codes, rtn_quantize


def row(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


# --- RTN: the seed's grid -------------------------------------------------------------------------------


def test_seed_example_step_sizes():
    w = row(200.0, -100.0, 37.4, 0.0)
    assert rtn_codes(w, 4, group_size=4)[1].item() == 25.0  # 200 / 2^3
    assert rtn_codes(w, 8, group_size=4)[1].item() == 1.5625  # 200 / 2^7


def test_positive_maximum_is_clamped_to_the_top_code():
    codes, _ = rtn_codes(row(200.0, -100.0, 37.4, 0.0), 4, group_size=4)
    assert codes.tolist() == [[7, -4, 1, 0]]  # 200/25 = 8 → clamped to 2^3 - 1
    assert rtn_quantize(row(200.0, -100.0, 37.4, 0.0), 4, group_size=4).tolist() == [[175.0, -100.0, 25.0, 0.0]]


def test_negative_maximum_is_exact():
    assert rtn_quantize(row(-200.0, 100.0, 12.4, 13.0), 4, group_size=4).tolist() == [[-200.0, 100.0, 0.0, 25.0]]


def test_all_zero_group_stays_zero_and_groups_are_independent():
    w = row(0.0, 0.0, 0.0, 0.0, 8.0, 3.0, -1.0, 0.9)
    codes, scales = rtn_codes(w, 4, group_size=4)
    assert scales.tolist() == [[0.0, 1.0]]
    assert codes.tolist() == [[0, 0, 0, 0, 7, 3, -1, 1]]
    assert rtn_quantize(w, 4, group_size=4).tolist() == [[0.0, 0.0, 0.0, 0.0, 7.0, 3.0, -1.0, 1.0]]


def test_per_row_mode_and_non_dividing_group_fall_back_to_one_scale_per_row():
    w = row(16.0, 1.0, 2.0, -3.0, 4.0, 5.0)
    assert rtn_codes(w, 4, group_size=-1)[1].tolist() == [[2.0]]
    assert rtn_codes(w, 4, group_size=4)[1].tolist() == [[2.0]]


def test_denominator_reproduces_the_amax_over_7_5_convention():
    _, scales = rtn_codes(row(15.0, 1.0), 4, group_size=2, denominator=7.5)
    assert scales.item() == 2.0


@pytest.mark.parametrize("bits", range(2, 9))
def test_codes_fit_in_n_bits_and_dequantized_weights_lie_on_the_grid(bits):
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(bits))
    codes, scales = rtn_codes(w, bits)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    assert scales.shape == (16, 2)
    q = rtn_quantize(w, bits)
    assert torch.equal(q, (codes.float().reshape(16, 2, 128) * scales.unsqueeze(-1)).reshape(16, 256))
    assert (q - w).abs().max() <= scales.max() * (1 + 1e-5)  # within one step (the clamped maximum)


def test_any_dtype_in_same_dtype_out():
    w = torch.randn(4, 128).to(torch.bfloat16)
    assert rtn_quantize(w, 4).dtype == torch.bfloat16


def test_fake_quantize_in_place_equals_rtn_and_refuses_what_it_cannot_overwrite():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(9))
    expected = rtn_quantize(w, 3, group_size=16)
    target = w.clone()
    assert fake_quantize_(target, 3, group_size=16) is target and torch.equal(target, expected)
    assert torch.equal(rtn_quantize(w.T.contiguous().T, 3, group_size=16), expected)  # a transposed view is copied
    with pytest.raises(ValueError, match="contiguous fp32"):
        fake_quantize_(w.T.contiguous().T, 3, group_size=16)  # a reshape of it is a copy: in place would round that
    with pytest.raises(ValueError, match="contiguous fp32"):
        fake_quantize_(w.bfloat16(), 3, group_size=16)


def test_bits_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="between 2 and 8"):
        rtn_codes(torch.ones(1, 4), 9, group_size=4)


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


def one_block_with_inputs() -> tuple[nn.Module, dict[str, nn.Module], list]:
    """A random Llama's only decoder block, its Linear layers by full name, and its inputs for 4 random sequences."""
    model = random_llama(layers=1)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    block = model.model.layers[0]
    linears = {f"model.layers.0.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    inputs = ActivationStore(device="cpu")
    capture_block_inputs(model, model.model.layers, list(ids.split(1)), inputs, ActivationStore(device="cpu"))
    return block, linears, inputs


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


# --- where calibration activations wait -------------------------------------------------------------------


@pytest.mark.parametrize("offload", ["none", "cpu", "disk"])
def test_activation_store_hands_back_what_it_was_given(offload):
    store = ActivationStore(offload, device="cpu")
    items = [(torch.randn(1, 4, 8), {"mask": torch.ones(4), "flag": True, "none": None}) for _ in range(3)]
    for item in items:
        store.append(item)
    store[1] = (torch.zeros(1, 4, 8), items[1][1])
    items[1] = (torch.zeros(1, 4, 8), items[1][1])
    assert len(store) == 3
    for (hidden, kwargs), (want_hidden, want_kwargs) in zip(store, items):
        assert torch.equal(hidden, want_hidden) and torch.equal(kwargs["mask"], want_kwargs["mask"])
        assert (kwargs["flag"], kwargs["none"]) == (True, None)
    store.close()
    assert len(store) == 0


def test_disk_store_writes_a_views_own_elements_and_removes_its_files(tmp_path):
    store = ActivationStore("disk")
    big = torch.randn(1000, 100)
    store.append(big[:2])  # a view of 100,000 floats holding 200
    (path,) = list(Path(store._directory.name).iterdir())
    assert path.stat().st_size < 20_000
    assert torch.equal(store[0], big[:2])
    store.close()
    assert not path.parent.exists()


@pytest.mark.parametrize("scheme", ["gptq4", "awq4"])
@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_offloading_calibration_activations_changes_no_weight(tiny, scheme, offload):
    model, tokenizer, texts = tiny
    options = {"n_samples": 3, "seq_len": 32, "group_size": 16}
    kept = get_quantizer(scheme, **options).quantize(copy.deepcopy(model), tokenizer, texts)
    offloaded = get_quantizer(scheme, offload_activations=offload, **options).quantize(
        copy.deepcopy(model), tokenizer, texts
    )
    for name, weight in kept.state_dict().items():
        assert torch.equal(offloaded.state_dict()[name], weight), name


@pytest.mark.parametrize("scheme", ["gptq4", "awq4"])
def test_calibration_runs_without_dropout_and_leaves_the_models_mode_as_it_was(tiny, scheme):
    _, tokenizer, texts = tiny
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    model = GPT2LMHeadModel(config).train()  # dropout 0.1 everywhere
    runs = [
        get_quantizer(scheme, n_samples=2, seq_len=32, group_size=16).quantize(copy.deepcopy(model), tokenizer, texts)
        for _ in range(2)
    ]
    assert all(run.training for run in runs)
    for name, weight in runs[0].state_dict().items():
        assert torch.equal(runs[1].state_dict()[name], weight), name


def test_an_unknown_offload_place_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="gptq4: offload_activations must be one of none, cpu, disk, got 'gpu'"):
        get_quantizer("gptq4", offload_activations="gpu")


# --- AWQ ------------------------------------------------------------------------------------------------


def test_awq_scales_lower_output_error_with_salient_input_channels():
    gen = torch.Generator().manual_seed(6)
    layer = nn.Linear(64, 32, bias=False)
    layer.weight.data = torch.randn(32, 64, generator=gen)
    x = torch.randn(256, 64, generator=gen)
    x[:, :4] *= 30  # a few salient channels
    original = layer.weight.detach().clone()
    with torch.no_grad():
        reference = layer(x)
        scales, ratio = search_scales([layer], lambda: [layer(x)], x.abs().mean(0), 4, 32)
        awq_out = (x / scales) @ rtn_quantize(layer.weight * scales, 4, 32).T
        rtn_out = x @ rtn_quantize(layer.weight, 4, 32).T
    assert ratio > 0
    assert torch.equal(layer.weight, original)  # weights restored after the search
    assert (awq_out - reference).norm() < 0.9 * (rtn_out - reference).norm()


@pytest.mark.parametrize("kind", ["fp32", "bf16", "transposed"])
def test_awq_candidates_are_written_a_slice_of_rows_at_a_time_as_q_of_w_times_s_over_s(monkeypatch, kind):
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(10, 64, generator=gen)
    weight = {"fp32": base.clone(), "bf16": base.bfloat16(), "transposed": base.T.contiguous().T}[kind]
    original, scales = weight.clone(), torch.rand(64, generator=gen, dtype=torch.float64) + 0.5
    # Products and quotients in fp64, Q in fp32, each result rounded to the weight's dtype (llm-compressor's order).
    quantized = rtn_quantize((original.double() * scales).float(), 4, 32).to(weight.dtype)
    expected = (quantized.double() / scales).to(weight.dtype)
    monkeypatch.setattr(memory, "SLICE_ELEMENTS", 3 * 64)  # 3 rows a slice: the last slice is short
    workspace = candidate_workspace([weight])
    assert workspace is None if kind == "fp32" else workspace.numel() == 3 * 64  # fp32 rows are quantized in place
    write_candidate(weight, original, scales, workspace, 4, 32, None)
    assert torch.equal(weight, expected)


def test_awq_weight_means_are_the_mean_over_all_rows_of_weights_normalised_by_their_group_absmax():
    first = torch.tensor([[1.0, -2.0], [4.0, 1.0]])  # group size 2: row maxima 2 and 4
    second = torch.tensor([[0.0, 3.0]])
    means = weight_means([first, second], group_size=2)
    assert means.dtype == torch.float64  # as llm-compressor: the scales built from them are fp64 too
    # rows normalised: [0.5, 1], [1, 0.25], [0, 1] → column means 0.5 and 0.75 (up to the +1e-6 guard)
    assert torch.allclose(means, torch.tensor([0.5, 0.75], dtype=torch.float64), rtol=1e-5)


@torch.no_grad()
def test_awq_calibration_keeps_a_parent_call_per_sample_and_the_mean_abs_input_of_its_balance_layers():
    block, linears, inputs = one_block_with_inputs()
    mappings = block_mappings(block, linears)
    seen = {}
    record_module_inputs(
        block, linears, inputs, lambda name, args, _kw: seen.setdefault(name, []).append(args[0].flatten(0, -2))
    )
    calibration = mapping_calibration(block, mappings, inputs, ActivationStore)
    assert len(calibration) == len(mappings) == 4  # norm → q/k/v, v → o, norm → gate/up, up → down
    for (cached, x_mean), first in zip(
        calibration, ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
    ):
        assert len(cached) == len(inputs)
        tokens = torch.cat(seen[f"model.layers.0.{first}"])
        assert torch.allclose(x_mean, tokens.abs().mean(dim=0), rtol=1e-6)


@torch.no_grad()
def test_awq_clip_search_reads_the_first_rows_each_layer_sees_and_stops_passes_once_it_has_them():
    block, linears, inputs = one_block_with_inputs()  # 4 samples of 16 tokens
    chosen = {n: m for n, m in linears.items() if n.endswith(("o_proj", "down_proj"))}
    seen = {}
    record_module_inputs(
        block, chosen, inputs, lambda name, args, _kw: seen.setdefault(name, []).append(args[0].flatten(0, -2))
    )
    mlp_calls = []
    block.mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))
    rows = first_input_rows(block, chosen, inputs, 20)
    for name in chosen:
        assert torch.equal(rows[name], torch.cat(seen[name])[:20])
    assert len(mlp_calls) == 2  # samples 3 and 4 stop at o_proj: both layers had their 20 rows


def test_awq_clip_search_leaves_queries_and_keys_alone_and_clips_other_layers(tiny):
    model, tokenizer, texts = tiny
    runs = {
        clip: get_quantizer("awq4", n_samples=2, seq_len=32, group_size=16, clip=clip)
        .quantize(copy.deepcopy(model), tokenizer, texts)
        .model.layers[0]
        for clip in (False, True)
    }
    linears = [n for n, m in runs[False].named_modules() if isinstance(m, nn.Linear)]
    same = [n for n in linears if torch.equal(runs[False].get_submodule(n).weight, runs[True].get_submodule(n).weight)]
    assert {"self_attn.q_proj", "self_attn.k_proj"} <= set(same)  # the first block's inputs are the same in both
    assert len(same) < len(linears)


def random_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=97,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_awq_folding_scales_into_the_previous_op_preserves_the_model():
    model = random_llama()
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(ids).logits
        block = model.model.layers[0]
        linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
        mappings = block_mappings(block, linears)
        assert len(mappings) == 4  # norm→qkv, v→o, norm→gate/up, up→down
        for mapping in mappings:
            apply_scales(mapping, torch.rand(mapping.balances[0].in_features) + 0.5)
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


# --- bitsandbytes ---------------------------------------------------------------------------------------


@pytest.mark.skipif(bnb_unavailable_reason() is not None, reason=str(bnb_unavailable_reason()))
@pytest.mark.parametrize("fmt", ["fp4", "nf4"])
def test_bnb_fake_4bit_gives_the_logits_of_the_real_bitsandbytes_model(fmt):
    model = random_llama(layers=1)
    ids = torch.randint(0, 97, (1, 10))
    fake = BnbQuantizer(f"bnb-{fmt}", fmt=fmt).quantize(copy.deepcopy(model))
    real = BnbQuantizer(f"bnb-{fmt}", fmt=fmt, real=True).quantize(copy.deepcopy(model))
    import bitsandbytes.functional as F

    fake_linears = dict(fake.named_modules())
    packed = {name: m for name, m in real.named_modules() if type(m).__name__ == "Linear4bit"}
    assert len(packed) == 7  # q, k, v, o, gate, up, down; lm_head is skipped
    for name, layer in packed.items():  # dequantized before the first forward repacks them for the CPU kernel
        assert torch.equal(F.dequantize_4bit(layer.weight.data, layer.weight.quant_state), fake_linears[name].weight)
    with torch.no_grad():
        fake_logits, real_logits, fp_logits = fake(ids).logits, real(ids).logits, model(ids).logits
    # Same weights, different arithmetic: on CPUs with AVX512-BF16, bitsandbytes >= 0.49 runs Linear4bit through
    # a fused kernel that rounds activations and absmax to bf16 (2^-9 relative), so logits of size ~0.3 move
    # by ~1e-3 (measured 1.2e-3 fp4, 2.2e-3 nf4); quantization itself moves them 20-50x more (0.06, 0.05).
    gap = (fake_logits - real_logits).abs().max()
    assert gap < 5e-3
    assert gap < (fake_logits - fp_logits).abs().max() / 3


@pytest.mark.skipif(bnb_unavailable_reason() is not None, reason=str(bnb_unavailable_reason()))
def test_bnb_int8_fake_weights_are_llm_int8_row_absmax():
    w = torch.tensor([[127.0, 1.4, -0.6], [12.7, 0.04, -1.0]])  # per-row step: 1.0 and 0.1
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    model[0].weight.data = w.clone()
    q = BnbQuantizer("bnb-int8", fmt="int8").quantize(model)[0].weight
    assert torch.allclose(q, torch.tensor([[127.0, 1.0, -1.0], [12.7, 0.0, -1.0]]), atol=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_bnb_names_the_device_it_does_not_support():
    assert "does not support device type 'mps'" in bnb_unavailable_reason("mps")
    assert not BnbQuantizer("bnb-nf4", device="mps").available()


def test_bnb_names_the_missing_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec reports it absent, as if not installed
    assert bnb_unavailable_reason() == "bitsandbytes is not installed (pip install bitsandbytes)"
    assert not BnbQuantizer("bnb-nf4").available()


# --- registry -------------------------------------------------------------------------------------------


def test_registry_names_and_errors():
    for name in ("fp", "rtn8", "rtn4", "rtn3", "rtn2", "gptq4", "gptq8", "awq4", "bnb-int8", "bnb-fp4", "bnb-nf4"):
        assert name in QUANTIZERS
    assert get_quantizer("rtn3", group_size=64).bits == 3
    assert get_quantizer("gptq4").needs_calibration and not get_quantizer("rtn4").needs_calibration
    with pytest.raises(ValueError, match="unknown quantizer 'rtn9'.*rtn4"):
        get_quantizer("rtn9")
    with pytest.raises(ValueError, match="unknown option"):
        get_quantizer("rtn4", bits=3)


def test_rtn_quantizer_skips_lm_head_by_default():
    model = random_llama(layers=1)
    head = model.lm_head.weight.clone()
    q_proj = model.model.layers[0].self_attn.q_proj.weight.clone()
    get_quantizer("rtn4").quantize(model)
    assert torch.equal(model.lm_head.weight, head)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, rtn_quantize(q_proj, 4))


# --- code flips -----------------------------------------------------------------------------------------


def test_code_flips_between_a_model_and_itself_are_zero():
    model = random_llama(layers=1)
    result = code_flips(model, model, "rtn4")
    assert result["overall"]["flips"] == 0 and result["overall"]["below_half_step_fraction"] == 1.0


def test_moving_one_weight_by_two_steps_flips_exactly_one_code():
    a = random_llama(layers=1)
    b = copy.deepcopy(a)
    weight = b.model.layers[0].mlp.up_proj.weight
    step = rtn_codes(weight, 4)[1][0, 0]
    column = int(weight[0, :128].abs().argmin())  # far from the group maximum, so Δ is unchanged
    with torch.no_grad():
        weight[0, column] += 2 * step
    result = code_flips(a, b, "rtn4")
    assert result["overall"]["flips"] == 1
    assert result["modules"]["model.layers.0.mlp.up_proj"]["flips"] == 1
    assert result["overall"]["weights"] - result["overall"]["below_half_step"] == 1


def test_weight_movement_places_each_change_on_the_starting_grid():
    # one group of four, absmax 1 -> 4-bit step 1/8; every value is exact in binary
    start = torch.tensor([[1.0, 0.03125, 0.3125, -0.40625]])  # codes 7 (clamped), 0 (0.25 step), 2 (2.5 -> even), -3
    end = torch.tensor([[1.0, 0.0, 0.34375, -0.40625]])  # zero-bin weight moves inside its bin; 2.5 -> 2.75 flips
    result = weight_movement(start, end, bits=4, group_size=4)
    assert result["weights"] == 4 and result["moved"] == 2
    assert result["moved_in_zero_bin"] == 1 and result["flips"] == 1
    assert result["mean_change_in_steps"] == 0.25 and result["max_change_in_steps"] == 0.25
    # positions in the bin: 0.25 (second weight) and 0.5, a rounding boundary (third)
    assert result["start_position_histogram"] == [0, 0, 1, 0, 1]


def test_weight_movement_of_an_unchanged_matrix_is_empty():
    w = torch.randn(4, 8)
    result = weight_movement(w, w.clone(), bits=8, group_size=8)
    assert result["moved"] == result["flips"] == 0 and result["start_position_histogram"] == [0] * 5


# --- through the tiny benchmark: calibrated quantizers, checkpoints, the CLI ------------------------------


@dataclass
class InputRecorder(CalibratedQuantizer):
    """A calibrated 'quantizer' that changes nothing and keeps, per block, its outputs on the inputs it was given."""

    outputs: list = field(default_factory=list)

    def quantize_block(self, block: nn.Module, linears: dict, inputs: ActivationStore) -> None:
        self.outputs.append([block_output(block(hidden, **kwargs)) for hidden, kwargs in inputs])


def gemma3_with_a_full_attention_layer(vocab: int) -> nn.Module:
    """Gemma-3 whose middle layer attends fully (its own rotary base and mask) between sliding-window layers."""
    config = Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=8,  # shorter than the calibration sequences: the masks differ too
        vocab_size=vocab,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(
    ("family", "offload"), [("gemma3", "none"), ("gemma3", "disk"), ("gpt2-eager", "none"), ("llama", "none")]
)
@torch.no_grad()
def test_every_block_is_calibrated_with_the_arguments_the_model_itself_calls_it_with(tiny, family, offload):
    """Each block's outputs during calibration equal its outputs in the model's own forward pass: Gemma-3's
    full-attention layer gets its own mask and rotary embeddings, GPT-2 (eager) its mask passed positionally."""
    _, tokenizer, texts = tiny
    torch.manual_seed(0)
    vocab = len(tokenizer)
    model = {
        "gemma3": lambda: gemma3_with_a_full_attention_layer(vocab),
        "gpt2-eager": lambda: AutoModelForCausalLM.from_config(
            GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4), attn_implementation="eager"
        ),
        "llama": lambda: LlamaForCausalLM(
            LlamaConfig(
                hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=vocab
            )
        ),
    }[family]().eval()
    recorder = InputRecorder("record", n_samples=2, seq_len=16, offload_activations=offload, progress=False)
    recorder.quantize(model, tokenizer, texts)
    _, layers = decoder_layers(model)
    real: list[torch.Tensor] = []
    for block in layers:  # the model is the test's own: the hooks stay
        block.register_forward_hook(lambda _m, _a, out: real.append(block_output(out)))
    for sample, ids in enumerate(calibration_sequences(tokenizer, texts, 2, 16, 0)):
        real.clear()
        model(input_ids=ids, use_cache=False)
        for index, output in enumerate(real):
            assert torch.allclose(recorder.outputs[index][sample], output, atol=1e-6), f"{family} block {index}"


def test_blocks_called_alike_share_one_kwargs_set_and_none_is_stored_apart():
    ids = [torch.randint(3, 90, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for model, expected in ((random_llama(layers=3), [0, 0, 0]), (gemma3_with_a_full_attention_layer(200), [0, 1, 0])):
        inputs, sets = ActivationStore(device="cpu"), ActivationStore(device="cpu")
        assert capture_block_inputs(model.eval(), decoder_layers(model)[1], ids, inputs, sets) == expected
        assert len(inputs) == 2 and len(sets) == (2 if expected[1] else 0)
        assert all("forward" not in block.__dict__ for block in decoder_layers(model)[1])  # blocks restored


@pytest.fixture(scope="module")
def tiny(tiny_benchmark):
    model, tokenizer = load_model(tiny_benchmark.target_dir)
    return model, tokenizer, calibration_texts(corpus_dir=tiny_benchmark.corpus_dir)


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


def test_awq_on_the_tiny_model_folds_scales_and_quantizes(tiny):
    model, tokenizer, texts = tiny
    quantized = get_quantizer("awq4", n_samples=4, seq_len=64).quantize(copy.deepcopy(model), tokenizer, texts)
    norms = [n for n, _ in model.named_parameters() if "layernorm" in n]
    folded = [n for n in norms if not torch.equal(quantized.get_parameter(n), model.get_parameter(n))]
    assert folded  # some searched scales beat the identity (which the grid includes) and were folded in
    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        assert torch.isfinite(quantized(ids).logits).all()


@pytest.mark.parametrize("scheme", ["awq4", "gptq4"])
def test_awq_passes_each_blocks_smoothed_unquantized_outputs_on_and_gptq_its_quantized_ones(tiny, scheme, monkeypatch):
    model, tokenizer, texts = tiny
    quantizer = get_quantizer(scheme, n_samples=2, seq_len=32)
    passed_on = []  # each block's layer weights as its outputs are computed for the next block
    quantize_block = quantizer.quantize_block

    def quantize_block_and_keep_weights(block, linears, inputs):
        quantize_block(block, linears, inputs)
        passed_on.append({name: layer.weight.detach().clone() for name, layer in linears.items()})

    monkeypatch.setattr(quantizer, "quantize_block", quantize_block_and_keep_weights)
    quantized = quantizer.quantize(copy.deepcopy(model), tokenizer, texts)
    assert len(passed_on) == model.config.num_hidden_layers
    for weights in passed_on:
        for name, weight in weights.items():
            final = quantized.get_submodule(name).weight
            if scheme == "awq4":  # smoothed, then RTN only after the next block has its inputs
                assert not torch.equal(final, weight) and torch.equal(final, rtn_quantize(weight, 4))
            else:
                assert torch.equal(final, weight)


def test_calibrated_quantizer_without_text_says_so(tiny):
    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match="gptq4 needs a tokenizer and calibration text"):
        get_quantizer("gptq4").quantize(copy.deepcopy(model), tokenizer, None)


def test_quantized_checkpoint_reloads_with_the_same_logits(tiny, tmp_path):
    model, tokenizer, texts = tiny
    quantized = get_quantizer("rtn4").quantize(copy.deepcopy(model))
    save_model(quantized, tokenizer, tmp_path / "q")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, quantized(ids).logits)


def test_cli_quantize_and_codeflips(tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "gptq"
    assert (
        main(
            [
                "quantize",
                "--model",
                str(tiny_benchmark.target_dir),
                "--scheme",
                "gptq4",
                "--out",
                str(out),
                "--corpus",
                str(tiny_benchmark.corpus_dir),
                "--n-samples",
                "4",
                "--offload-activations",
                "disk",
            ]
        )
        == 0
    )
    settings = read_yaml(out / "quantize.yaml")
    assert settings["scheme"] == "gptq4" and settings["options"]["n_samples"] == 4
    assert settings["options"]["offload_activations"] == "disk"
    assert settings["calibration"].endswith("(generic)")
    load_model(out)
    flips = tmp_path / "flips.json"
    assert (
        main(
            [
                "codeflips",
                "--a",
                str(tiny_benchmark.target_dir),
                "--b",
                str(tiny_benchmark.retrain_dir),
                "--scheme",
                "rtn4",
                "--out",
                str(flips),
            ]
        )
        == 0
    )
    result = read_json(flips)
    assert 0 < result["overall"]["flip_fraction"] < 1
    assert "codes flipped" in capsys.readouterr().out


def test_cli_rejects_calibrated_scheme_without_text(tiny_benchmark, tmp_path, capsys):
    assert (
        main(["quantize", "--model", str(tiny_benchmark.target_dir), "--scheme", "awq4", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "--calibration FILE or --corpus DIR" in capsys.readouterr().err


# --- fallbacks: recorded, never silent ------------------------------------------------------------------


def test_gptq_gives_rtn_to_layers_whose_dampened_hessian_is_not_positive_definite_and_records_it():
    # mean(diag) = 0.869: dampening 0.01 adds 0.0087, so the last entry stays negative.
    indefinite = torch.diag(torch.tensor([1.0, 1, 1, 1, 1, 1, 1, -0.05]))
    quantizer = get_quantizer("gptq4", group_size=8)
    with pytest.warns(UserWarning, match="using RTN for 2 layer"):
        assert quantizer._invert(["q", "k"], indefinite.clone()) is None
    assert quantizer.fallbacks == [
        {"layers": ["q", "k"], "used": "RTN", "reason": "Hessian not positive definite at dampening 0.01"}
    ]
    with pytest.raises(NumericalError, match="dampening 0.01"):
        invert_hessian(torch.full((8, 8), float("nan")))


def test_group_size_fallback_is_said_once_per_run_and_recorded():
    model = random_llama(layers=2)  # down_proj rows hold 128 weights; the rest 64
    quantizer = get_quantizer("rtn4", group_size=48)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        quantizer.quantize(model)
        quantizer.quantize(model)
    said = [w for w in said if issubclass(w.category, UserWarning)]
    assert len(said) == 2  # one per distinct row width, not per layer, and not again on the second model
    assert sorted(len(f["layers"]) for f in quantizer.fallbacks) == [2, 12]
    assert {f["used"] for f in quantizer.fallbacks} == {"per-row scales"}


def test_quantize_yaml_records_the_fallbacks(tmp_path):
    save_model(random_llama(layers=1), None, tmp_path / "model")  # RTN needs no tokenizer
    with pytest.warns(UserWarning, match="group size 48 does not divide"):
        assert (
            main(
                [
                    "quantize",
                    "--model",
                    str(tmp_path / "model"),
                    "--scheme",
                    "rtn4",
                    "--group-size",
                    "48",
                    "--out",
                    str(tmp_path / "q"),
                ]
            )
            == 0
        )
    record = read_yaml(tmp_path / "q" / "quantize.yaml")
    assert "fallbacks" not in record["options"]
    assert [(len(f["layers"]), f["used"]) for f in record["fallbacks"]] == [
        (6, "per-row scales"),
        (1, "per-row scales"),
    ]


def test_configured_quantizer_applies_the_options_each_scheme_takes_and_names_bad_flags(tmp_path):
    from qunlearn.errors import UserInputError
    from qunlearn.quant.scheme import SchemeSettings, configured_quantizer

    rtn, texts = configured_quantizer(SchemeSettings("rtn4", group_size=32, n_samples=8))  # RTN takes no samples
    assert rtn.group_size == 32 and not hasattr(rtn, "n_samples") and texts == []
    (tmp_path / "calib.txt").write_text("one document\n\nanother document\n")
    gptq, texts = configured_quantizer(
        SchemeSettings("gptq4", group_size=-1, n_samples=8, calibration=str(tmp_path / "calib.txt"))
    )
    assert gptq.n_samples == 8 and texts == ["one document", "another document"]
    with pytest.raises(UserInputError, match="--scheme gptq4 needs calibration text"):
        configured_quantizer(SchemeSettings("gptq4"))
    with pytest.raises(UserInputError, match="--group-size must be positive or -1"):
        SchemeSettings("rtn4", group_size=0).validate()
    with pytest.raises(UserInputError, match="--n-samples must be at least 1"):
        SchemeSettings("gptq4", n_samples=0).validate()


def test_scheme_help_gives_each_summary_with_its_caveat():
    from qunlearn.commands.options import add_scheme_options
    from qunlearn.quant.registry import QUANTIZERS

    parser = argparse.ArgumentParser()
    add_scheme_options(parser)
    help_text = next(action.help for action in parser._actions if action.dest == "scheme")
    int8 = QUANTIZERS["bnb-int8"]
    assert "outlier path" in int8.caveat and f"bnb-int8 ({int8.summary}; {int8.caveat})" in help_text
    assert f"rtn4 ({QUANTIZERS['rtn4'].summary})" in help_text
