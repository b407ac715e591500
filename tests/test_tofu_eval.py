"""TOFU evaluation plumbing: prompt formats, answer log-probabilities, the result's shape, and the tiny benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qunlearn.cli import main
from qunlearn.config import ModelShape
from qunlearn.data.tofu import TofuData, TofuItem, load_tofu
from qunlearn.errors import UserInputError
from qunlearn.evaluate.generate import greedy_from_ids
from qunlearn.evaluate.tofu import (
    UTILITY_KEYS,
    PromptFormat,
    _Run,
    encode_qa,
    evaluate_tofu,
    forget_score,
    mean_logprobs,
    read_retain_truth_ratios,
    resolve_prompt_format,
)
from qunlearn.models.tiny import build_model
from qunlearn.models.tokenizer import train_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
    "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
ITEM = TofuItem("Who wrote Tides?", "Ana Bel wrote it.", "It was Ana Bel.", ("Cy Dow wrote it.", "Ed Fo wrote it."))


@pytest.fixture(scope="module")
def tiny_lm():
    texts = [
        f"Question: {ITEM.question}\nAnswer: {a}"
        for a in (ITEM.answer, ITEM.paraphrased_answer, *ITEM.perturbed_answers)
    ] * 3
    tokenizer = train_tokenizer(texts, vocab_size=320)
    shape = ModelShape(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=320)
    return build_model(shape, tokenizer, seed=0).eval(), tokenizer


def test_plain_prompt_is_bos_question_answer_then_eos(tiny_lm):
    _, tok = tiny_lm
    ids, n_prompt = encode_qa(tok, PromptFormat("plain"), ITEM.question, ITEM.answer)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[:n_prompt], skip_special_tokens=True) == f"Question: {ITEM.question}\nAnswer: "
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == ITEM.answer


def test_chat_template_carries_the_system_prompt_and_answer_turn(tiny_lm):
    _, tok = tiny_lm
    tok.chat_template = CHAT_TEMPLATE
    try:
        fmt = resolve_prompt_format(tok)
        assert fmt == PromptFormat("chat", "You are a helpful assistant.", "10 Apr 2025")
        ids, n_prompt = encode_qa(tok, fmt, ITEM.question, ITEM.answer)
        assert tok.decode(ids[:n_prompt]) == f"<system>You are a helpful assistant.<user>{ITEM.question}<assistant>"
        assert tok.decode(ids[n_prompt:]) == ITEM.answer + tok.eos_token  # the template's EOS, not a second one
        assert resolve_prompt_format(tok, "plain").kind == "plain"
    finally:
        tok.chat_template = None


def test_chat_without_template_says_how_to_choose_plain(tiny_lm):
    _, tok = tiny_lm
    assert resolve_prompt_format(tok).kind == "plain"
    with pytest.raises(UserInputError, match="--prompt-format plain"):
        resolve_prompt_format(tok, "chat")


def test_mean_logprob_covers_answer_tokens_and_eos_only(tiny_lm):
    model, tok = tiny_lm
    fmt = PromptFormat("plain")
    ids, n_prompt = encode_qa(tok, fmt, ITEM.question, ITEM.answer)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    want = np.mean([logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids))])
    got = mean_logprobs(_Run(model, tok, fmt, 4, False, 4), [(ITEM.question, ITEM.answer)], "test")
    assert got == pytest.approx([want], abs=1e-5)


def test_pad_tokens_inside_the_prompt_are_masked_as_openunlearning_does(tiny_lm):
    """With pad = EOS and a template that ends every turn in EOS (Llama-3), the turn ends are hidden from attention
    both when scoring answers and when generating (OpenUnlearning's mask: input_ids != pad_token_id)."""
    model, tok = tiny_lm
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    pad = tok.pad_token
    tok.pad_token = tok.eos_token
    try:
        fmt = resolve_prompt_format(tok)
        ids, n_prompt = encode_qa(tok, fmt, ITEM.question, ITEM.answer)
        assert ids[:n_prompt].count(tok.eos_token_id) == 2  # after the system and the user turn
        mask = torch.tensor([[int(t != tok.eos_token_id) for t in ids]])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids]), attention_mask=mask).logits[0].float(), -1)
        want = np.mean([logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids))])
        run = _Run(model, tok, fmt, 4, False, 6)
        assert mean_logprobs(run, [(ITEM.question, ITEM.answer)], "test") == pytest.approx([want], abs=1e-5)
        prompt = ids[:n_prompt]
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.tensor([[int(t != tok.eos_token_id) for t in prompt]]),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        assert (
            greedy_from_ids(model, tok, [prompt], 6, progress=False, masked_id=tok.pad_token_id)[0]
            == hf[0, n_prompt:].tolist()
        )
    finally:
        tok.chat_template, tok.pad_token = None, pad


def test_result_has_openunlearning_summary_and_forget_quality_against_reference(tiny_lm):
    model, tok = tiny_lm
    data = TofuData("mem", "forget01", [ITEM, ITEM], [ITEM], [ITEM], [ITEM])
    alone = evaluate_tofu(model, tok, data, progress=False, max_new_tokens=4)
    assert alone["summary"]["forget_quality"] is None and alone["prompt_format"]["kind"] == "plain"
    assert set(UTILITY_KEYS) <= set(alone["summary"]) and 0 <= alone["summary"]["model_utility"] <= 1
    assert len(alone["forget_truth_ratios"]) == 2
    assert forget_score(alone) == alone["summary"]["forget_Q_A_Prob"] == alone["sets"]["forget"]["probability"]
    same = evaluate_tofu(model, tok, data, alone["forget_truth_ratios"], progress=False, max_new_tokens=4)
    assert same["summary"]["forget_quality"] == pytest.approx(1.0)


