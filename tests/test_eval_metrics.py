"""MUSE metric maths on hand-worked examples (no model needed)."""

from __future__ import annotations

import math
import zlib

import pytest

from qunlearn.data.muse import QAItem
from qunlearn.evaluate import METRICS, evaluate_model
from qunlearn.evaluate.generate import cut_at_stop
from qunlearn.evaluate.knowmem import STOP_STRINGS, knowmem_prompt
from qunlearn.evaluate.mia import loss_score, mia_auc, min_k, min_k_plus_plus, zlib_ratio
from qunlearn.evaluate.privleak import privleak_value
from qunlearn.evaluate.rouge import mean, rouge_l_f1
from qunlearn.evaluate.utility import chunk, perplexity


def test_rouge_l_f1_is_lcs_f_measure_over_words():
    # LCS "the cat on the mat" = 5 of 6 words on both sides: P = R = F = 5/6.
    assert rouge_l_f1("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS "a c": precision 2/2, recall 2/4, F = 2PR/(P+R) = 2/3.
    assert rouge_l_f1("a b c d", "a c") == pytest.approx(2 / 3)
    # rouge-score lowercases and drops punctuation; no stemmer, so "works" != "work".
    assert rouge_l_f1("Foushei Works.", "foushei works") == 1.0
    assert rouge_l_f1("Foushei Works", "Foushei Work") == pytest.approx(0.5)
    assert rouge_l_f1("Leisburcrest", "") == 0.0


def test_mean_of_nothing_is_an_error():
    assert mean([0.0, 50.0, 100.0]) == 50.0
    with pytest.raises(ValueError, match="zero items"):
        mean([])


def test_knowmem_prompt_is_muse_few_shot_format():
    icl = [QAItem("Where was A born?", "Xtown"), QAItem("Who founded B?", "Y Z")]
    assert knowmem_prompt(icl, "Where was C born?") == (
        "Question: Where was A born?\nAnswer: Xtown\n\n"
        "Question: Who founded B?\nAnswer: Y Z\n\n"
        "Question: Where was C born?\nAnswer: "
    )


def test_answers_are_cut_before_the_earliest_stop_string():
    assert cut_at_stop("Leisburcrest\n\nQuestion: next", STOP_STRINGS) == "Leisburcrest"
    assert cut_at_stop("Foushei Works\nQuestion: next", STOP_STRINGS) == "Foushei Works"
    assert cut_at_stop("A Question: B\n\nC", STOP_STRINGS) == "A "
    assert cut_at_stop("plain answer\n", STOP_STRINGS) == "plain answer\n"


def test_min_k_is_minus_mean_of_lowest_forty_percent():
    # n = 5 log-probs -> floor(0.4 * 5) = 2 lowest: -5, -4 -> mean -4.5 -> score 4.5.
    assert min_k([-1.0, -2.0, -3.0, -4.0, -5.0]) == pytest.approx(4.5)
    # n = 10 -> 4 lowest.
    assert min_k([-0.1] * 6 + [-2.0, -3.0, -4.0, -7.0]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least 3"):
        min_k([-1.0, -2.0])  # floor(0.8) = 0 tokens


def test_min_k_plus_plus_standardises_each_token():
    # z = (lp - mu) / sigma = [1, -1, 0, -1, -1]; lowest 2 -> mean -1 -> score 1.
    assert min_k_plus_plus([-1, -3, -2, -4, -6], [-2] * 5, [1, 1, 2, 2, 4]) == pytest.approx(1.0)


def test_loss_and_zlib_attacks():
    assert loss_score([-1.0, -3.0]) == pytest.approx(2.0)
    assert zlib_ratio("aaaa", [-1.0, -3.0]) == pytest.approx(2.0 / len(zlib.compress(b"aaaa")))


def test_auc_convention_forget_zero_holdout_one():
    # Low score = member. A model that remembers D_forget separates it perfectly the "wrong" way: AUC 0.
    assert mia_auc([1.0, 2.0], [5.0, 6.0]) == 0.0
    assert mia_auc([5.0, 6.0], [1.0, 2.0]) == 1.0
    assert mia_auc([1.0, 2.0], [1.0, 2.0]) == 0.5  # inseparable
    # forget {1, 3} vs holdout {2, 4}: holdout scores lower in 1 of 4 pairs.
    assert mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.25)


def test_privleak_is_relative_auc_change():
    assert privleak_value(0.25, 0.25) == 0.0  # identical to retrain
    assert privleak_value(0.0, 0.5) == -100.0  # remembers everything
    assert privleak_value(0.75, 0.5) == pytest.approx(50.0)  # over-unlearned
    with pytest.raises(ValueError, match="AUC_retrain"):
        privleak_value(0.3, 0.0)


def test_perplexity_and_context_windows():
    assert perplexity(3 * math.log(8), 3) == pytest.approx(8.0)
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunk([1, 2, 3], None) == [[1, 2, 3]]
    with pytest.raises(ValueError, match="zero tokens"):
        perplexity(0.0, 0)


def test_metric_names_are_checked_before_any_work():
    assert list(METRICS) == ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "utility"]
    with pytest.raises(ValueError, match="unknown metric.*verbmem.*choose from verbmem_f"):
        evaluate_model(None, None, None, ["verbmem"])
    with pytest.raises(ValueError, match="privleak.*needs the retrain"):
        evaluate_model(None, None, None, ["verbmem_f", "privleak"])
