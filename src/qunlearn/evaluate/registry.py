"""The metric registry and `evaluate_model`: one `MetricSpec` per metric (function, label, better direction, the
numbers it writes to results.jsonl, how its items are aggregated), run on an in-memory model.

Every reader of results (the report, the audit) takes labels and directions from here. The metric functions
import their modules on first call, so that readers of the specs (the report) do not load torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qunlearn.data.muse import Corpus

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Better = Literal["higher", "lower", "zero"] | None
ARROWS = {"higher": "↑", "lower": "↓", "zero": "→ 0", None: ""}


@dataclass(frozen=True)
class EvalOptions:
    """Settings shared by every metric."""

    batch_size: int
    progress: bool
    retrain_auc: float | None


Metric = Callable[["PreTrainedModel", "PreTrainedTokenizerBase", Corpus, EvalOptions], dict]


@dataclass(frozen=True)
class ResultSpec:
    """One number a metric writes to results.jsonl: the record's metric name, the key in the metric's result dict,
    its label and which way is better ("higher", "lower", "zero" = closer to 0 is better, None = no direction)."""

    name: str
    key: str
    label: str
    better: Better

    @property
    def heading(self) -> str:
        """The label with its direction arrow, as table headers show it (e.g. 'KnowMem_f ↓')."""
        return f"{self.label} {ARROWS[self.better]}".strip()


@dataclass(frozen=True)
class MetricSpec:
    """A metric: its function, how per-item scores become its value, and the numbers it reports (the first one is
    the metric's own `value`; a metric with one result also stores its other scalar fields as `extra`)."""

    name: str
    fn: Metric
    aggregation: str
    results: tuple[ResultSpec, ...]

    @property
    def label(self) -> str:
        return self.results[0].label

    @property
    def better(self) -> Better:
        return self.results[0].better


def _verbmem_f(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    from qunlearn.evaluate.verbmem import verbmem

    return verbmem(model, tokenizer, corpus.verbmem_forget, opts.batch_size, opts.progress)


def _knowmem_f(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    from qunlearn.evaluate.knowmem import knowmem

    return knowmem(
        model,
        tokenizer,
        corpus.knowmem_forget,
        corpus.knowmem_forget_icl,
        opts.batch_size,
        opts.progress,
        desc="KnowMem_f",
    )


def _knowmem_r(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    from qunlearn.evaluate.knowmem import knowmem

    return knowmem(
        model,
        tokenizer,
        corpus.knowmem_retain,
        corpus.knowmem_retain_icl,
        opts.batch_size,
        opts.progress,
        desc="KnowMem_r",
    )


def _privleak(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    from qunlearn.evaluate.privleak import privleak

    return privleak(model, tokenizer, corpus, opts.retrain_auc, opts.batch_size, opts.progress)


def _utility(model, tokenizer, corpus: Corpus, opts: EvalOptions) -> dict:
    from qunlearn.evaluate.utility import utility

    return utility(model, tokenizer, corpus, opts.batch_size, opts.progress)


def _single(name: str, label: str, better: Better) -> tuple[ResultSpec, ...]:
    return (ResultSpec(name, "value", label, better),)


ROUGE_MEAN = "mean ROUGE-L F1 × 100 over items"
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            "verbmem_f",
            _verbmem_f,
            ROUGE_MEAN + " (greedy continuation vs the forget text)",
            _single("verbmem_f", "VerbMem_f", "lower"),
        ),
        MetricSpec(
            "knowmem_f",
            _knowmem_f,
            ROUGE_MEAN + " (greedy answer vs the forget QA answer)",
            _single("knowmem_f", "KnowMem_f", "lower"),
        ),
        MetricSpec(
            "knowmem_r",
            _knowmem_r,
            ROUGE_MEAN + " (greedy answer vs the retain QA answer)",
            _single("knowmem_r", "KnowMem_r", "higher"),
        ),
        MetricSpec(
            "privleak",
            _privleak,
            "(AUC − AUC_retrain) / AUC_retrain × 100 of a membership attack over texts",
            _single("privleak", "PrivLeak", "zero"),
        ),
        MetricSpec(
            "utility",
            _utility,
            "exp(summed NLL / scored tokens) over all documents of a split",
            (
                ResultSpec("ppl_retain", "ppl_retain", "PPL retain", "lower"),
                ResultSpec("ppl_holdout", "ppl_holdout", "PPL holdout", None),
            ),
        ),
    )
}
# Every number written to results.jsonl by a metric, by its record name.
RESULTS: dict[str, ResultSpec] = {r.name: r for spec in METRICS.values() for r in spec.results}
# The metrics that measure how much of the forget set a model still knows ("retained" in the report, the
# recovery signal of the audit), KnowMem_f (the paper's headline) first.
FORGET_METRICS = ("knowmem_f", "verbmem_f")


def validate_metrics(metrics: list[str], have_retrain_auc: bool) -> None:
    """Reject unknown metric names (listing the valid ones) and PrivLeak without AUC_retrain, before any work."""
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if "privleak" in metrics and not have_retrain_auc:
        raise ValueError(
            "metric 'privleak' needs the retrain model's AUC (retrain_auc / --retrain DIR); "
            "leave privleak out of the metrics to run the others"
        )


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
    validate_metrics(metrics, retrain_auc is not None)
    opts = EvalOptions(batch_size, progress, retrain_auc)
    was_training = model.training
    model.eval()
    results = {}
    try:
        for name in metrics:
            start = time.perf_counter()
            results[name] = METRICS[name].fn(model, tokenizer, corpus, opts)
            results[name]["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        model.train(was_training)
    return results
