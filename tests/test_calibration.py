"""Specification of calibration: where activations wait, and the block-by-block driver of calibrated quantizers."""

from __future__ import annotations

import copy
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

from helpers import random_llama
from qunlearn.quant.activations import ActivationStore
from qunlearn.quant.base import CalibratedQuantizer, block_output, capture_block_inputs
from qunlearn.quant.calibration import calibration_sequences
from qunlearn.quant.layers import decoder_layers
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_quantize

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


# --- the block-by-block driver: each block's own arguments, what it passes on ---------------------------


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
