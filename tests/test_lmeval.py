"""Multiple-choice audits through lm-evaluation-harness, on a local MCQ task built in tmp_path (no downloads)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from qunlearn.cli import main
from qunlearn.data.muse import load_corpus
from qunlearn.errors import UserInputError
from qunlearn.evaluate.lmeval import mcq_accuracy, task_manager
from qunlearn.models.io import load_model

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason='lm-eval is not installed (pip install -e ".[lmeval]")'
)
TASK = "qunlearn_tiny_mcq"
YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path, items: list[dict], task: str = TASK) -> Path:
    """A multiple-choice task YAML over a local JSON file of {question, choices, answer} items."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.json").write_text(json.dumps(items), encoding="utf-8")
    (folder / f"{task}.yaml").write_text(YAML.format(task=task, data=folder / f"{task}.json"), encoding="utf-8")
    return folder


def forget_mcq(corpus_dir: Path, n: int = 12) -> list[dict]:
    """The corpus' forget questions as 4-way multiple choice: the true answer and three other questions' answers,
    the true one at position i % 4."""
    qa = load_corpus(corpus_dir).knowmem_forget
    items = []
    for i, item in enumerate(qa[-n:]):  # the evaluation half's side of the forget set
        others = [q.answer for q in qa if q.answer != item.answer][i % 7 : i % 7 + 3]
        choices = others[: i % 4] + [item.answer] + others[i % 4 :]
        items.append({"question": item.question, "choices": choices, "answer": i % 4})
    return items


@pytest.fixture(scope="module")
def task_dir(tiny_benchmark, tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("tasks"), forget_mcq(tiny_benchmark.corpus_dir))


def test_unknown_task_lists_close_names(task_dir):
    with pytest.raises(UserInputError, match=f"unknown lm-eval task 'qunlearn_tiny_mqc'; close names: {TASK}"):
        task_manager(["qunlearn_tiny_mqc"], task_dir, builtin=False)


def test_target_knows_its_forget_answers_and_retrain_does_not(tiny_benchmark, task_dir):
    manager = task_manager([TASK], task_dir, builtin=False)
    accuracy = {}
    for name, path in (("target", tiny_benchmark.target_dir), ("retrain", tiny_benchmark.retrain_dir)):
        model, tokenizer = load_model(path)
        accuracy[name] = mcq_accuracy(model, tokenizer, [TASK], manager, batch_size=8)[TASK]
    assert all(0 <= a <= 100 and (a / (100 / 12)) == pytest.approx(round(a / (100 / 12))) for a in accuracy.values())
    assert accuracy["target"] > accuracy["retrain"], accuracy


def test_audit_through_lmeval_end_to_end(tiny_benchmark, task_dir, tmp_path):
    texts = tmp_path / "forget.json"
    texts.write_text(json.dumps(load_corpus(tiny_benchmark.corpus_dir).forget[:8]), encoding="utf-8")
    out = tmp_path / "audit"
    rc = main(
        [
            "audit",
            "--benchmark",
            "lmeval",
            "--tasks",
            TASK,
            "--include-path",
            str(task_dir),
            "--no-builtin-tasks",
            "--forget-texts",
            str(texts),
            "--target",
            str(tiny_benchmark.target_dir),
            "--unlearned",
            str(tiny_benchmark.retrain_dir),
            "--out",
            str(out),
            "--attacks",
            "rtn4",
            "relearn",
            "--relearn-steps",
            "3",
            "--relearn-lr",
            "1e-3",
        ]
    )
    assert rc == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["benchmark"] == "lmeval" and [s["name"] for s in audit["signals"]] == [TASK]
    assert [a["name"] for a in audit["attacks"]] == ["rtn4", "relearn"]
    for attack in audit["attacks"]:
        rec = attack["recovery"][TASK]
        assert rec["attacked"] == attack["scores"][TASK]
        assert rec["target"] == audit["baselines"]["target"][TASK]
    assert f"| attack | verdict | {TASK} acc |" in (out / "audit.md").read_text()


def test_lmeval_flags_are_checked(tiny_benchmark, tmp_path, capsys):
    base = [
        "audit",
        "--target",
        str(tiny_benchmark.target_dir),
        "--unlearned",
        str(tiny_benchmark.retrain_dir),
        "--out",
        str(tmp_path),
    ]
    assert main([*base, "--benchmark", "lmeval"]) == 2
    assert "--benchmark lmeval needs --tasks" in capsys.readouterr().err
    assert main([*base, "--corpus", str(tiny_benchmark.corpus_dir), "--tasks", TASK]) == 2
    assert "are for --benchmark lmeval" in capsys.readouterr().err
