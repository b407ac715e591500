"""Evaluation on the embedded `tiny` target and retrain models: exact batching, sensible scores, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from qunlearn.cli import main
from qunlearn.data.muse import load_corpus
from qunlearn.evaluate import evaluate_model
from qunlearn.evaluate import privleak as privleak_module
from qunlearn.evaluate.generate import cut_at_stop, decode, generate_greedy, greedy_token_ids
from qunlearn.evaluate.knowmem import STOP_STRINGS, knowmem, knowmem_prompt
from qunlearn.evaluate.privleak import CACHE_FILE, retrain_auc
from qunlearn.evaluate.utility import document_nll
from qunlearn.evaluate.verbmem import reference_text
from qunlearn.models.io import load_model


@pytest.fixture(scope="module")
def corpus(tiny_benchmark):
    return load_corpus(tiny_benchmark.corpus_dir)


@pytest.fixture(scope="module")
def target(tiny_benchmark):
    return load_model(tiny_benchmark.target_dir)


@pytest.fixture(scope="module")
def retrain(tiny_benchmark):
    return load_model(tiny_benchmark.retrain_dir)


@pytest.fixture(scope="module")
def retrain_copy(tiny_benchmark, tmp_path_factory):
    """A private copy of the retrain checkpoint (its folder holds the AUC cache of these tests)."""
    return shutil.copytree(tiny_benchmark.retrain_dir, tmp_path_factory.mktemp("retrain") / "retrain")


@pytest.fixture(scope="module")
def auc_retrain(retrain_copy, corpus):
    return retrain_auc(retrain_copy, corpus, progress=False, cache_dir=retrain_copy.parent)


@pytest.fixture(scope="module")
def scores(target, retrain, corpus, auc_retrain):
    """VerbMem_f and PrivLeak of both models, computed once."""
    return {
        name: evaluate_model(*pair, corpus, ["verbmem_f", "privleak"], auc_retrain, batch_size=8, progress=False)
        for name, pair in (("target", target), ("retrain", retrain))
    }


def sequential_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """The MUSE reference loop: one prompt, `model.generate` without sampling."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1] :].tolist()


def test_batched_generation_equals_one_at_a_time_token_for_token(target, corpus):
    model, tokenizer = target
    prompts = [
        "",
        "Leisburcrest",
        corpus.verbmem_forget[0].prompt,
        corpus.verbmem_forget[1].prompt[:40],
        knowmem_prompt(corpus.knowmem_forget_icl, corpus.knowmem_forget[0].question),
        corpus.forget[0] + "\n" + corpus.forget[1],
    ]
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    assert max(lengths) > 10 * min(lengths)
    batched = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=12, batch_size=4, progress=False)
    assert batched == [sequential_greedy(model, tokenizer, p, 12) for p in prompts]


def test_stop_strings_give_muse_cut_of_the_full_continuation(target, corpus):
    model, tokenizer = target
    prompts = [knowmem_prompt(corpus.knowmem_retain_icl, qa.question) for qa in corpus.knowmem_retain[:4]]
    got = generate_greedy(model, tokenizer, prompts, 32, STOP_STRINGS, batch_size=2, progress=False)
    full = [cut_at_stop(decode(tokenizer, sequential_greedy(model, tokenizer, p, 32)), STOP_STRINGS) for p in prompts]
    assert got == full


def test_rows_leaving_the_batch_early_keep_the_others_exact(target, corpus):
    """Rows that hit EOS or a stop string leave the running batch mid-way; every other row is unaffected."""
    model, tokenizer = target
    prompts = [knowmem_prompt(corpus.knowmem_forget_icl, qa.question) for qa in corpus.knowmem_forget[:5]]
    prompts += [it.prompt for it in corpus.verbmem_forget[:3]] + ["Leisburcrest", corpus.forget[0][:60]]
    got = greedy_token_ids(model, tokenizer, prompts, 32, STOP_STRINGS, batch_size=10, progress=False)
    full = [sequential_greedy(model, tokenizer, p, 32) for p in prompts]
    assert len({len(ids) for ids in got}) > 2  # rows really stop at different steps
    for ids, want in zip(got, full):
        assert ids == want[: len(ids)]
        assert cut_at_stop(decode(tokenizer, ids), STOP_STRINGS) == cut_at_stop(decode(tokenizer, want), STOP_STRINGS)


