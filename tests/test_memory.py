"""Memory options of the trainer: NPO's cached reference equals the live one, a bf16 reference, 8-bit AdamW,
gradient checkpointing (same update), and the option pairs that cannot work refused naming both."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from qunlearn.errors import UserInputError
from qunlearn.fileio import read_json
from qunlearn.unlearn.memory import make_optimizer
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

FAST = UnlearnSettings(max_length=32, batch_size=4, max_steps=2)


def run(bench, tmp_path, method: str, **changes):
    out = tmp_path / f"{method}-{'-'.join(f'{k}={v}' for k, v in changes.items())}"
    return unlearn(bench.target_dir, bench.corpus_dir, method, out, replace(FAST, **changes), progress=False)


def weights(out):
    return load_file(str(out / "model.safetensors"))


def test_cached_npo_reference_gives_the_losses_and_update_of_the_live_reference(tiny_benchmark, tmp_path):
    live = run(tiny_benchmark, tmp_path, "npo_gdr")
    cached = run(tiny_benchmark, tmp_path, "npo_gdr", reference="cached")
    logprobs = read_json(cached / "reference_logprobs.json")
    assert len(logprobs) > 0 and all(v < 0 for v in logprobs)  # one log-likelihood per forget chunk
    for a, b in zip(read_json(live / "losses.json"), read_json(cached / "losses.json"), strict=True):
        assert b == {k: pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in a.items()}
    # Adam's first steps are ~lr·sign(g): a gradient within float noise of 0 may flip; all others agree
    wa, wb = weights(live), weights(cached)
    off = sum(int(((wa[k] - wb[k]).abs() > 1e-6).sum()) for k in wa)
    assert off <= 1e-3 * sum(t.numel() for t in wa.values()), off


def test_a_bf16_reference_trains_klr_close_to_the_fp32_reference(tiny_benchmark, tmp_path):
    fp32 = read_json(run(tiny_benchmark, tmp_path, "npo_klr") / "losses.json")[0]
    bf16 = read_json(run(tiny_benchmark, tmp_path, "npo_klr", reference="bf16") / "losses.json")[0]
    # step 1 is at the target: NPO's log-ratio and KL are 0 against an exact reference, bf16 rounding only
    assert fp32["forget"] == pytest.approx(2 * 0.6931472 / 0.1, rel=1e-6) and fp32["retain"] == pytest.approx(
        0, abs=1e-6
    )
    assert bf16["forget"] == pytest.approx(fp32["forget"], rel=1e-2) and 0 < bf16["retain"] < 1e-2


def test_gradient_checkpointing_gives_the_same_update(tiny_benchmark, tmp_path):
    plain = weights(run(tiny_benchmark, tmp_path, "ga_gdr"))
    checkpointed = weights(run(tiny_benchmark, tmp_path, "ga_gdr", gradient_checkpointing=True))
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=0, atol=1e-6) for k in plain)


def test_adamw8bit_keeps_one_byte_per_moment_and_trains(tiny_benchmark, tmp_path):
    pytest.importorskip("bitsandbytes")
    weight = torch.nn.Parameter(torch.randn(64, 64))  # 4096 weights: bitsandbytes' smallest 8-bit tensor
    optimizer = make_optimizer("adamw8bit", [weight], lr=1e-3, weight_decay=0.0)
    weight.grad = torch.ones_like(weight)
    before = weight.detach().clone()
    optimizer.step()
    state = optimizer.state[weight]
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    assert torch.allclose(before - weight.detach(), torch.full_like(before, 1e-3), rtol=1e-2)  # Adam's first step
    out = run(tiny_benchmark, tmp_path, "ga", optim="adamw8bit")
    target = weights(tiny_benchmark.target_dir)
    assert any(not torch.equal(v, target[k]) for k, v in weights(out).items())


def test_an_8bit_optimizer_without_bitsandbytes_names_both_options(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(UserInputError, match=r"--optim paged_adamw8bit needs bitsandbytes.*--optim adamw"):
        make_optimizer("paged_adamw8bit", [torch.nn.Parameter(torch.zeros(1))], lr=1e-3, weight_decay=0.0)


@pytest.mark.parametrize(
    ("method", "reference", "message"),
    [
        ("npo_klr", "cached", "--reference cached holds NPO's log-likelihoods only.*KLR"),
        ("ga_gdr", "bf16", "--reference bf16: method 'ga_gdr' uses no reference model"),
    ],
)
def test_a_reference_option_the_method_cannot_use_is_refused(tiny_benchmark, tmp_path, method, reference, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_benchmark, tmp_path, method, reference=reference)
