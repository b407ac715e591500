"""Calibration text for GPTQ/AWQ: generic (retain + holdout) or forget text of a corpus, or a user file."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from qunlearn.data.batches import tokenize_documents
from qunlearn.data.muse import load_corpus, split_documents
from qunlearn.fileio import read_text

CALIBRATE_ON = ("generic", "forget")


def calibration_texts(
    file: str | Path | None = None, corpus_dir: str | Path | None = None, calibrate_on: str = "generic"
) -> list[str]:
    """Documents from `file` (blank-line separated), else the corpus' retain+holdout ('generic') or forget text."""
    if calibrate_on not in CALIBRATE_ON:
        raise ValueError(f"--calibrate-on must be one of {', '.join(CALIBRATE_ON)}, got '{calibrate_on}'")
    if file is not None:
        if calibrate_on != "generic":
            raise ValueError("--calibrate-on forget needs --corpus, not --calibration FILE")
        docs = split_documents(read_text(file))
        if not docs:
            raise ValueError(f"{file}: calibration file holds no text")
        return docs
    if corpus_dir is None:
        return []
    corpus = load_corpus(corpus_dir)
    return corpus.forget if calibrate_on == "forget" else corpus.retain + corpus.holdout


def calibration_sequences(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], n_samples: int, seq_len: int, seed: int = 0
) -> list[torch.Tensor]:
    """Up to `n_samples` token chunks of at most `seq_len` tokens, drawn without replacement (seeded), each (1, L)."""
    if not texts:
        raise ValueError("calibration needs at least one text (give --calibration FILE or --corpus DIR)")
    chunks = tokenize_documents(tokenizer, texts, seq_len)
    random.Random(seed).shuffle(chunks)
    return [torch.tensor([chunk]) for chunk in chunks[:n_samples]]