def test_model_still_trains_after_evaluation(tiny_benchmark, corpus):
    """Evaluation runs under inference mode; nothing it leaves in the model may block a later backward pass."""
    model, tokenizer = load_model(tiny_benchmark.target_dir)
    evaluate_model(model, tokenizer, corpus, ["knowmem_f", "privleak"], 0.5, batch_size=8, progress=False)
    ids = torch.tensor([tokenizer(corpus.forget[0]).input_ids[:32]])
    with torch.enable_grad():
        model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_overlong_prompts_are_cut_from_the_left_with_a_counted_warning(target, corpus):
    model, tokenizer = target
    long_prompt = " ".join(corpus.forget * 3)
    budget = model.config.max_position_embeddings - 8  # room for the 8 new tokens
    with pytest.warns(UserWarning, match=f"1 of 2 prompts were longer than {budget} tokens"):
        out = greedy_token_ids(model, tokenizer, [long_prompt, "Leisburcrest"], 8, progress=False)
    ids = tokenizer(long_prompt).input_ids
    kept = torch.tensor([ids[:1] + ids[len(ids) - budget + 1 :]])  # BOS, then the last budget - 1 tokens
    want = model.generate(kept, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out == [want[0, budget:].tolist(), sequential_greedy(model, tokenizer, "Leisburcrest", 8)]


def test_verbmem_reference_is_gt_cut_to_128_tokens_with_bos(target, corpus):
    _, tokenizer = target
    gt = " ".join(corpus.forget)
    ids = tokenizer(gt).input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 128
    assert reference_text(tokenizer, gt) == decode(tokenizer, ids[1:128])  # BOS counts towards the 128


def test_target_remembers_forget_text_and_retrain_does_not(scores):
    target, retrain = scores["target"], scores["retrain"]
    assert target["verbmem_f"]["value"] >= 90
    assert retrain["verbmem_f"]["value"] < target["verbmem_f"]["value"] - 30
    assert len(target["verbmem_f"]["items"]) == 8 and {"output", "reference", "score"} <= set(
        target["verbmem_f"]["items"][0]
    )


def test_target_answers_forget_questions_and_retrain_does_not(target, retrain, corpus):
    assert knowmem(*target, corpus.knowmem_forget[:8], corpus.knowmem_forget_icl, progress=False)["value"] >= 80
    assert knowmem(*retrain, corpus.knowmem_forget[:8], corpus.knowmem_forget_icl, progress=False)["value"] <= 20
    assert knowmem(*retrain, corpus.knowmem_retain[:8], corpus.knowmem_retain_icl, progress=False)["value"] >= 80


def test_retrain_model_is_worse_on_forget_text_than_on_retain_text(retrain, corpus):
    model, tokenizer = retrain

    def nll_per_token(docs):
        rows = document_nll(model, tokenizer, docs, batch_size=8, progress=False, desc="")
        return sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows)

    assert nll_per_token(corpus.forget[:8]) > 2 * nll_per_token(corpus.retain[:8])


def test_privleak_target_strongly_negative_retrain_exactly_zero(scores, auc_retrain):
    target, retrain = scores["target"]["privleak"], scores["retrain"]["privleak"]
    assert target["value"] <= -50 and target["auc"] < auc_retrain
    assert retrain["value"] == 0.0 and retrain["auc"] == auc_retrain
    assert set(target["attack_aucs"]) == {"Min-40%", "LOSS", "zlib", "Min-40%++"}
    assert [it["split"] for it in target["items"]].count("holdout") == 8


def test_retrain_auc_is_cached_per_corpus(retrain_copy, corpus, auc_retrain, monkeypatch, tmp_path):
    cache_file = retrain_copy.parent / CACHE_FILE
    assert not (retrain_copy / CACHE_FILE).exists()  # the retrain checkpoint is an input: never written
    cache = json.loads(cache_file.read_text())
    assert [entry["auc"] for entry in cache.values()] == [auc_retrain]
    monkeypatch.setattr(privleak_module, "load_model", lambda *a, **k: pytest.fail("cache was not used"))
    assert retrain_auc(retrain_copy, corpus, progress=False, cache_dir=retrain_copy.parent) == auc_retrain
    monkeypatch.undo()
    other = shutil.copytree(corpus.root, tmp_path / "corpus")
    holdout = json.loads((other / "privleak/holdout.json").read_text())
    (other / "privleak/holdout.json").write_text(json.dumps(holdout[:-1]))
    retrain_auc(retrain_copy, other, progress=False, cache_dir=retrain_copy.parent)
    assert len(json.loads(cache_file.read_text())) == 2


def test_cli_writes_one_json_with_every_requested_metric(tiny_benchmark, retrain_copy, auc_retrain, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = [
        "evaluate",
        "--model",
        str(tiny_benchmark.target_dir),
        "--corpus",
        str(tiny_benchmark.corpus_dir),
        "--metrics",
        "privleak",
        "utility",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv + ["--retrain", str(retrain_copy)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["metrics"] == ["privleak", "utility"] and result["settings"]["dtype"] == "fp32"
    assert result["metrics"]["privleak"]["auc_retrain"] == auc_retrain
    assert result["metrics"]["utility"]["ppl_holdout"] > result["metrics"]["utility"]["ppl_retain"]
    assert main(argv) == 2
    assert "privleak' needs the retrain model" in capsys.readouterr().err
