"""Every command on the model families unlearning research uses, as tiny random-initialised HF checkpoints.

Each family is built from its transformers config (hidden 64, 2 blocks, the embedded benchmark's tokenizer), saved
as a checkpoint, and run through quantize (rtn4, rtn8, gptq4, awq4, bnb-nf4), unlearn, evaluate, codeflips and
audit. The projection layers are counted per family by hand (`PROJECTIONS`), not by the code under test.
The configs are in tests/helpers.py, the `checkpoints` fixture in tests/conftest.py (tests/test_checkpoints.py
uses them too).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from torch import nn
from transformers.pytorch_utils import Conv1D

from helpers import SIZES, on_grid
from qunlearn.cli import main
from qunlearn.fileio import read_json, read_yaml
from qunlearn.models.io import load_model, load_tokenizer, save_model
from qunlearn.models.utils import context_length
from qunlearn.quant.awq import apply_scales
from qunlearn.quant.awq_layouts import block_mappings
from qunlearn.quant.bnb import bnb_fake_quantize, bnb_unavailable_reason
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.layers import decoder_layers, target_linears, weight_matrix
from qunlearn.quant.registry import get_quantizer
from qunlearn.unlearn.saliency import module_parameters

GROUP = 32  # divides every projection's input width below (64, 128)

# Projection layers per decoder block, named by hand for each family.
PROJECTIONS = {
    **{f: 7 for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")},  # q k v o gate up down
    "phi": 6,  # q k v dense fc1 fc2
    "phi3": 4,  # qkv_proj o_proj gate_up_proj down_proj
    "gpt_neox": 4,  # query_key_value dense dense_h_to_4h dense_4h_to_h
    "opt": 6,  # q k v out_proj fc1 fc2
    "gpt2": 4,  # c_attn c_proj (attention) c_fc c_proj (MLP), all Conv1D
    "gemma3_vision": 7,  # the language model's q k v o gate up down
}
FAMILIES = list(PROJECTIONS)
# A multimodal model's parts beside its language model: left in full precision, and said so (a text-only audit).
OUTSIDE_TEXT = {"gemma3_vision": ("model.vision_tower", "model.multi_modal_projector")}
# Pairs AWQ scales per block: v → o drops out under GQA; GELU stops Phi/NeoX/GPT-2's MLP pair.
AWQ_PAIRS = {
    "llama": 3,
    "mistral": 3,
    "qwen2": 3,
    "qwen3": 3,
    "gemma": 3,
    "gemma2": 3,
    "gemma3": 3,
    "phi": 2,
    "phi3": 4,
    "gpt_neox": 2,
    "opt": 4,
    "gpt2": 3,
    "gemma3_vision": 3,
}


def block_projections(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D inside the decoder blocks, found by class."""
    name, layers = decoder_layers(model)
    return {
        f"{name}.{i}.{sub}": m
        for i, block in enumerate(layers)
        for sub, m in block.named_modules()
        if isinstance(m, (nn.Linear, Conv1D))
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_projection_is_a_quantization_target(checkpoints, family):
    model, _ = load_model(checkpoints[family])
    found = block_projections(model)
    assert len(found) == 2 * PROJECTIONS[family]
    targets = target_linears(model)
    assert set(found) <= set(targets)
    assert not any(isinstance(m, nn.Embedding) for m in targets.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_awq_layout_folds_scales_without_changing_the_model(checkpoints, family):
    model, _ = load_model(checkpoints[family])
    ids = torch.randint(3, 200, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        for _, block in enumerate(decoder_layers(model)[1]):
            mappings = block_mappings(block, dict(block.named_modules()))
            assert len(mappings) == AWQ_PAIRS[family]
            for mapping in mappings:
                width = weight_matrix(mapping.balances[0]).shape[1]
                apply_scales(mapping, torch.rand(width, generator=torch.Generator().manual_seed(2)) + 0.5)
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


def test_awq_drops_the_fused_v_to_o_pair_under_grouped_query_attention():
    """Phi-3-medium / Phi-4 style: with fewer KV heads, qkv_proj's last rows are not o_proj's input (v is narrower)."""
    torch.manual_seed(0)
    model = tf.Phi3ForCausalLM(
        tf.Phi3Config(**SIZES, vocab_size=100, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    ).eval()
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        for block in model.model.layers:
            mappings = block_mappings(block, dict(block.named_modules()))
            assert [m.smooth for m in mappings] == [
                block.input_layernorm,
                block.post_attention_layernorm,
                block.mlp.gate_up_proj,
            ]
            for mapping in mappings:
                width = weight_matrix(mapping.balances[0]).shape[1]
                apply_scales(mapping, torch.rand(width, generator=torch.Generator().manual_seed(2)) + 0.5)
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


def _quantize(model: nn.Module, tokenizer, scheme: str, texts: list[str]) -> tuple[nn.Module, list[dict]]:
    options = {"group_size": GROUP} if not scheme.startswith("bnb") else {}
    if scheme in ("gptq4", "awq4"):
        options |= {"n_samples": 4, "seq_len": 64}
    quantizer = get_quantizer(scheme, **options)
    quantized = quantizer.quantize(copy.deepcopy(model), tokenizer, texts if quantizer.needs_calibration else None)
    return quantized, quantizer.fallbacks


SCHEMES = ["rtn4", "rtn8", "gptq4", "awq4", "bnb-nf4"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantizers_put_every_block_projection_on_their_grid(checkpoints, tiny_benchmark, family, scheme):
    if scheme == "bnb-nf4" and bnb_unavailable_reason() is not None:
        pytest.skip(bnb_unavailable_reason())
    model, tokenizer = load_model(checkpoints[family])
    quantized, fallbacks = _quantize(model, tokenizer, scheme, calibration_texts(corpus_dir=tiny_benchmark.corpus_dir))
    outside = OUTSIDE_TEXT.get(family, ())
    kept = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and n.startswith(outside)]
    assert [f["layers"] for f in fallbacks] == ([kept] if outside else [])
    for name, param in model.named_parameters():
        if name.startswith(outside):
            assert torch.equal(param, quantized.get_parameter(name)), f"{family} {scheme}: {name} changed"
    before, after = block_projections(model), block_projections(quantized)
    for name, layer in after.items():
        w, original = weight_matrix(layer), weight_matrix(before[name])
        assert not torch.equal(w, original), f"{family} {scheme}: {name} unchanged"
        if scheme == "bnb-nf4":  # on the NF4 grid: quantizing again is the identity
            assert torch.allclose(bnb_fake_quantize(w, "nf4"), w, atol=1e-6), name
        else:
            assert on_grid(w, int(scheme[-1]), GROUP), f"{family} {scheme}: {name} off the grid"
    embeddings = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    for name in embeddings:
        assert torch.equal(model.get_submodule(name).weight, quantized.get_submodule(name).weight), name
    head, quantized_head = model.get_output_embeddings(), quantized.get_output_embeddings()
    assert torch.equal(head.weight, quantized_head.weight)


def test_an_unhandled_layer_stops_quantize_in_one_line_naming_module_and_architecture(tiny_benchmark, tmp_path, capsys):
    tokenizer = load_tokenizer(tiny_benchmark.tokenizer_dir)
    config = tf.MixtralConfig(
        **SIZES | {"num_hidden_layers": 1}, vocab_size=len(tokenizer), num_key_value_heads=2, num_local_experts=2
    )
    save_model(tf.MixtralForCausalLM(config), tokenizer, tmp_path / "moe")  # experts are fused 3-D tensors
    capsys.readouterr()  # transformers' own save progress bars (the library leaves them on)
    assert main(["quantize", "--model", str(tmp_path / "moe"), "--scheme", "rtn4", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "q").exists()
    assert "MixtralForCausalLM: no quantizer handles model.layers.0.mlp." in err


@pytest.mark.parametrize("scheme", ["rtn4", "gptq4"])
def test_quantize_keeps_a_multimodal_models_vision_tower_and_records_it(checkpoints, tiny_benchmark, tmp_path, scheme):
    source = checkpoints["gemma3_vision"]
    calibration = ["--corpus", str(tiny_benchmark.corpus_dir), "--n-samples", "2"] if scheme == "gptq4" else []
    argv = ["quantize", "--model", str(source), "--scheme", scheme, "--group-size", "32", *calibration]
    with pytest.warns(UserWarning, match="outside the language model, kept as they are"):
        assert main([*argv, "--out", str(tmp_path / "q")]) == 0
    (kept,) = read_yaml(tmp_path / "q" / "quantize.yaml")["fallbacks"]
    assert kept["used"] == "full precision" and "model.vision_tower, model.multi_modal_projector" in kept["reason"]
    assert len(kept["layers"]) == 9  # 6 in the vision block; the pooling head's attention out_proj, fc1, fc2
    original, _ = load_model(source)
    quantized, _ = load_model(tmp_path / "q")
    for name, param in original.named_parameters():  # e.g. the pooling head's nn.MultiheadAttention in_proj_weight
        if name.startswith(OUTSIDE_TEXT["gemma3_vision"]):
            assert torch.equal(param, quantized.get_parameter(name)), name
    assert on_grid(quantized.model.language_model.layers[1].mlp.down_proj.weight, 4, 32)


def test_a_multimodal_models_context_is_its_language_models(checkpoints, tiny_benchmark, tmp_path, capsys):
    model, _ = load_model(checkpoints["gemma3_vision"])
    assert context_length(model) == SIZES["max_position_embeddings"]
    target, corpus = str(checkpoints["gemma3_vision"]), str(tiny_benchmark.corpus_dir)
    argv = ["unlearn", "--method", "ga", "--target", target, "--corpus", corpus, "--max-length", "1000", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "u")]) == 2
    assert "--max-length 1000 exceeds the model's context of 256 tokens" in capsys.readouterr().err


# --- unlearn, evaluate, codeflips, audit -------------------------------------------------------------------


def _chain(checkpoints, bench, family: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    """unlearn (GDR and SURE), evaluate, codeflips and audit on one family."""
    target, corpus = str(checkpoints[family]), str(bench.corpus_dir)
    steps = ["--max-steps", "2", "--batch-size", "2", "--max-length", "64", "--quiet"]
    for method in ("npo_gdr", "ga_sure"):
        assert (
            main(
                [
                    "unlearn",
                    "--method",
                    method,
                    "--target",
                    target,
                    "--corpus",
                    corpus,
                    "--out",
                    str(root / method),
                    *steps,
                ]
            )
            == 0
        )
    original, _ = load_model(target)
    sure, _ = load_model(root / "ga_sure")
    saliency = read_json(root / "ga_sure" / "saliency.json")
    assert not any(name.startswith(OUTSIDE_TEXT.get(family, ())) for name in saliency["scores"])
    selected = set(saliency["selected"])
    owners = module_parameters(original)
    kept = {id(p) for name in selected for p in owners[name]}
    moved = dict(sure.named_parameters())
    for name, param in original.named_parameters():
        assert torch.isfinite(moved[name]).all(), f"{family}: {name} not finite"
        if id(param) not in kept:
            assert torch.equal(param, moved[name]), f"{family}: non-salient {name} changed"
    assert any(not torch.equal(p, moved[n]) for n, p in original.named_parameters())

    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(root / "npo_gdr"),
                "--corpus",
                corpus,
                "--out",
                str(root / "eval.json"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "privleak skipped: it needs the retrain model (--retrain DIR)" in capsys.readouterr().out
    metrics = json.loads((root / "eval.json").read_text())["metrics"]  # every other metric computed
    assert "privleak" not in metrics and {"verbmem_f", "knowmem_f", "knowmem_r"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v["value"])) for v in metrics.values())

    assert (
        main(
            [
                "codeflips",
                "--a",
                target,
                "--b",
                str(root / "npo_gdr"),
                "--scheme",
                "rtn4",
                "--group-size",
                "32",
                "--out",
                str(root / "flips.json"),
            ]
        )
        == 0
    )
    flips = json.loads((root / "flips.json").read_text())
    assert len(flips["modules"]) >= 2 * PROJECTIONS[family] and flips["overall"]["flips"] > 0
    assert not any(name.startswith(OUTSIDE_TEXT.get(family, ())) for name in flips["modules"])

    assert (
        main(
            [
                "audit",
                "--target",
                target,
                "--unlearned",
                str(root / "npo_gdr"),
                "--corpus",
                corpus,
                "--out",
                str(root / "audit"),
                "--attacks",
                "rtn4",
                "--relearn-steps",
                "1",
            ]
        )
        == 0
    )
    (attack,) = json.loads((root / "audit" / "audit.json").read_text())["attacks"]
    assert attack["name"] == "rtn4" and attack["verdict"] in ("holds", "recovers")
    assert [f["used"] for f in attack["fallbacks"]] == (["full precision"] if family in OUTSIDE_TEXT else [])
    assert attack["code_flip_fraction"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in attack["scores"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_unlearn_evaluate_codeflips_audit(checkpoints, tiny_benchmark, tmp_path, family, capsys):
    _chain(checkpoints, tiny_benchmark, family, tmp_path, capsys)
