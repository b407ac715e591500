"""The unlearning trainer on the `tiny` embedded benchmark: every method runs, SURE's mask holds,
resume equals an uninterrupted run, NaN is caught naming the step, weights stay in the chosen dtype."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qunlearn.commands import unlearn as unlearn_command
from qunlearn.errors import TrainingDivergedError
from qunlearn.fileio import read_json, read_yaml
from qunlearn.models.io import load_model
from qunlearn.unlearn import losses
from qunlearn.unlearn.methods import METHODS
from qunlearn.unlearn.saliency import module_parameters
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

FAST = UnlearnSettings(max_length=32, batch_size=4, saliency_batches=1, max_steps=2)


def fast(method: str, **changes) -> UnlearnSettings:
    """Small, quick settings; saliency options only for SURE methods."""
    settings = FAST if method.endswith("_sure") else replace(FAST, saliency_batches=None)
    return replace(settings, **changes)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_two_steps_on_the_tiny_preset(tiny_benchmark, tmp_path, method):
    out = unlearn(
        tiny_benchmark.target_dir,
        tiny_benchmark.corpus_dir,
        method,
        tmp_path / method,
        fast(method),
        progress=False,
    )
    curve = read_json(out / "losses.json")
    record = read_yaml(out / "unlearn.yaml")
    assert [e["step"] for e in curve] == [1, 2]
    assert ("retain" in curve[0]) == ("_gdr" in method or "_klr" in method)
    assert record["status"] == "complete" and record["method"] == method and record["settings"]["max_steps"] == 2
    assert (out / "saliency.json").is_file() == method.endswith("_sure")
    load_model(out)  # a loadable HF checkpoint (safetensors)


def test_sure_leaves_every_non_salient_module_bit_identical(tiny_benchmark, tmp_path):
    settings = fast("ga_sure", max_steps=3, weight_decay=0.1, saliency_percentile=70.0)
    out = unlearn(
        tiny_benchmark.target_dir,
        tiny_benchmark.corpus_dir,
        "ga_sure",
        tmp_path / "sure",
        settings,
        progress=False,
    )
    saliency = read_json(out / "saliency.json")
    target, after = weights(tiny_benchmark.target_dir), weights(out)
    model, _ = load_model(tiny_benchmark.target_dir)
    names = {id(p): n for n, p in model.named_parameters()}
    owners = {m: [names[id(p)] for p in ps] for m, ps in module_parameters(model).items()}
    assert set(saliency["scores"]) == set(owners)
    assert 0 < saliency["n_selected"] < saliency["n_modules"]
    for module, params in owners.items():
        if module not in saliency["selected"]:
            for name in params:
                assert torch.equal(after[name], target[name]), f"{name} moved although {module} is not salient"
    changed = [m for m in saliency["selected"] if any(not torch.equal(after[n], target[n]) for n in owners[m])]
    assert changed, "no salient module changed"


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_benchmark, tmp_path, monkeypatch):
    settings = fast("npo_gdr", max_steps=None, epochs=2, batch_size=8)
    args = (tiny_benchmark.target_dir, tiny_benchmark.corpus_dir, "npo_gdr")
    whole = unlearn(*args, tmp_path / "whole", settings, progress=False)
    steps = len(read_json(whole / "losses.json"))
    assert steps >= 4

    calls = {"n": 0}
    real = losses.npo_loss

    def crash_in_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == steps - 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(losses, "npo_loss", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        unlearn(*args, tmp_path / "split", settings, progress=False)
    monkeypatch.setattr(losses, "npo_loss", real)
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["epoch-1"]
    split = unlearn(*args, tmp_path / "split", settings, progress=False, resume=True)

    a, b = weights(whole), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(whole / "losses.json") == read_json(split / "losses.json")
    assert not (split / "checkpoints").exists()


def test_resume_with_other_settings_is_refused(tiny_benchmark, tmp_path):
    args = (tiny_benchmark.target_dir, tiny_benchmark.corpus_dir, "ga", tmp_path / "run")
    unlearn(*args, fast("ga", max_steps=1), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        unlearn(*args, fast("ga", max_steps=1, lr=1.0), progress=False, resume=True)


def test_an_injected_nan_is_caught_naming_the_step(tiny_benchmark, tmp_path, monkeypatch):
    real, calls = losses.ga_loss, {"n": 0}

    def nan_at_second_call(*a, **k):
        calls["n"] += 1
        return real(*a, **k) * (float("nan") if calls["n"] == 2 else 1.0)

    monkeypatch.setattr(losses, "ga_loss", nan_at_second_call)
    with pytest.raises(TrainingDivergedError, match=r"forget=nan.*at step 2 \(epoch 1\)"):
        unlearn(
            tiny_benchmark.target_dir,
            tiny_benchmark.corpus_dir,
            "ga",
            tmp_path / "nan",
            fast("ga"),
            progress=False,
        )
    record = read_yaml(tmp_path / "nan" / "unlearn.yaml")  # a failed run says so, with the reason
    assert record["status"] == "failed" and "at step 2 (epoch 1)" in record["reason"]


def test_bf16_weights_are_trained_and_saved_in_bf16(tiny_benchmark, tmp_path):
    out = unlearn(
        tiny_benchmark.target_dir,
        tiny_benchmark.corpus_dir,
        "ga",
        tmp_path / "bf16",
        fast("ga", dtype="bf16", max_steps=1, lr=1e-3),
        progress=False,
    )
    saved = weights(out)
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    target = weights(tiny_benchmark.target_dir)
    assert any(not torch.equal(saved[k], target[k].to(torch.bfloat16)) for k in saved)


def test_bf16_storage_keeps_weights_bf16_exact_and_moves_only_small_ones(tiny_benchmark, tmp_path):
    lr = 1e-5  # an Adam step of about lr is under half a bf16 ULP for every |w| >= lr * 2^9 (2^11: margin)
    out = unlearn(
        tiny_benchmark.target_dir,
        tiny_benchmark.corpus_dir,
        "ga",
        tmp_path / "s",
        fast("ga", storage="bf16", max_steps=3, lr=lr),
        progress=False,
    )
    saved, target = weights(out), weights(tiny_benchmark.target_dir)
    assert {t.dtype for t in saved.values()} == {torch.float32}  # computed and saved in fp32 ...
    assert all(torch.equal(t, t.to(torch.bfloat16).float()) for t in saved.values())  # ... holding bf16 values
    start = {k: t.to(torch.bfloat16).float() for k, t in target.items()}
    large = {k: t.abs() >= lr * 2**11 for k, t in start.items()}
    assert all(torch.equal(saved[k][large[k]], start[k][large[k]]) for k in saved)
    assert any(not torch.equal(saved[k][~large[k]], start[k][~large[k]]) for k in saved)


def test_storage_must_be_narrower_than_the_compute_dtype(tiny_benchmark, tmp_path):
    with pytest.raises(ValueError, match="--storage bf16 must be a narrower dtype than --dtype bf16"):
        unlearn(
            tiny_benchmark.target_dir,
            tiny_benchmark.corpus_dir,
            "ga",
            tmp_path / "x",
            fast("ga", dtype="bf16", storage="bf16"),
            progress=False,
        )


def test_a_foreign_nonempty_out_dir_is_refused(tiny_benchmark, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an unlearning run"):
        unlearn(tiny_benchmark.target_dir, tiny_benchmark.corpus_dir, "ga", tmp_path, fast("ga"), progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_saliency_options_on_a_baseline_are_rejected(tiny_benchmark, tmp_path):
    with pytest.raises(ValueError, match="SURE methods only"):
        unlearn(
            tiny_benchmark.target_dir,
            tiny_benchmark.corpus_dir,
            "npo",
            tmp_path / "x",
            fast("npo", saliency_gamma=1.0),
            progress=False,
        )


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse `qunlearn unlearn ...` with only this subcommand registered (independent of the others)."""
    parser = argparse.ArgumentParser(prog="qunlearn")
    unlearn_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["unlearn", *argv])


def test_cli_writes_the_checkpoint_and_records(tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "cli"
    args = parse(
        [
            "--method",
            "npo_sure",
            "--target",
            str(tiny_benchmark.target_dir),
            "--corpus",
            str(tiny_benchmark.corpus_dir),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--max-length",
            "32",
            "--batch-size",
            "4",
            "--saliency-batches",
            "1",
            "--quiet",
        ]
    )
    assert args.func(args) == 0 and f"written to {out}" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "unlearn.yaml", "losses.json", "saliency.json"} <= {
        p.name for p in out.iterdir()
    }


def test_cli_reports_bad_input_naming_the_flag(tiny_benchmark, tmp_path):
    args = parse(
        [
            "--method",
            "ga",
            "--target",
            str(tiny_benchmark.target_dir),
            "--corpus",
            str(tiny_benchmark.corpus_dir),
            "--out",
            str(tmp_path / "o"),
            "--lr",
            "-1",
        ]
    )
    with pytest.raises(ValueError, match="--lr must be positive"):  # cli.main prints it and exits 2
        args.func(args)
