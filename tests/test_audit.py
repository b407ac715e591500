"""`qunlearn audit` on the tiny benchmark: verdicts for the target (recovers) and the retrain model (holds)."""

from __future__ import annotations

import json
import re

import pytest

from qunlearn.audit.split import split_forget
from qunlearn.audit.verdict import metric_verdict, recovery, verdict
from qunlearn.cli import main
from qunlearn.data.muse import load_corpus

ATTACKS = ["rtn8", "rtn4", "relearn", "bf16"]
ARGS = ["--attacks", *ATTACKS, "--relearn-steps", "3", "--relearn-lr", "1e-3"]


def _audit(bench, unlearned, out) -> dict:
    rc = main(["audit", "--target", str(bench.target_dir), "--unlearned", str(unlearned),
               "--corpus", str(bench.corpus_dir), "--out", str(out), *ARGS])
    assert rc == 0
    return json.loads((out / "audit.json").read_text())


@pytest.fixture(scope="module")
def audits(tiny_benchmark, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return {"target": _audit(tiny_benchmark, tiny_benchmark.target_dir, out / "target"),
            "retrain": _audit(tiny_benchmark, tiny_benchmark.retrain_dir, out / "retrain"), "out": out}


def test_verdict_rule():
    assert recovery(60, 10, 110) == pytest.approx(0.5)
    assert metric_verdict(61, 10, 110)["verdict"] == "recovers"
    assert metric_verdict(59, 10, 110)["verdict"] == "holds"
    assert metric_verdict(59, 10, 110, threshold=0.4)["verdict"] == "recovers"
    assert metric_verdict(50, 50, 50.5)["recovery"] is None and metric_verdict(50, 50, 50.5)["verdict"] == "recovers"
    assert verdict({"a": {"verdict": "holds"}, "b": {"verdict": "recovers"}}) == "recovers"


def test_relearning_slice_never_touches_evaluation_half(tiny_benchmark):
    corpus = load_corpus(tiny_benchmark.corpus_dir)
    split = split_forget(corpus)
    assert split.relearn_docs and split.counts["eval_verbmem"] and split.counts["eval_knowmem"]
    ev = split.eval_corpus
    assert set(ev.verbmem_forget) == set(corpus.verbmem_forget[len(corpus.verbmem_forget) // 2:])
    assert set(ev.knowmem_forget) == set(corpus.knowmem_forget[len(corpus.knowmem_forget) // 2:])
    for doc in split.relearn_docs:
        assert doc in corpus.forget
        for item in ev.verbmem_forget:
            assert item.prompt.strip() not in doc and item.gt.strip() not in doc
        for qa in ev.knowmem_forget:
            assert qa.question not in doc and not re.search(rf"(?<!\w){re.escape(qa.answer)}(?!\w)", doc)
    # The evaluation half's subjects (the synthetic entities) never appear in the training slice.
    entities = json.loads((tiny_benchmark.corpus_dir / "entities.json").read_text())["forget"]
    eval_names = [e["name"] for e in entities if any(e["name"] in qa.question for qa in ev.knowmem_forget)]
    assert eval_names and not any(name in doc for name in eval_names for doc in split.relearn_docs)


def test_target_recovers_on_every_attack(audits):
    audit = audits["target"]
    assert [a["name"] for a in audit["attacks"]] == ATTACKS
    assert all(a["verdict"] == "recovers" for a in audit["attacks"])


def test_retrain_holds(audits):
    audit = audits["retrain"]
    assert all(a["verdict"] == "holds" for a in audit["attacks"]), [(a["name"], a["recovery"]) for a in audit["attacks"]]
    assert audit["verdict"] == "holds"


def test_verdicts_match_numbers(audits):
    for audit in (audits["target"], audits["retrain"]):
        base = audit["baselines"]
        for attack in audit["attacks"]:
            verdicts = []
            for metric, rec in attack["recovery"].items():
                attacked, unl, tgt = attack["scores"][metric], base["unlearned"][metric], base["target"][metric]
                assert (rec["attacked"], rec["unlearned"], rec["target"]) == (attacked, unl, tgt)
                if tgt - unl <= audit["epsilon"]:
                    assert rec["recovery"] is None and rec["verdict"] == "recovers"
                else:
                    assert rec["recovery"] == pytest.approx((attacked - unl) / (tgt - unl))
                    assert rec["verdict"] == ("recovers" if rec["recovery"] > audit["threshold"] else "holds")
                verdicts.append(rec["verdict"])
            assert attack["verdict"] == ("recovers" if "recovers" in verdicts else "holds")
            if attack["kind"] == "quantization":
                assert 0 <= attack["code_flip_fraction"] <= 1


def test_html_is_self_contained_with_plot(audits):
    for name in ("target", "retrain"):
        page = (audits["out"] / name / "audit.html").read_text()
        assert "data:image/png;base64," in page
        assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
        assert "holds" in page or "recovers" in page
        markdown = (audits["out"] / name / "audit.md").read_text()
        assert "| attack | verdict |" in markdown
        assert "Integrity checks passed at every load of target, unlearned" in markdown


def test_bad_attack_is_a_one_line_error(tiny_benchmark, tmp_path, capsys):
    rc = main(["audit", "--target", str(tiny_benchmark.target_dir), "--unlearned", str(tiny_benchmark.retrain_dir),
               "--corpus", str(tiny_benchmark.corpus_dir), "--out", str(tmp_path), "--attacks", "rtn5"])
    assert rc == 2 and "unknown attack 'rtn5'" in capsys.readouterr().err


def test_demo_layout_resolves_each_unlearned_model(tmp_path):
    from qunlearn.cli import build_parser
    from qunlearn.commands.audit import _jobs

    for rel in ("benchmark/models/target", "benchmark/models/retrain", "models/ga", "models/npo_sure"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.json").write_text("{}")
    (tmp_path / "models/quantized/ga@rtn4").mkdir(parents=True)
    jobs = _jobs(build_parser().parse_args(["audit", "--demo", "--out", str(tmp_path)]))
    assert [(i.unlearned.name, out) for i, out in jobs] == [("ga", tmp_path / "audit/ga"),
                                                           ("npo_sure", tmp_path / "audit/npo_sure")]
    assert all(i.target == tmp_path / "benchmark/models/target" and i.retrain is not None for i, _ in jobs)
    assert main(["audit", "--demo", "--out", str(tmp_path / "nothing")]) == 2
    assert main(["audit", "--unlearned", str(tmp_path)]) == 2
