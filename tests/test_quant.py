"""Specification of quant/: the RTN grid, bitsandbytes, the registry, code flips, checkpoints, the CLI and
fallbacks (GPTQ, AWQ and calibration have their own files)."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import warnings

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from helpers import random_llama
from qunlearn.cli import main
from qunlearn.errors import NumericalError
from qunlearn.fileio import read_json, read_yaml
from qunlearn.models.io import load_model, save_model
from qunlearn.quant.bnb import BnbQuantizer, bnb_unavailable_reason
from qunlearn.quant.diagnostics import code_flips, weight_movement
from qunlearn.quant.gptq import invert_hessian
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


# --- quantized checkpoints and the CLI ------------------------------------------------------------------


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
