"""TOFU layout loading: files as on the Hub, and bad input named by file and field."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from qunlearn.cli import main
from qunlearn.data.tofu import load_tofu, load_training_split
from qunlearn.errors import UserInputError

PERTURBED = {"question": "Q?", "answer": "A.", "paraphrased_answer": "P.", "perturbed_answer": ["W1.", "W2."]}
OPTIONS = {"question": "Q?", "answer": "A.", "perturbed_answer": ["W1.", "W2.", "W3."]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def tofu_dir(root: Path, split: str = "forget01") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / f"{split}_perturbed.json", [PERTURBED, PERTURBED | {"question": "Q2?"}])
    write_jsonl(root / "retain_perturbed.json", [PERTURBED])
    write_jsonl(root / "real_authors_perturbed.json", [OPTIONS])
    (root / "world_facts_perturbed.json").write_text(json.dumps([OPTIONS, OPTIONS]), encoding="utf-8")  # JSON array
    write_jsonl(root / f"{split}.json", [{"question": "Q?", "answer": "A."}])
    return root


def test_loads_every_evaluation_set(tmp_path):
    data = load_tofu(tofu_dir(tmp_path), "forget01")
    assert data.summary() == {"forget": 2, "retain": 1, "real_authors": 1, "world_facts": 2}
    assert data.forget[1].question == "Q2?"
    assert data.forget[0].paraphrased_answer == "P." and data.forget[0].perturbed_answers == ("W1.", "W2.")
    assert data.real_authors[0].paraphrased_answer is None and len(data.real_authors[0].perturbed_answers) == 3
    assert load_training_split(tmp_path, "forget01")[0].answer == "A."


def test_missing_split_names_the_file(tmp_path):
    tofu_dir(tmp_path, "forget01")
    with pytest.raises(UserInputError, match=r"forget10_perturbed\.json"):
        load_tofu(tmp_path, "forget10")


def test_missing_field_names_file_row_and_field(tmp_path):
    tofu_dir(tmp_path)
    bad = dict(PERTURBED)
    del bad["paraphrased_answer"]
    write_jsonl(tmp_path / "retain_perturbed.json", [PERTURBED, bad])
    with pytest.raises(UserInputError, match=r"retain_perturbed\.json: row 2: field 'paraphrased_answer' is missing"):
        load_tofu(tmp_path, "forget01")


def test_perturbed_answers_must_be_a_list_of_strings(tmp_path):
    tofu_dir(tmp_path)
    write_jsonl(tmp_path / "real_authors_perturbed.json", [OPTIONS | {"perturbed_answer": []}])
    with pytest.raises(UserInputError, match=r"real_authors_perturbed\.json: row 1: field 'perturbed_answer'"):
        load_tofu(tmp_path, "forget01")


def test_bad_json_line_is_named(tmp_path):
    tofu_dir(tmp_path)
    (tmp_path / "forget01_perturbed.json").write_text('{"question": "Q?"\n', encoding="utf-8")
    with pytest.raises(UserInputError, match=r"forget01_perturbed\.json: line 1 is not valid JSON"):
        load_tofu(tmp_path, "forget01")


def test_unknown_forget_split_and_missing_directory(tmp_path):
    with pytest.raises(UserInputError, match="forget01, forget05, forget10"):
        load_tofu(tofu_dir(tmp_path), "forget20")
    with pytest.raises(UserInputError, match="not found"):
        load_tofu(tmp_path / "nope" / "deeper", "forget01")


def test_hf_id_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as when not installed
    with pytest.raises(UserInputError, match=r"needs the `datasets` package"):
        load_tofu("locuslab/TOFU", "forget01")


def test_hf_id_loads_each_config_and_offline_is_one_line(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if name == "world_facts_perturbed":
            raise ConnectionError("no network")
        return [OPTIONS | {"paraphrased_answer": "P."}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(UserInputError, match="locuslab/TOFU: cannot load TOFU split 'world_facts_perturbed'"):
        load_tofu("locuslab/TOFU", "forget05")
    assert calls[0] == ("locuslab/TOFU", "forget05_perturbed", "train")


def test_cli_exits_2_naming_the_file(tmp_path, capsys):
    tofu_dir(tmp_path / "tofu")
    (tmp_path / "tofu" / "retain_perturbed.json").unlink()
    code = main(
        [
            "evaluate",
            "--benchmark",
            "tofu",
            "--model",
            str(tmp_path / "model"),
            "--data",
            str(tmp_path / "tofu"),
            "--forget-split",
            "forget01",
            "--out",
            str(tmp_path / "out.json"),
        ]
    )
    assert code == 2
    assert "retain_perturbed" in capsys.readouterr().err


def test_embedded_tofu_layout_nests_forget_splits_and_perturbs_every_answer(tmp_path):
    from qunlearn.data.synthetic import SyntheticSizes
    from qunlearn.data.tofu_synthetic import N_PERTURBED, generate_tofu

    sizes = SyntheticSizes(n_forget=8, n_retain=24, n_holdout=8, n_icl=2)  # the tiny preset: 32 authors
    generate_tofu(tmp_path / "a", seed=0, sizes=sizes)
    generate_tofu(tmp_path / "b", seed=0, sizes=sizes)
    assert (tmp_path / "a" / "full.json").read_bytes() == (tmp_path / "b" / "full.json").read_bytes()
    full = load_training_split(tmp_path / "a", "full")
    assert len(full) == 32 * 4
    for split, retain, authors in (
        ("forget01", "retain99", 1),
        ("forget05", "retain95", 2),
        ("forget10", "retain90", 3),
    ):
        forget = load_training_split(tmp_path / "a", split)
        assert len(forget) == 4 * authors
        assert load_training_split(tmp_path / "a", retain) + forget == full  # the last authors are forgotten
    data = load_tofu(tmp_path / "a", "forget10")
    assert data.summary() == {"forget": 12, "retain": 12, "real_authors": 8, "world_facts": 8}
    retain90 = {r.question for r in load_training_split(tmp_path / "a", "retain90")}
    assert all(i.question in retain90 for i in data.retain) and not any(i.question in retain90 for i in data.forget)
    for item in data.forget + data.retain + data.real_authors + data.world_facts:
        assert len(item.perturbed_answers) == N_PERTURBED
        assert item.answer not in item.perturbed_answers and item.paraphrased_answer not in item.perturbed_answers


def test_run_pipeline_refuses_the_tofu_flavour_before_preparing(tmp_path):
    from qunlearn.config import BenchmarkSettings, RunConfig
    from qunlearn.pipeline import run_and_report

    with pytest.raises(UserInputError, match="evaluate --benchmark tofu"):
        run_and_report(RunConfig(out=str(tmp_path / "run"), benchmark=BenchmarkSettings(flavour="tofu")), resume=False)
    assert not (tmp_path / "run").exists()
