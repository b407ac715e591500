"""Specification of AWQ (quant/awq.py): the scale search, candidates, clipping and folding scales into the model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from helpers import one_block_with_inputs, random_llama
from qunlearn.quant import memory
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
from qunlearn.quant.base import record_module_inputs
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_quantize

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


# --- on the tiny benchmark's model ----------------------------------------------------------------------


def test_awq_on_the_tiny_model_folds_scales_and_quantizes(tiny):
    model, tokenizer, texts = tiny
    quantized = get_quantizer("awq4", n_samples=4, seq_len=64).quantize(copy.deepcopy(model), tokenizer, texts)
    norms = [n for n, _ in model.named_parameters() if "layernorm" in n]
    folded = [n for n in norms if not torch.equal(quantized.get_parameter(n), model.get_parameter(n))]
    assert folded  # some searched scales beat the identity (which the grid includes) and were folded in
    ids = tokenizer(texts[0], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        assert torch.isfinite(quantized(ids).logits).all()
