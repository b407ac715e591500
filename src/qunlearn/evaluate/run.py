"""Evaluate one checkpoint as `qunlearn evaluate` does: MUSE metrics (PrivLeak's AUC_retrain from a retrain model)
or TOFU metrics (forget quality's reference from a retain model or its earlier result), as one JSON-able result."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import transformers

from qunlearn import __version__
from qunlearn.data.muse import load_corpus
from qunlearn.data.tofu import TofuData, load_tofu
from qunlearn.errors import UserInputError
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import METRICS, evaluate_model, validate_metrics
from qunlearn.evaluate.tofu import (
    DEFAULT_DATE_STRING,
    DEFAULT_SYSTEM_PROMPT,
    MAX_NEW_TOKENS,
    evaluate_tofu,
    read_retain_truth_ratios,
    resolve_prompt_format,
    retain_model_truth_ratios,
)
from qunlearn.models.io import load_model, parse_dtype, resolve_device

SUITES = ("muse", "tofu")


@dataclass(frozen=True)
class EvaluateSettings:
    """What `qunlearn evaluate` scores and how: the checkpoint and its data (a MUSE corpus; TOFU data by directory or
    HF dataset id), the references, the MUSE metrics or TOFU's prompt options, and loading and batching."""

    model: str
    corpus: str
    benchmark: str = "muse"
    metrics: list[str] | None = None  # MUSE; None: every metric (PrivLeak only with `retrain`)
    retrain: str | None = None  # MUSE: the retrain model, PrivLeak's AUC_retrain
    forget_split: str = "forget10"  # TOFU
    retain_model: str | None = None  # TOFU: the retain model, forget quality's reference ...
    retain_logs: str | None = None  # TOFU: ... or its earlier result
    prompt_format: str = "auto"  # TOFU: chat, plain or auto
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    date_string: str = DEFAULT_DATE_STRING
    max_new_tokens: int = MAX_NEW_TOKENS
    dtype: str = "fp32"
    device: str = "auto"
    device_map: str | None = None
    batch_size: int = 16
    progress: bool = True
    tokenizer: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> EvaluateSettings:
        """The settings `qunlearn evaluate`'s flags give (one flag per field; --no-progress turns progress off),
        validated."""
        switches = {"progress": not args.no_progress}
        settings = cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in switches}, **switches)
        settings.validate()
        return settings

    @property
    def muse_metrics(self) -> list[str]:
        """The MUSE metrics to run: those asked for, else all of them (PrivLeak only with a retrain model)."""
        if self.metrics is not None:
            return self.metrics
        return [m for m in METRICS if m != "privleak" or self.retrain is not None]

    def validate(self) -> None:
        """Reject unknown metrics, PrivLeak without a retrain model, a bad batch size or dtype, and two TOFU
        references, naming the flag."""
        if self.benchmark not in SUITES:
            raise UserInputError(f"--benchmark: unknown '{self.benchmark}'; choose from {', '.join(SUITES)}")
        if self.benchmark == "muse":
            validate_metrics(self.muse_metrics, have_retrain_auc=self.retrain is not None)
        if self.batch_size < 1:
            raise UserInputError(f"--batch-size must be >= 1 (got {self.batch_size})")
        parse_dtype(self.dtype)
        if self.benchmark == "tofu" and self.retain_model and self.retain_logs:
            raise UserInputError("give --retain-model or --retain-logs, not both")


def evaluate_checkpoint(settings: EvaluateSettings, tofu_data: TofuData | None = None) -> dict:
    """The result `qunlearn evaluate` writes for `settings.model`; TOFU data is read from `settings.corpus` unless
    given (a caller that read it first, to report a broken data set before anything else)."""
    device = str(resolve_device(settings.device))
    if settings.benchmark == "tofu":
        return _tofu(settings, device, tofu_data or load_tofu(settings.corpus, settings.forget_split))
    return _muse(settings, device)


def _loading(settings: EvaluateSettings, device: str) -> dict:
    """`load_model`'s options for every model the command loads (the scored one and its reference alike)."""
    return {
        "dtype": settings.dtype,
        "device": device,
        "device_map": settings.device_map,
        "tokenizer": settings.tokenizer,
        "trust_remote_code": settings.trust_remote_code,
    }


def _versions() -> dict[str, str]:
    return {"qunlearn": __version__, "torch": str(torch.__version__), "transformers": transformers.__version__}


def _muse(settings: EvaluateSettings, device: str) -> dict:
    """MUSE: AUC_retrain from the retrain model when PrivLeak is asked for, then every metric of the model."""
    corpus = load_corpus(settings.corpus)
    metrics = settings.muse_metrics
    loading = _loading(settings, device)
    auc_retrain = None
    if "privleak" in metrics:
        auc_retrain = retrain_auc(
            settings.retrain, corpus, batch_size=settings.batch_size, progress=settings.progress, **loading
        )
    model, tokenizer = load_model(settings.model, **loading)
    start = time.perf_counter()
    results = evaluate_model(
        model, tokenizer, corpus, metrics, auc_retrain, settings.batch_size, progress=settings.progress
    )
    return {
        "model": str(Path(settings.model).resolve()),
        "corpus": str(Path(settings.corpus).resolve()),
        "retrain": str(Path(settings.retrain).resolve()) if settings.retrain else None,
        "settings": {
            "metrics": metrics,
            "device": device,
            "device_map": settings.device_map,
            "dtype": settings.dtype,
            "batch_size": settings.batch_size,
            "decoding": "greedy",
        },
        "seconds": round(time.perf_counter() - start, 3),
        "versions": _versions(),
        "metrics": results,
    }


def _tofu(settings: EvaluateSettings, device: str, data: TofuData) -> dict:
    """TOFU: the retain model's forget truth ratios first (when given), then every metric of the model."""
    reference = read_retain_truth_ratios(settings.retain_logs) if settings.retain_logs else None
    loading = _loading(settings, device)
    prompt = (settings.prompt_format, settings.system_prompt, settings.date_string)
    if settings.retain_model:
        retain_lm, retain_tok = load_model(settings.retain_model, **loading)
        fmt = resolve_prompt_format(retain_tok, *prompt)
        reference = retain_model_truth_ratios(retain_lm, retain_tok, data, fmt, settings.batch_size, settings.progress)
        del retain_lm
    model, tokenizer = load_model(settings.model, **loading)
    fmt = resolve_prompt_format(tokenizer, *prompt)
    result = evaluate_tofu(
        model, tokenizer, data, reference, fmt, settings.batch_size, settings.progress, settings.max_new_tokens
    )
    retain = settings.retain_model or settings.retain_logs
    header = {
        "model": str(Path(settings.model).resolve()),
        "versions": _versions(),
        "device": device,
        "dtype": settings.dtype,
        "batch_size": settings.batch_size,
    }
    return header | {"retain_reference": str(Path(retain).resolve()) if retain else None} | result
