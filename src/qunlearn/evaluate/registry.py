"""The metric registry and `evaluate_model`: name -> metric function, run on an in-memory model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.muse import Corpus
from qunlearn.evaluate.knowmem import knowmem
from qunlearn.evaluate.privleak import privleak
from qunlearn.evaluate.utility import utility
from qunlearn.evaluate.verbmem import verbmem


@dataclass(frozen=True)
class EvalOptions:
    """Settings shared by every metric."""

    batch_size: int
    progress: bool
    retrain_auc: float | None


Metric = Callable[[PreTrainedModel, PreTrainedTokenizerBase, Corpus, EvalOptions], dict]


def _verbmem_f(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    return verbmem(model, tokenizer, corpus.verbmem_forget, opts.batch_size, opts.progress)


def _knowmem_f(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    return knowmem(model, tokenizer, corpus.knowmem_forget, corpus.knowmem_forget_icl, opts.batch_size,
                   opts.progress, desc="KnowMem_f")


def _knowmem_r(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    return knowmem(model, tokenizer, corpus.knowmem_retain, corpus.knowmem_retain_icl, opts.batch_size,
                   opts.progress, desc="KnowMem_r")


def _privleak(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    return privleak(model, tokenizer, corpus, opts.retrain_auc, opts.batch_size, opts.progress)


def _utility(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    return utility(model, tokenizer, corpus, opts.batch_size, opts.progress)


METRICS: dict[str, Metric] = {
    "verbmem_f": _verbmem_f,
    "knowmem_f": _knowmem_f,
    "knowmem_r": _knowmem_r,
    "privleak": _privleak,
    "utility": _utility,
}


def check_metrics(metrics: list[str], have_retrain_auc: bool) -> None:
    """Reject unknown metric names (listing the valid ones) and PrivLeak without AUC_retrain, before any work."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if "privleak" in metrics and not have_retrain_auc:
        raise ValueError("metric 'privleak' needs the retrain model's AUC (retrain_auc / --retrain DIR); "
                         "leave privleak out of the metrics to run the others")


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    metrics: list[str],
    retrain_auc: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict]:
    """Run `metrics` in order: {name: {"value": float, "items": [...], "seconds": float, ...}}."""
    check_metrics(metrics, retrain_auc is not None)
    opts = EvalOptions(batch_size, progress, retrain_auc)
    was_training = model.training
    model.eval()
    results = {}
    try:
        for name in metrics:
            start = time.perf_counter()
            results[name] = METRICS[name](model, tokenizer, corpus, opts)
            results[name]["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        model.train(was_training)
    return results
