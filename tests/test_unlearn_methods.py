"""The method registry: exactly the twelve methods, their parts, and their default hyperparameters."""

from __future__ import annotations

import pytest

from qunlearn.unlearn.losses import GA, GDR, KLR, NPO
from qunlearn.unlearn.methods import METHODS, get_method
from qunlearn.unlearn.saliency import threshold

BASELINES = ["ga", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr"]


def test_registry_holds_exactly_the_six_baselines_and_their_sure_variants():
    assert sorted(METHODS) == sorted(BASELINES + [f"{b}_sure" for b in BASELINES])


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown method 'gd'.*npo_klr_sure"):
        get_method("gd")


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_names_its_forget_loss_retain_term_and_sure(name):
    method = get_method(name)
    assert isinstance(method.forget_term(0.1), NPO if name.startswith("npo") else GA)
    want_retain = GDR if "_gdr" in name else KLR if "_klr" in name else type(None)
    assert isinstance(method.retain_term(), want_retain)
    assert method.sure == name.endswith("_sure")
    assert method.needs_reference == (name.startswith("npo") or "_klr" in name)


@pytest.mark.parametrize("name", BASELINES)
def test_muse_defaults_follow_muse_for_the_baselines(name):
    h = get_method(name).defaults("muse")
    assert (h.lr, h.batch_size, h.grad_clip, h.beta, h.retain_weight) == (1e-5, 32, 1.0, 0.1, 1.0)
    assert h.saliency_percentile is None


@pytest.mark.parametrize("name", BASELINES)
def test_sure_uses_a_larger_learning_rate_on_real_models_and_a_saliency_threshold(name):
    base, sure = get_method(name).defaults("muse"), get_method(f"{name}_sure").defaults("muse")
    assert sure.lr > base.lr and sure.saliency_percentile is not None
    embedded = get_method(f"{name}_sure").defaults("embedded")
    assert embedded.lr >= get_method(name).defaults("embedded").lr and embedded.saliency_percentile is not None


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="unknown profile 'tofu'"):
        get_method("ga").defaults("tofu")


def test_threshold_as_value_or_percentile():
    scores = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert threshold(scores, percentile=50) == 2.0
    assert threshold(scores, percentile=100) == 3.0
    assert threshold(scores, gamma=2.5) == 2.5
    with pytest.raises(ValueError, match="exactly one"):
        threshold(scores, gamma=1.0, percentile=50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        threshold(scores, percentile=150)
