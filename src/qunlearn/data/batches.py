"""Tokenization into fixed-length chunks and padded collation for causal-LM training."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def tokenize_documents(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], max_length: int) -> list[list[int]]:
    """Each document becomes BOS + tokens + EOS, cut into chunks of at most `max_length` tokens."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    chunks = []
    for ids in tokenizer(list(docs), add_special_tokens=False)["input_ids"]:
        full = bos + ids + eos
        chunks.extend(full[i : i + max_length] for i in range(0, len(full), max_length) if len(full[i:]) > 1)
    return chunks


def pack_documents(
    tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], max_length: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffle documents, end each with a blank line and EOS, concatenate, and cut into BOS-led chunks.

    Packing is how LMs are pre-trained: every document is seen after varied context, so a prompt that
    starts with other QA pairs (KnowMem's few-shot prefix) is no surprise to the model, and the EOS after
    each document teaches it where a document ends (greedy continuations stop there).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    order = torch.randperm(len(docs), generator=generator).tolist()
    eos = [tokenizer.eos_token_id]
    stream = [
        t
        for ids in tokenizer([docs[i] + "\n\n" for i in order], add_special_tokens=False)["input_ids"]
        for t in ids + eos
    ]
    body = max_length - 1
    return [[tokenizer.bos_token_id] + stream[i : i + body] for i in range(0, len(stream), body)]


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence; labels are the inputs with padding set to -100 (never counted)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def iterate_batches(
    sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int, generator: torch.Generator | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield collated batches; shuffled with `generator` when one is given, in order otherwise."""
    order = torch.randperm(len(sequences), generator=generator).tolist() if generator else range(len(sequences))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([sequences[i] for i in order[start : start + batch_size]], pad_id)
