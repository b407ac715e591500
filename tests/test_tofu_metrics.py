"""TOFU metric arithmetic on hand-worked numbers (OpenUnlearning's definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qunlearn.evaluate import tofu_metrics as tm

LOG = math.log


def test_answer_probability_is_exp_of_mean_token_logprob():
    # tokens with p = 0.5 and 0.125: mean log p = log(0.25) -> length-normalised probability 0.25
    assert tm.answer_probability((LOG(0.5) + LOG(0.125)) / 2) == pytest.approx(0.25)


def test_truth_ratio_is_geometric_mean_of_perturbed_over_correct():
    # perturbed p = 0.25 and 0.0625 -> exp(mean log) = 0.125; correct p = 0.5 -> ratio 0.25
    ratios = tm.truth_ratios([LOG(0.5), LOG(0.1)], [[LOG(0.25), LOG(0.0625)], [LOG(0.2)]])
    assert ratios == pytest.approx([0.25, 2.0])


def test_truth_ratio_aggregations():
    ratios = np.array([0.25, 2.0, 1.0])
    # forget: mean(min(r, 1/r)) = (0.25 + 0.5 + 1) / 3
    assert tm.truth_ratio_closer_to_1(ratios) == pytest.approx(1.75 / 3)
    # utility: mean(max(0, 1 - r)) = (0.75 + 0 + 0) / 3
    assert tm.truth_ratio_true_better(ratios) == pytest.approx(0.25)


def test_probability_over_options_normalises_against_every_perturbed_answer():
    # q1: 0.5 / (0.5 + 0.25 + 0.25) = 0.5; q2: 0.6 / (0.6 + 0.2) = 0.75
    value = tm.probability_over_options([LOG(0.5), LOG(0.6)], [[LOG(0.25), LOG(0.25)], [LOG(0.2)]])
    assert value == pytest.approx(0.625)


def test_rouge_l_recall_counts_reference_words_with_stemming():
    # LCS of "the cat sat on the mat" and "the cat on a mat" is "the cat on mat": 4 of 6 reference words
    assert tm.rouge_l_recall("the cat sat on the mat", "the cat on a mat") == pytest.approx(4 / 6)
    assert tm.rouge_l_recall("She writes novels.", "she wrote a novel") == pytest.approx(2 / 3)  # novel(s) stem
    assert tm.rouge_l_recall("Paris", "") == 0.0


def test_forget_quality_is_ks_p_value():
    same = np.array([0.1, 0.5, 0.9, 1.3])
    assert tm.forget_quality(same, same) == pytest.approx(1.0)
    # two disjoint samples of 5: exact two-sided p = 2 / C(10, 5)
    assert tm.forget_quality(np.arange(5.0), np.arange(5.0) + 10) == pytest.approx(2 / 252)


def test_model_utility_is_harmonic_mean_and_zero_absorbs():
    assert tm.model_utility([1.0, 0.5, 0.25]) == pytest.approx(3 / 7)
    assert tm.model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError):
        tm.model_utility([])
