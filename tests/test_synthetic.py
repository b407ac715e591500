"""The built-in benchmark: deterministic, disjoint splits, answers grounded in their split's text."""

from __future__ import annotations

import json

import pytest

from qunlearn.data.muse import load_corpus
from qunlearn.data.synthetic import SyntheticSizes, generate_corpus

SIZES = SyntheticSizes(n_forget=5, n_retain=10, n_holdout=5, n_icl=2)


def all_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flavour", ["news", "books"])
def test_same_seed_gives_byte_identical_files(tmp_path, flavour):
    a = generate_corpus(tmp_path / "a", flavour=flavour, seed=7, sizes=SIZES)
    b = generate_corpus(tmp_path / "b", flavour=flavour, seed=7, sizes=SIZES)
    c = generate_corpus(tmp_path / "c", flavour=flavour, seed=8, sizes=SIZES)
    assert all_bytes(a) == all_bytes(b)
    assert all_bytes(a) != all_bytes(c)


@pytest.mark.parametrize("flavour", ["news", "books"])
def test_splits_are_disjoint_and_answers_are_stated_in_their_split(tmp_path, flavour):
    root = generate_corpus(tmp_path, flavour=flavour, seed=1, sizes=SIZES)
    entities = json.loads((root / "entities.json").read_text())
    corpus = load_corpus(root)
    names = {split: {e["name"] for e in entities[split]} for split in ("forget", "retain", "icl", "holdout")}
    assert sum(map(len, names.values())) == len(set().union(*names.values()))
    for key in ("town", "employer", "companion", "year"):
        seen = [e[key] for split in names for e in entities[split]]
        assert len(seen) == len(set(seen)), f"{key} values repeat across entities"
    forget_text, retain_text = "\n".join(corpus.forget), "\n".join(corpus.retain)
    for qa in corpus.knowmem_forget:
        assert qa.answer in forget_text and qa.answer not in retain_text
    for qa in corpus.knowmem_retain:
        assert qa.answer in retain_text and qa.answer not in forget_text
    holdout_text = "\n".join(corpus.holdout)
    assert not any(name in forget_text + retain_text for name in names["holdout"])
    assert all(name.split()[0] in holdout_text for name in names["holdout"])


def test_verbmem_and_privleak_come_from_the_right_documents(tmp_path):
    corpus = load_corpus(generate_corpus(tmp_path, seed=2, sizes=SIZES))
    for item in corpus.verbmem_forget:
        assert any(item.prompt + item.gt == doc for doc in corpus.forget)
    assert set(corpus.privleak_forget) <= set(corpus.forget)
    assert set(corpus.privleak_retain) <= set(corpus.retain)
    assert set(corpus.privleak_holdout) == set(corpus.holdout)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown flavour 'poems'"):
        generate_corpus(tmp_path, flavour="poems")
    with pytest.raises(ValueError, match="sizes.n_forget must be at least 1"):
        generate_corpus(tmp_path, sizes=SyntheticSizes(n_forget=0))
