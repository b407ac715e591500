"""Membership-inference scores (lower = more likely a training member) and their AUC, as pure functions.

Scores follow MUSE's sign: a negated log-likelihood statistic, so AUC = roc_auc(y, -score) with y = 0 for
D_forget and 1 for the holdout set; a model that remembers D_forget gets AUC near 0.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

K_FRACTION = 0.4
ATTACKS = ("Min-40%", "LOSS", "zlib", "Min-40%++")


def _lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the floor(k * n) smallest values (MUSE's Min-K% selection)."""
    count = math.floor(k * len(values))
    if count == 0:
        raise ValueError(f"Min-{k:.0%} needs at least {math.ceil(1 / k)} scored tokens; got {len(values)}")
    return float(np.sort(values)[:count].mean())


def min_k(logprobs: np.ndarray, k: float = K_FRACTION) -> float:
    """Min-K% Prob: minus the mean of the lowest k fraction of token log-probs."""
    return -_lowest_mean(np.asarray(logprobs, dtype=np.float64), k)


def min_k_plus_plus(logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray, k: float = K_FRACTION) -> float:
    """Min-K%++: minus the mean of the lowest k fraction of (log p(x_t) - mu_t) / sigma_t."""
    z = (np.asarray(logprobs, np.float64) - np.asarray(mu, np.float64)) / np.asarray(sigma, np.float64)
    return -_lowest_mean(z, k)


def loss_score(logprobs: np.ndarray) -> float:
    """LOSS attack: mean negative log-likelihood of the tokens."""
    return -float(np.mean(np.asarray(logprobs, dtype=np.float64)))


def zlib_ratio(text: str, logprobs: np.ndarray) -> float:
    """zlib attack: LOSS divided by the zlib-compressed length of the text in bytes (MUSE's `PPL/zlib`)."""
    return loss_score(logprobs) / len(zlib.compress(text.encode("utf-8")))


def attack_scores(text: str, logprobs: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """Every attack's score for one text, keyed as in ATTACKS."""
    return {
        "Min-40%": min_k(logprobs),
        "LOSS": loss_score(logprobs),
        "zlib": zlib_ratio(text, logprobs),
        "Min-40%++": min_k_plus_plus(logprobs, mu, sigma),
    }


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC of telling holdout (label 1) from forget (label 0) by -score; 0.5 = indistinguishable."""
    y = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(y, -np.asarray(list(forget_scores) + list(holdout_scores), dtype=np.float64)))
