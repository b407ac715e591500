"""The MUSE-layout loader: round trips, real-layout variants, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qunlearn.data.muse import CorpusError, load_corpus, split_documents
from qunlearn.data.synthetic import SyntheticSizes, generate_corpus

SMALL = SyntheticSizes(n_forget=3, n_retain=4, n_holdout=2, n_icl=1)


def write_mini_muse(root: Path) -> Path:
    """A hand-written miniature MUSE directory (raw text as .txt, like MUSE-News)."""
    files = {
        "raw/forget.txt": "Doc one line one.\nline two.\n\nDoc two.\n",
        "raw/retain1.txt": "Retain doc.\n",
        "raw/retain2.txt": "Second retain doc.\n",
        "raw/holdout.txt": "Holdout doc.\n",
        "verbmem/forget.json": [{"prompt": "Doc one", "gt": " line one."}],
        "knowmem/forget_qa.json": [{"question": "Q1?", "answer": "A1"}],
        "knowmem/retain_qa.json": [{"question": "Q2?", "answer": "A2"}],
        "knowmem/forget_qa_icl.json": [{"question": "Qi?", "answer": "Ai"}],
        "knowmem/retain_qa_icl.json": [{"question": "Qj?", "answer": "Aj"}],
        "privleak/forget.json": ["Doc one line one."],
        "privleak/retain.json": ["Retain doc."],
        "privleak/holdout.json": ["Holdout doc."],
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return root


def test_hand_written_muse_directory_loads_into_typed_records(tmp_path):
    corpus = load_corpus(write_mini_muse(tmp_path))
    assert corpus.forget == ["Doc one line one.\nline two.", "Doc two."]
    assert corpus.retain == ["Retain doc.", "Second retain doc."]
    assert corpus.verbmem_forget[0].prompt == "Doc one" and corpus.verbmem_forget[0].gt == " line one."
    assert corpus.knowmem_forget[0].answer == "A1" and corpus.knowmem_retain_icl[0].question == "Qj?"
    assert corpus.privleak_holdout == ["Holdout doc."]


def test_raw_json_files_load_like_txt(tmp_path):
    root = write_mini_muse(tmp_path)
    (root / "raw/forget.txt").unlink()
    (root / "raw/forget.json").write_text(json.dumps(["A doc.", {"text": "Another doc."}]))
    assert load_corpus(root).forget == ["A doc.", "Another doc."]


def test_optional_raw_splits_may_be_absent(tmp_path):
    root = write_mini_muse(tmp_path)
    (root / "raw/retain2.txt").unlink()
    (root / "raw/holdout.txt").unlink()
    corpus = load_corpus(root)
    assert corpus.retain == ["Retain doc."] and corpus.holdout == []


def test_generated_corpus_round_trips(tmp_path):
    corpus = load_corpus(generate_corpus(tmp_path, sizes=SMALL))
    assert len(corpus.verbmem_forget) == 3 and len(corpus.knowmem_forget) == 12
    assert len(corpus.privleak_forget) == 3 and len(corpus.privleak_holdout) == 2


def test_split_documents_uses_blank_lines_and_drops_whitespace():
    assert split_documents("a\nb\n\n\n  \nc\n") == ["a\nb", "c"]


@pytest.mark.parametrize(
    "rel, content, expected",
    [
        ("knowmem/forget_qa.json", None, "file not found"),
        ("verbmem/forget.json", "{not json", "invalid JSON at line 1"),
        ("verbmem/forget.json", json.dumps([{"prompt": "p"}]), "no string field 'gt'"),
        ("knowmem/retain_qa.json", json.dumps([{"question": "q"}]), "no string field 'answer'"),
        ("knowmem/forget_qa.json", json.dumps([{"answer": "a"}]), "no string field 'question'"),
        ("verbmem/forget.json", json.dumps([{"gt": "g"}]), "no string field 'prompt'"),
        ("privleak/holdout.json", "[]", "split is empty"),
        ("raw/forget.txt", "\n\n  \n", "split 'forget' is empty"),
        ("raw/retain1.txt", b"\xff\xfe bad bytes", "not valid UTF-8"),
        ("privleak/forget.json", json.dumps({"a": 1}), "expected a JSON list"),
    ],
)
def test_bad_input_errors_name_the_file(tmp_path, rel, content, expected):
    root = write_mini_muse(tmp_path)
    path = root / rel
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(CorpusError) as err:
        load_corpus(root)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_unsupported_raw_file_type_is_rejected(tmp_path):
    root = write_mini_muse(tmp_path)
    (root / "raw/forget.txt").rename(root / "raw/forget.csv")
    with pytest.raises(CorpusError, match=r"forget\.csv: unsupported raw file type '.csv'"):
        load_corpus(root)


def test_missing_corpus_directory(tmp_path):
    with pytest.raises(CorpusError, match="corpus directory not found"):
        load_corpus(tmp_path / "nope")
