"""Unlearning losses on hand-computed tiny tensors: the formulas of docs/architecture.md, padding never counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qunlearn.data.batches import IGNORE_INDEX
from qunlearn.unlearn.losses import (
    GA,
    GDR,
    KLR,
    NPO,
    ga_loss,
    gdr_loss,
    klr_loss,
    nll,
    npo_loss,
    sequence_logprob,
)


def random_batch(seed: int = 0, batch: int = 3, seq: int = 6, vocab: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[1, 4:] = IGNORE_INDEX  # a padded row
    return logits, labels


def pad(logits: torch.Tensor, labels: torch.Tensor, extra: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `extra` padding positions with arbitrary logits."""
    noise = torch.randn(logits.shape[0], extra, logits.shape[2]) * 50
    return torch.cat([logits, noise], 1), torch.cat([labels, torch.full((labels.shape[0], extra), IGNORE_INDEX)], 1)


def test_ga_of_uniform_prediction_is_minus_log_vocab():
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[0, 1, 0, 1]])
    assert ga_loss(logits, labels).item() == pytest.approx(-math.log(2))
    assert gdr_loss(logits, labels).item() == pytest.approx(math.log(2))


def test_nll_matches_torch_cross_entropy_with_ignore_index():
    logits, labels = random_batch()
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    assert nll(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)


def test_sequence_logprob_sums_token_logprobs_of_the_next_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]]]))
    labels = torch.tensor([[0, 1, IGNORE_INDEX]])
    # position 0 predicts token 1 (p=0.5); position 1 predicts padding (ignored)
    assert sequence_logprob(logits, labels).item() == pytest.approx(math.log(0.5))
    labels = torch.tensor([[0, 1, 0]])
    assert sequence_logprob(logits, labels).item() == pytest.approx(math.log(0.5) + math.log(0.25))


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_npo_at_the_reference_equals_two_over_beta_log_two(beta):
    logits, labels = random_batch()
    assert npo_loss(logits, logits.clone(), labels, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_npo_on_a_hand_computed_sequence():
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    cur = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]))
    labels = torch.tensor([[0, 1]])  # one counted token: 1, predicted at position 0
    beta = 0.1
    log_ratio = math.log(0.1) - math.log(0.5)
    want = -(2 / beta) * math.log(1 / (1 + math.exp(beta * log_ratio)))
    assert npo_loss(cur, ref, labels, beta).item() == pytest.approx(want, rel=1e-6)
    assert want < 2 / beta * math.log(2)  # forgetting lowers the NPO loss below its value at the reference


def test_kl_of_identical_distributions_is_zero():
    logits, labels = random_batch()
    assert klr_loss(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_is_reference_weighted_and_uses_log_softmax_not_raw_logits():
    cur = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # uniform
    ref = torch.log(torch.tensor([[[0.75, 0.25], [0.5, 0.5]]])) + 7.0  # shifted logits: same distribution
    labels = torch.tensor([[0, 1]])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(ref || cur) at position 0
    assert klr_loss(cur, ref, labels).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("term", [GA(), GDR(), NPO(beta=0.1), KLR()], ids=lambda t: type(t).__name__)
def test_padding_does_not_change_the_loss(term):
    logits, labels = random_batch(1)
    ref = random_batch(2)[0]
    base = term(logits, labels, ref)
    padded_logits, padded_labels = pad(logits, labels)
    padded_ref, _ = pad(ref, labels)
    assert term(padded_logits, padded_labels, padded_ref).item() == pytest.approx(base.item(), rel=1e-6)


def test_reference_logits_receive_no_gradient():
    logits, labels = random_batch()
    ref = logits.clone().requires_grad_(True)
    cur = logits.clone().requires_grad_(True)
    (npo_loss(cur, ref, labels, 0.1) + klr_loss(cur, ref, labels)).backward()
    assert ref.grad is None and cur.grad is not None
