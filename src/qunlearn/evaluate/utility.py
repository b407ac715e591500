"""Utility beyond KnowMem(D_retain): perplexity on the retain and holdout documents."""

from __future__ import annotations

import math

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.muse import Corpus
from qunlearn.evaluate.logprobs import token_stats
from qunlearn.models.utils import context_length


def chunk(ids: list[int], size: int | None) -> list[list[int]]:
    """Consecutive non-overlapping windows of at most `size` tokens (all of `ids` when size is None)."""
    if size is None or len(ids) <= size:
        return [ids]
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of scored tokens)."""
    if n_tokens == 0:
        raise ValueError("perplexity over zero tokens is undefined")
    return math.exp(total_nll / n_tokens)


def document_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: list[str],
    batch_size: int,
    progress: bool,
    desc: str,
) -> list[dict]:
    """Per document: scored tokens and summed NLL; documents over the context are scored in windows."""
    windows, owner = [], []
    for index, doc in enumerate(docs):
        for window in chunk(tokenizer(doc, add_special_tokens=True)["input_ids"], context_length(model)):
            if len(window) > 1:
                windows.append(window)
                owner.append(index)
    rows = [{"doc": index, "tokens": 0, "nll": 0.0} for index in range(len(docs))]
    for index, stats in zip(owner, token_stats(model, windows, batch_size, progress, desc=desc)):
        rows[index]["tokens"] += len(stats.logprobs)
        rows[index]["nll"] -= float(stats.logprobs.sum())
    return rows


def utility(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """{"value": retain perplexity, "ppl_retain", "ppl_holdout" (None without holdout docs), "items": per doc}."""
    result: dict = {}
    items = []
    for split, docs in (("retain", corpus.retain), ("holdout", corpus.holdout)):
        rows = document_nll(model, tokenizer, docs, batch_size, progress, desc=f"perplexity {split}")
        ppl = perplexity(sum(r["nll"] for r in rows), sum(r["tokens"] for r in rows)) if rows else None
        result[f"ppl_{split}"] = ppl
        items += [{"split": split} | r for r in rows]
    return {"value": result["ppl_retain"]} | result | {"items": items}
