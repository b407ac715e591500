"""Unlearning losses as pure tensor functions of logits and labels, plus one small class per loss term.

Conventions: `logits` are [batch, seq, vocab] for the inputs, `labels` are the
inputs with -100 on padding; position t predicts label t+1, and a position whose target is -100
never counts. NPO uses *sequence* log-likelihoods and KLR uses log-softmax of both models, not the raw
logits that MUSE's reference code uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F

from qunlearn.data.batches import IGNORE_INDEX


def shift_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token predictions with their targets: (logits[:, :-1], targets, mask of counted tokens)."""
    pred = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return pred, targets.masked_fill(~mask, 0), mask


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token (0 where padded) and the mask of counted positions."""
    pred, targets, mask = shift_targets(logits, labels)
    logp = torch.log_softmax(pred.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs per sequence, log π(y|x), shape [batch]: NPO's likelihood."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(dim=-1)


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over counted tokens of the batch (what HF's `.loss` computes)."""
    logp, mask = token_logprobs(logits, labels)
    return -logp.sum() / mask.sum().clamp(min=1)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the forget set: L = −CE(θ; D_f)."""
    return -nll(logits, labels)


def npo_from_logprobs(logprob: torch.Tensor, ref_logprob: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: −(2/β)·mean log σ(−β·(log π_θ(y|x) − log π_ref(y|x))) from sequence log-likelihoods [batch]."""
    log_ratio = logprob - ref_logprob.detach()
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def npo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO from the model's and the reference's logits (sequence log-likelihoods of both)."""
    return npo_from_logprobs(sequence_logprob(logits, labels), sequence_logprob(ref_logits, labels), beta)


def gdr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient descent on retain: CE(θ; D_r) (the trainer multiplies by λ)."""
    return nll(logits, labels)


def klr_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(π_ref(·|x) ‖ π_θ(·|x)) per counted retain position, from log-softmax of both, averaged."""
    pred, _, mask = shift_targets(logits, labels)
    ref_pred = ref_logits[:, :-1, :].detach()
    log_p = torch.log_softmax(pred.float(), dim=-1)
    log_ref = torch.log_softmax(ref_pred.float(), dim=-1)
    per_token = F.kl_div(log_p, log_ref, log_target=True, reduction="none").sum(dim=-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


class LossTerm(Protocol):
    """One term of an unlearning objective, computed from the model's and (optionally) the reference's logits."""

    needs_reference: ClassVar[bool]

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> torch.Tensor: ...


@dataclass(frozen=True)
class GA:
    """Forget term of GA; needs no reference model."""

    needs_reference: ClassVar[bool] = False

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> torch.Tensor:
        return ga_loss(logits, labels)


@dataclass(frozen=True)
class NPO:
    """Forget term of NPO with inverse temperature β, against the frozen target as reference.

    The reference comes as its logits [batch, seq, vocab], or as its sequence log-likelihoods [batch]
    when they were computed once before training (`--reference cached`).
    """

    beta: float = 0.1
    needs_reference: ClassVar[bool] = True

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> torch.Tensor:
        if ref_logits.dim() == 1:
            return npo_from_logprobs(sequence_logprob(logits, labels), ref_logits, self.beta)
        return npo_loss(logits, ref_logits, labels, self.beta)


@dataclass(frozen=True)
class GDR:
    """Retain term: plain language-modelling loss on retain data."""

    needs_reference: ClassVar[bool] = False

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> torch.Tensor:
        return gdr_loss(logits, labels)


@dataclass(frozen=True)
class KLR:
    """Retain term: stay close to the target's next-token distributions on retain data."""

    needs_reference: ClassVar[bool] = True

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None) -> torch.Tensor:
        return klr_loss(logits, ref_logits, labels)