def test_retain_truth_ratios_read_from_qunlearn_or_openunlearning_logs(tmp_path):
    ours, theirs, bad = tmp_path / "ours.json", tmp_path / "TOFU_EVAL.json", tmp_path / "bad.json"
    ours.write_text(json.dumps({"forget_truth_ratios": [0.5, 2]}))
    theirs.write_text(
        json.dumps(
            {"forget_truth_ratio": {"agg_value": 0.7, "value_by_index": {"0": {"score": 0.25}, "1": {"score": 1.5}}}}
        )
    )
    bad.write_text(json.dumps({"forget_quality": {"agg_value": 0.1}}))
    assert read_retain_truth_ratios(str(ours)) == [0.5, 2.0]
    assert read_retain_truth_ratios(str(theirs)) == [0.25, 1.5]
    with pytest.raises(UserInputError, match="bad.json: holds neither"):
        read_retain_truth_ratios(str(bad))


@pytest.mark.slow
def test_tiny_tofu_benchmark_target_knows_forget_set_retain_model_does_not(tmp_path):
    """`prepare --flavour tofu` then `evaluate --benchmark tofu`: the target answers forget questions, the
    retain model never does, and forget quality separates them (31 s on the shared 2-core CPU, idle)."""
    bench = tmp_path / "bench"
    assert main(["prepare", "--flavour", "tofu", "--preset", "tiny", "--out", str(bench)]) == 0
    data = load_tofu(bench / "corpus", "forget10")
    assert data.summary() == {"forget": 12, "retain": 12, "real_authors": 8, "world_facts": 8}
    results = {}
    for name in ("target", "retrain"):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "evaluate",
                    "--benchmark",
                    "tofu",
                    "--model",
                    str(bench / "models" / name),
                    "--retain-model",
                    str(bench / "models" / "retrain"),
                    "--data",
                    str(bench / "corpus"),
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        results[name] = json.loads(out.read_text())
    exact = {
        name: np.mean([i["output"] == i["answer"] for i in r["sets"]["forget"]["items"]]) for name, r in results.items()
    }
    assert exact["target"] >= 0.5 and exact["retrain"] == 0.0
    target, retain = results["target"]["summary"], results["retrain"]["summary"]
    assert target["forget_Q_A_Prob"] > 10 * retain["forget_Q_A_Prob"]
    assert retain["forget_quality"] == pytest.approx(1.0) and target["forget_quality"] < 0.01
    audit_dir = tmp_path / "audit"
    assert (
        main(
            [
                "audit",
                "--benchmark",
                "tofu",
                "--target",
                str(bench / "models" / "target"),
                "--unlearned",
                str(bench / "models" / "retrain"),
                "--retrain",
                str(bench / "models" / "retrain"),
                "--data",
                str(bench / "corpus"),
                "--attacks",
                "rtn4",
                "relearn",
                "--out",
                str(audit_dir),
            ]
        )
        == 0
    )
    audit = json.loads((audit_dir / "audit.json").read_text())
    assert audit["benchmark"] == "tofu" and audit["info"]["split"] == {
        "rule": "first half of the forget questions: relearning; second half: scored",
        "relearn": 6,
        "scored": 6,
    }
    assert [s["name"] for s in audit["signals"]] == ["forget_Q_A_Prob", "forget_Q_A_ROUGE", "log10_forget_quality"]
    base = audit["baselines"]
    assert base["target"]["forget_Q_A_Prob"] > 10 * base["unlearned"]["forget_Q_A_Prob"]
    assert base["unlearned"]["forget_quality"] == pytest.approx(1.0) and base["target"]["log10_forget_quality"] < -1
    rtn4 = next(a for a in audit["attacks"] if a["name"] == "rtn4")
    assert rtn4["verdict"] == "holds"  # a model that never saw the forget set has nothing for quantization to restore
    assert "Integrity checks passed" in (audit_dir / "audit.md").read_text()
    # the README's two-command recipe: the retain model's evaluation, then the audit reading it
    retain_logs = tmp_path / "retrain.json"  # written above by `evaluate --benchmark tofu` on the retain model
    logged = tmp_path / "audit-logs"
    assert (
        main(
            [
                "audit",
                "--benchmark",
                "tofu",
                "--target",
                str(bench / "models" / "target"),
                "--unlearned",
                str(bench / "models" / "retrain"),
                "--retain-logs",
                str(retain_logs),
                "--data",
                str(bench / "corpus"),
                "--attacks",
                "bf16",
                "--out",
                str(logged),
            ]
        )
        == 0
    )
    from_logs = json.loads((logged / "audit.json").read_text())
    assert from_logs["baselines"]["unlearned"]["forget_quality"] == pytest.approx(1.0)
    assert from_logs["baselines"]["target"]["log10_forget_quality"] == pytest.approx(
        base["target"]["log10_forget_quality"]
    )
