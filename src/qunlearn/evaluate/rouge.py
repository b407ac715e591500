"""ROUGE-L F1 exactly as MUSE scores VerbMem and KnowMem (`rouge-score`, rougeL, no stemmer)."""

from __future__ import annotations

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """ROUGE-L F1 in [0, 1] of `prediction` against `reference` (longest common subsequence of words)."""
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


def mean(values: list[float]) -> float:
    """Arithmetic mean; an empty list is an error because a metric over no items means nothing."""
    if not values:
        raise ValueError("cannot average a metric over zero items")
    return sum(values) / len(values)
