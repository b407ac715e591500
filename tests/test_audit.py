"""`qunlearn audit` on the tiny benchmark: verdicts for the target (recovers) and the retrain model (holds)."""

from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from qunlearn.audit.attacks import expand_attacks
from qunlearn.audit.render import recovery_plot, to_html, to_markdown
from qunlearn.audit.split import split_forget
from qunlearn.audit.verdict import Signal, Thresholds, level, recovery, signal_verdict, summary, verdict, worst_attack
from qunlearn.cli import main
from qunlearn.data.muse import load_corpus
from qunlearn.models import io
from qunlearn.quant.registry import QUANTIZERS

ATTACKS = ["rtn8", "rtn4", "relearn", "bf16"]
ARGS = ["--attacks", *ATTACKS, "--relearn-steps", "3", "--relearn-lr", "1e-3"]


def _audit(bench, unlearned, out, *extra) -> dict:
    rc = main(
        [
            "audit",
            "--target",
            str(bench.target_dir),
            "--unlearned",
            str(unlearned),
            "--corpus",
            str(bench.corpus_dir),
            "--out",
            str(out),
            *ARGS,
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((out / "audit.json").read_text())


@pytest.fixture(scope="module")
def audits(tiny_benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    retrain = shutil.copytree(tiny_benchmark.retrain_dir, out / "retrain-model")  # PrivLeak caches AUC_retrain there
    return {
        "target": _audit(tiny_benchmark, tiny_benchmark.target_dir, out / "target", "--retrain", str(retrain)),
        "retrain": _audit(tiny_benchmark, tiny_benchmark.retrain_dir, out / "retrain"),
        "out": out,
    }


def test_three_levels_with_hand_made_numbers():
    assert recovery(60, 10, 110) == pytest.approx(0.5)
    assert level(0.51) == "recovers" and level(0.5) == "partial"  # above the threshold, not at it
    assert level(0.26) == "partial" and level(0.25) == "holds" and level(-0.2) == "holds"
    assert level(None) == "recovers"  # nothing was forgotten
    assert level(0.3, Thresholds(partial=0.4, recovers=0.6)) == "holds"
    forget = Signal("knowmem_f", "KnowMem_f")
    assert signal_verdict(forget, 61, 10, 110)["verdict"] == "recovers"
    assert signal_verdict(forget, 40, 10, 110)["verdict"] == "partial"
    assert signal_verdict(forget, 30, 10, 110)["verdict"] == "holds"
    nothing = signal_verdict(forget, 50, 50, 50.5)
    assert nothing["recovery"] is None and nothing["verdict"] == "recovers"
    assert verdict({"a": {"verdict": "holds"}, "b": {"verdict": "partial"}}) == "partial"
    assert verdict({"a": {"verdict": "partial"}, "b": {"verdict": "recovers"}}) == "recovers"
    with pytest.raises(ValueError, match="partial-threshold"):
        Thresholds(partial=0.6, recovers=0.5).validate()


def test_membership_signal_counts_toward_the_targets_value():
    # PrivLeak: the target (saw the data) sits at -100, the unlearned model at -47; more negative = knows more.
    privleak = Signal("privleak", "PrivLeak", knows="lower", kind="membership")
    assert recovery(-100, -47, -100, knows="lower") == pytest.approx(1.0)
    assert signal_verdict(privleak, -100, -47, -100)["verdict"] == "recovers"
    assert signal_verdict(privleak, -65, -47, -100)["recovery"] == pytest.approx(18 / 53)
    assert signal_verdict(privleak, -65, -47, -100)["verdict"] == "partial"
    assert signal_verdict(privleak, -50, -47, -100)["verdict"] == "holds"
    assert signal_verdict(privleak, -20, -47, -100)["verdict"] == "holds"  # moved away from the target
    assert signal_verdict(privleak, -99, -99.5, -100)["recovery"] is None  # gap 0.5 <= epsilon: nothing forgotten


def test_issue_example_npo_gdr_relearning_no_longer_reads_holds():
    # The demo's npo_gdr under relearning: VerbMem_f 20 -> 57 is 46.5% of the gap; PrivLeak -47 -> -100 (the target's).
    verbmem_target = 20 + 37 / 0.465
    per_signal = {
        "verbmem_f": signal_verdict(Signal("verbmem_f", "VerbMem_f"), 57, 20, verbmem_target),
        "privleak": signal_verdict(Signal("privleak", "PrivLeak", "lower", kind="membership"), -100, -47, -100),
    }
    assert per_signal["verbmem_f"]["recovery"] == pytest.approx(0.465)
    assert per_signal["verbmem_f"]["verdict"] == "partial"
    assert verdict({"verbmem_f": per_signal["verbmem_f"]}) == "partial"  # without the membership signal
    assert verdict(per_signal) == "recovers"  # with it


def test_headline_names_the_one_worst_attack():
    def entry(name, verdict_, *recs):
        return {"name": name, "verdict": verdict_, "recovery": {f"m{i}": {"recovery": r} for i, r in enumerate(recs)}}

    entries = [
        entry("rtn8", "holds", 0.01, 0.0),
        entry("rtn4", "partial", 0.3, 0.1),
        entry("relearn", "recovers", 0.465, 1.0),
        entry("bf16", "recovers", 0.6, 0.2),
    ]
    assert worst_attack(entries)["name"] == "relearn"  # same level as bf16, larger recovery
    text = summary(entries, {"m0": "VerbMem_f", "m1": "PrivLeak"})
    assert text.startswith("Worst attack: relearn recovers (VerbMem_f 46.5%, PrivLeak 100.0% of the gap)")
    assert "Of 4 attacks: 2 recovers, 1 partial, 1 holds." in text
    assert summary(entries[:1], {}).startswith("Unlearning holds under all 1 attacks; the strongest, rtn8")


def test_relearning_slice_never_touches_evaluation_half(tiny_benchmark):
    corpus = load_corpus(tiny_benchmark.corpus_dir)
    split = split_forget(corpus)
    assert split.relearn_docs and split.counts["eval_verbmem"] and split.counts["eval_knowmem"]
    ev = split.eval_corpus
    assert set(ev.verbmem_forget) == set(corpus.verbmem_forget[len(corpus.verbmem_forget) // 2 :])
    assert set(ev.knowmem_forget) == set(corpus.knowmem_forget[len(corpus.knowmem_forget) // 2 :])
    for doc in split.relearn_docs:
        assert doc in corpus.forget
        for item in ev.verbmem_forget:
            assert item.prompt.strip() not in doc and item.gt.strip() not in doc
        for qa in ev.knowmem_forget:
            assert qa.question not in doc and not re.search(rf"(?<!\w){re.escape(qa.answer)}(?!\w)", doc)
    # PrivLeak's forget texts leave out every text of the relearning slice (the relearned model trained on it).
    assert ev.privleak_forget and set(ev.privleak_forget) < set(corpus.privleak_forget)
    assert not any(text in doc for text in ev.privleak_forget for doc in split.relearn_docs)
    # The evaluation half's subjects (the synthetic entities) never appear in the training slice.
    entities = json.loads((tiny_benchmark.corpus_dir / "entities.json").read_text())["forget"]
    eval_names = [e["name"] for e in entities if any(e["name"] in qa.question for qa in ev.knowmem_forget)]
    assert eval_names and not any(name in doc for name in eval_names for doc in split.relearn_docs)


def test_target_recovers_on_every_attack(audits):
    audit = audits["target"]
    assert [(s["name"], s["kind"]) for s in audit["signals"]] == [
        ("knowmem_f", "forget"),
        ("verbmem_f", "forget"),
        ("privleak", "membership"),
    ]
    assert [a["name"] for a in audit["attacks"]] == ATTACKS
    assert all(a["verdict"] == "recovers" for a in audit["attacks"])


def test_retrain_holds(audits):
    audit = audits["retrain"]
    assert [s["name"] for s in audit["signals"]] == ["knowmem_f", "verbmem_f"]  # no --retrain: no PrivLeak
    assert all(a["verdict"] == "holds" for a in audit["attacks"]), [
        (a["name"], a["recovery"]) for a in audit["attacks"]
    ]
    assert audit["verdict"] == "holds"


def test_verdicts_match_numbers(audits):
    for audit in (audits["target"], audits["retrain"]):
        base, t = audit["baselines"], audit["thresholds"]
        sign = {s["name"]: 1 if s["knows"] == "higher" else -1 for s in audit["signals"]}
        for attack in audit["attacks"]:
            verdicts = []
            for metric, rec in attack["recovery"].items():
                attacked, unl, tgt = attack["scores"][metric], base["unlearned"][metric], base["target"][metric]
                assert (rec["attacked"], rec["unlearned"], rec["target"]) == (attacked, unl, tgt)
                if sign[metric] * (tgt - unl) <= 1.0:
                    assert rec["recovery"] is None and rec["verdict"] == "recovers"
                else:
                    assert rec["recovery"] == pytest.approx((attacked - unl) / (tgt - unl))
                    expected = (
                        "recovers"
                        if rec["recovery"] > t["recovers"]
                        else "partial"
                        if rec["recovery"] > t["partial"]
                        else "holds"
                    )
                    assert rec["verdict"] == expected
                verdicts.append(rec["verdict"])
            assert attack["verdict"] == max(verdicts, key=["holds", "partial", "recovers"].index)
            if attack["kind"] == "quantization":
                assert 0 <= attack["code_flip_fraction"] <= 1
        assert audit["worst_attack"] in audit["summary"]


def test_update_size_is_in_every_audit(audits):
    same = audits["target"]["update_size"]  # the target audited against itself: nothing moved
    assert same["overall"]["moved"] == 0 and "identical" in audits["target"]["update_size_reading"]
    moved = audits["retrain"]["update_size"]  # a separately trained model: every weight moved, by many steps
    assert moved["overall"]["moved_fraction"] > 0.99 and moved["overall"]["median_change_in_steps"] > 0.5
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(moved["by_type"])
    md = (audits["out"] / "retrain" / "audit.md").read_text()
    assert "## Update size" in md and "not expected to undo" in md and "| q_proj |" in md


def test_html_is_self_contained_with_plot(audits):
    for name in ("target", "retrain"):
        page = (audits["out"] / name / "audit.html").read_text()
        assert "data:image/png;base64," in page
        assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
        assert "holds" in page or "recovers" in page
        md = (audits["out"] / name / "audit.md").read_text()
        assert "| attack | verdict |" in md and "more than 50% of the target − unlearned gap" in md
        assert "partial when more than 25%" in md
        assert "Integrity checks passed at every load of target, unlearned" in md


def test_a_scheme_with_a_caveat_is_named_under_the_verdict_table(audits):
    audit = audits["retrain"]
    rtn4 = next(a for a in audit["attacks"] if a["name"] == "rtn4")
    with_int8 = audit | {"attacks": [*audit["attacks"], rtn4 | {"name": "bnb-int8", "quantizer": "bnb-int8"}]}
    caveat = f"bnb-int8 caveat: {QUANTIZERS['bnb-int8'].caveat}."
    md = to_markdown(with_int8)
    assert md.index("| bnb-int8 |") < md.index(f"- {caveat}") < md.index("## Update size")
    assert html.escape(caveat) in to_html(with_int8, recovery_plot(with_int8))
    assert "caveat" not in to_markdown(audit)  # rtn8, rtn4, relearn, bf16: none has one


def test_each_quantization_attacks_fallbacks_are_in_audit_json_and_said_once_in_its_notes(audits):
    audit = audits["retrain"]  # audit.json as written; the tiny model's 176-weight rows do not take groups of 128
    down = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    per_row = {"layers": down, "used": "per-row scales", "reason": "group size 128 does not divide rows of 176 weights"}
    assert {a["name"]: a["fallbacks"] for a in audit["attacks"]} == {
        "rtn8": [per_row],
        "rtn4": [per_row],
        "relearn": [],
        "bf16": [],
    }
    line = (
        "rtn8, rtn4 fallback: group size 128 does not divide rows of 176 weights; per-row scales used instead for "
        "2 layers (e.g. model.layers.0.mlp.down_proj)."
    )
    md = (audits["out"] / "retrain" / "audit.md").read_text()
    assert md.count(line) == 1 and md.index(f"- {line}") < md.index("## Update size")
    assert html.escape(line) in (audits["out"] / "retrain" / "audit.html").read_text()


def test_bad_attack_is_a_one_line_error(tiny_benchmark, tmp_path, capsys):
    rc = main(
        [
            "audit",
            "--target",
            str(tiny_benchmark.target_dir),
            "--unlearned",
            str(tiny_benchmark.retrain_dir),
            "--corpus",
            str(tiny_benchmark.corpus_dir),
            "--out",
            str(tmp_path),
            "--attacks",
            "rtn5",
        ]
    )
    assert rc == 2 and "unknown attack 'rtn5'" in capsys.readouterr().err


def test_audit_in_bf16_loads_every_model_in_bf16_and_casts_only_the_fp16_attack(tiny_benchmark, tmp_path, monkeypatch):
    loaded, real = [], AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        model, info = real(*args, **kwargs)
        loaded.append((Path(args[0]).name, next(model.parameters()).dtype))
        return model, info

    monkeypatch.setattr(io.AutoModelForCausalLM, "from_pretrained", spy)
    bench, out = tiny_benchmark, tmp_path / "audit"
    argv = ["audit", "--target", bench.target_dir, "--unlearned", bench.target_dir, "--corpus", bench.corpus_dir]
    argv += ["--retrain", bench.retrain_dir, "--dtype", "bf16", "--attacks", "rtn4", "relearn", "fp16"]
    assert main([str(a) for a in [*argv, "--relearn-steps", "2", "--out", out]]) == 0
    bf16, fp16 = torch.bfloat16, torch.float16
    # retrain (AUC_retrain), target, unlearned, then the attacked copies: rtn4, relearn, fp16
    assert [dtype for _, dtype in loaded] == [bf16, bf16, bf16, bf16, bf16, fp16]
    assert [name for name, _ in loaded][:2] == ["retrain", "target"]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["settings"]["dtype"] == "bf16" and audit["skipped"] == []
    assert [a["name"] for a in audit["attacks"]] == ["rtn4", "relearn", "fp16"]
    # the target audited as its own unlearned model: nothing was forgotten, so every attack recovers
    assert all(a["verdict"] == "recovers" for a in audit["attacks"]) and "privleak" in audit["attacks"][0]["scores"]
    assert "Every model was loaded in bf16 (--dtype bf16)" in (out / "audit.md").read_text()


def test_the_precision_attack_to_the_audits_own_dtype_is_skipped_or_refused(tiny_benchmark, tmp_path, capsys):
    attacks, skipped = expand_attacks(None, "bf16")
    assert [a.name for a in attacks if a.kind == "precision"] == ["fp16"]
    reason = "the audit loads every model in bf16 (--dtype bf16): the cast changes nothing"
    assert {"name": "bf16", "reason": reason} in skipped
    assert [a.name for a in expand_attacks(None)[0] if a.kind == "precision"] == ["fp16", "bf16"]  # fp32: both
    with pytest.raises(ValueError, match="attack fp16: the audit loads every model in fp16"):
        expand_attacks(["rtn4", "fp16"], "float16")
    bench = tiny_benchmark
    argv = ["audit", "--target", bench.target_dir, "--unlearned", bench.retrain_dir, "--corpus", bench.corpus_dir]
    assert main([str(a) for a in [*argv, "--dtype", "bf16", "--attacks", "bf16", "--out", tmp_path]]) == 2
    assert "attack bf16: the audit loads every model in bf16" in capsys.readouterr().err


def test_demo_layout_resolves_each_unlearned_model(tmp_path):
    from qunlearn.cli import build_parser
    from qunlearn.commands.audit import _jobs

    for rel in ("benchmark/models/target", "benchmark/models/retrain", "models/ga", "models/npo_sure"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.json").write_text("{}")
    (tmp_path / "models/quantized/ga@rtn4").mkdir(parents=True)
    jobs = _jobs(build_parser().parse_args(["audit", "--demo", "--out", str(tmp_path)]))
    assert [(i.unlearned.name, out) for i, out in jobs] == [
        ("ga", tmp_path / "audit/ga"),
        ("npo_sure", tmp_path / "audit/npo_sure"),
    ]
    assert all(i.target == tmp_path / "benchmark/models/target" and i.retrain is not None for i, _ in jobs)
    assert main(["audit", "--demo", "--out", str(tmp_path / "nothing")]) == 2
    assert main(["audit", "--unlearned", str(tmp_path)]) == 2


def test_lmeval_not_installed_names_the_extra(monkeypatch):
    from qunlearn.errors import UserInputError
    from qunlearn.evaluate.lmeval import task_manager

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(UserInputError, match=re.escape('pip install -e ".[lmeval]"')):
        task_manager(["wmdp_bio"])
