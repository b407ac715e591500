"""Teacher-forced token statistics in right-padded batches: log p(x_t | x_<t) plus the mean and spread of log p."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel


@dataclass(frozen=True)
class TokenStats:
    """For tokens 2..n of one sequence: log-prob of the actual token, and mean / std of log p over the vocabulary."""

    logprobs: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


@torch.inference_mode()  # cheaper per op than no_grad; only numpy arrays leave the call
def token_stats(
    model: PreTrainedModel,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "score",
    masked_id: int | None = None,
) -> list[TokenStats]:
    """One forward pass per batch (sequences sorted by length to keep padding small); padding never counts.

    Tokens equal to `masked_id` are hidden from attention where they occur inside a sequence, as collators that
    build the mask from `input_ids != pad_token_id` do (OpenUnlearning's, when the pad token is EOS).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    results: list[TokenStats | None] = [None] * len(sequences)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        width = max(len(sequences[i]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
            mask[r, : len(sequences[i])] = torch.tensor([int(t != masked_id) for t in sequences[i]])
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for r, i in enumerate(rows):
            n = len(sequences[i])
            logp = torch.log_softmax(logits[r, : n - 1].float(), dim=-1)
            p = logp.exp()
            mu = (p * logp).sum(-1)
            var = ((p * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12)
            actual = logp.gather(-1, ids[r, 1:n, None].to(logp.device)).squeeze(-1)
            results[i] = TokenStats(actual.cpu().numpy(), mu.cpu().numpy(), var.sqrt().cpu().numpy())
    return results
