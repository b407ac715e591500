"""MUSE evaluation (VerbMem, KnowMem, PrivLeak, utility) on in-memory models; see `registry.evaluate_model`."""

from qunlearn.evaluate.registry import METRICS, evaluate_model

__all__ = ["METRICS", "evaluate_model"]
