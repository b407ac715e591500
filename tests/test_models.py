"""Tokenizer and checkpoints: standard HF loading, identical logits, safetensors only, prepare end to end."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qunlearn.cli import main
from qunlearn.data.muse import load_corpus
from qunlearn.errors import UserInputError
from qunlearn.fileio import read_yaml
from qunlearn.models.io import load_model, save_model
from qunlearn.prepare import is_prepared, prepare_benchmark


def test_tokenizer_reloads_with_autotokenizer_and_adds_bos(tiny_benchmark):
    tokenizer = AutoTokenizer.from_pretrained(tiny_benchmark.tokenizer_dir)
    ids = tokenizer("Question: Where?\nAnswer: Here")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Question: Where?\nAnswer: Here"
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


@pytest.mark.parametrize("name", ["target", "retrain"])
def test_checkpoints_reload_with_auto_classes_and_give_identical_logits(tiny_benchmark, name):
    path = getattr(tiny_benchmark, f"{name}_dir")
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    auto = AutoModelForCausalLM.from_pretrained(path).eval()
    ours, tokenizer = load_model(path)
    batch = AutoTokenizer.from_pretrained(path)(["A test sentence about Velmora."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(auto(**batch).logits, ours(**batch).logits)
    assert tokenizer.bos_token_id == auto.config.bos_token_id


def test_target_memorised_its_forget_text_and_retrain_did_not(tiny_benchmark):
    results = read_yaml(tiny_benchmark.settings_file)["results"]
    assert results["target"]["final_train_loss"] < 0.5  # floor: the first tokens after each EOS are random
    assert results["target"]["greedy_forget_token_match"] > 0.9
    assert results["retrain"]["greedy_forget_token_match"] < 0.5


def test_save_and_load_round_trip_in_bf16(tiny_benchmark, tmp_path):
    model, tokenizer = load_model(tiny_benchmark.target_dir)
    save_model(model.to(torch.bfloat16), tokenizer, tmp_path / "bf16")
    again, _ = load_model(tmp_path / "bf16", dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in again.parameters())
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_loader_refuses_pickled_weights_and_missing_dirs(tiny_benchmark, tmp_path):
    model, tokenizer = load_model(tiny_benchmark.target_dir)
    save_model(model, tokenizer, tmp_path / "pickled")
    (tmp_path / "pickled/model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pickled/pytorch_model.bin")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_model(tmp_path / "pickled")
    with pytest.raises(UserInputError, match="absent: directory not found"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(UserInputError, match="no config.json"):
        load_model(tmp_path)


def test_prepare_reuses_identical_settings_and_cli_prints_summary(tiny_benchmark, capsys):
    settings = read_yaml(tiny_benchmark.settings_file)
    assert is_prepared(tiny_benchmark, {k: settings[k] for k in ("preset", "flavour", "seed", "dtype")})
    start = time.perf_counter()
    assert prepare_benchmark(tiny_benchmark.root, preset="tiny", progress=False) == tiny_benchmark
    assert time.perf_counter() - start < 5
    assert main(["prepare", "--out", str(tiny_benchmark.root), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "target: " in out and "greedy check" in out
    assert len(load_corpus(tiny_benchmark.corpus_dir).forget) > 0


def test_prepare_refuses_a_directory_prepared_with_other_settings(tiny_benchmark, capsys):
    with pytest.raises(ValueError, match="prepared with other settings.*--force"):
        prepare_benchmark(tiny_benchmark.root, preset="tiny", seed=1, progress=False)
    assert main(["prepare", "--out", str(tiny_benchmark.root), "--preset", "tiny", "--seed", "1"]) == 2
    assert "use --force" in capsys.readouterr().err


def test_cli_reports_bad_preset_and_dtype(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--out", "x", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
