"""Run an audit: baselines (target, unlearned), the update-size diagnostics between them, and every attack on the
unlearned model, scored by the chosen benchmark (`qunlearn.audit.benchmarks`), with verdicts."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from torch import nn

from qunlearn.audit.attacks import Attack, expand_attacks, relearn
from qunlearn.audit.benchmarks import BENCHMARKS, LoadedBenchmark
from qunlearn.audit.verdict import (
    DEFAULT_PARTIAL,
    DEFAULT_THRESHOLD,
    Thresholds,
    signal_verdict,
    summary,
    verdict,
    worst,
    worst_attack,
)
from qunlearn.data.tofu import FORGET_SPLITS
from qunlearn.errors import UserInputError
from qunlearn.evaluate.tofu import PROMPT_FORMATS
from qunlearn.models.integrity import CHECKS, check_finite
from qunlearn.models.io import load_model, parse_dtype, resolve_device
from qunlearn.quant.diagnostics import code_flips, update_size, update_size_reading
from qunlearn.quant.registry import get_quantizer


@dataclass(frozen=True)
class AuditInputs:
    target: Path
    unlearned: Path
    corpus: Path | None = None
    retrain: Path | None = None
    tokenizer: Path | None = None  # for checkpoints saved without tokenizer files
    trust_remote_code: bool = False


@dataclass(frozen=True)
class AuditSettings:
    benchmark: str = "muse"
    attacks: list[str] | None = None  # None: every available attack
    threshold: float = DEFAULT_THRESHOLD
    partial_threshold: float = DEFAULT_PARTIAL
    relearn_steps: int = 10
    relearn_lr: float = 1e-4
    relearn_docs: int | None = None  # cap on the relearning slice (first N documents); None: all of it
    relearn_batch_size: int = 4
    code_flips: bool = True
    tasks: list[str] = field(default_factory=list)  # lmeval: forget-signal tasks
    utility_tasks: list[str] = field(default_factory=list)  # lmeval: tasks shown as utility
    include_path: str | None = None  # lmeval: folder of extra task YAMLs
    builtin_tasks: bool = True  # lmeval: index lm-eval's own tasks too
    forget_texts: str | None = None  # lmeval: documents for relearning and forget calibration
    limit: int | None = None  # lmeval: questions per task
    forget_split: str = "forget10"  # tofu: forget01, forget05 or forget10
    prompt_format: str = "auto"  # tofu: chat, plain or auto (chat when the tokenizer has a template)
    retain_logs: str | None = None  # tofu: the retain model's earlier result, instead of --retrain
    device: str = "auto"
    device_map: str | None = None  # HF device_map ("auto": spread over GPUs and CPU); replaces `device`
    dtype: str = "fp32"  # every model is loaded in it (a precision attack loads the unlearned one in its own)
    batch_size: int = 16
    seed: int = 0

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> AuditSettings:
        """The settings `qunlearn audit`'s flags give (one flag per field; --no-builtin-tasks and --no-code-flips
        turn theirs off), validated."""
        switches = {"builtin_tasks": not args.no_builtin_tasks, "code_flips": not args.no_code_flips}
        settings = cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in switches}, **switches)
        settings.validate()
        return settings

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(partial=self.partial_threshold, recovers=self.threshold)

    def loading(self, inputs: AuditInputs, device: str) -> dict:
        """`load_model`'s options for every model the audit loads: target, unlearned, retrain, attacked copies."""
        return {
            "dtype": self.dtype,
            "device": device,
            "device_map": self.device_map,
            "tokenizer": inputs.tokenizer,
            "trust_remote_code": inputs.trust_remote_code,
        }

    def validate(self) -> None:
        """Reject bad values and options of another benchmark, naming the flag."""
        self.thresholds.validate()
        parse_dtype(self.dtype)
        if self.benchmark not in BENCHMARKS:
            raise UserInputError(f"--benchmark: unknown '{self.benchmark}'; choose from {', '.join(BENCHMARKS)}")
        if self.relearn_steps < 1 or not 0 < self.relearn_lr < float("inf") or self.relearn_batch_size < 1:
            raise UserInputError(
                "--relearn-steps and --relearn-batch-size must be >= 1 and --relearn-lr a finite number > 0"
            )
        for name in ("relearn_docs", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        if self.benchmark != "lmeval" and (self.tasks or self.utility_tasks or self.forget_texts or self.limit):
            raise UserInputError("--tasks, --utility-tasks, --forget-texts and --limit are for --benchmark lmeval")
        if self.benchmark != "tofu" and self.retain_logs:
            raise UserInputError("--retain-logs is for --benchmark tofu")
        if self.forget_split not in FORGET_SPLITS or self.prompt_format not in PROMPT_FORMATS:
            raise UserInputError(
                f"--forget-split must be one of {', '.join(FORGET_SPLITS)} and --prompt-format one "
                f"of {', '.join(PROMPT_FORMATS)}"
            )


def _unavailable(attack: Attack, bench: LoadedBenchmark) -> str | None:
    """Why the benchmark cannot feed this attack (no relearning or calibration text), or None."""
    if attack.kind == "relearning" and not bench.forget_texts:
        return f"benchmark {bench.name} has no forget documents to relearn on"
    calibration = attack.calibration or "generic"
    if (
        attack.kind == "quantization"
        and get_quantizer(attack.quantizer).needs_calibration
        and not bench.calibration.get(calibration)
    ):
        return f"benchmark {bench.name} has no {calibration} calibration text"
    return None


def _runnable(attacks: list[Attack], bench: LoadedBenchmark, explicit: bool) -> tuple[list[Attack], list[dict]]:
    """The attacks the benchmark can feed; the others are skipped (an explicitly named one is an error)."""
    keep, skipped = [], []
    for attack in attacks:
        reason = _unavailable(attack, bench)
        if reason and explicit:
            raise UserInputError(f"--attacks {attack.name}: {reason}")
        if reason:
            skipped.append({"name": attack.name, "reason": reason})
        else:
            keep.append(attack)
    return keep, skipped


def run_audit(inputs: AuditInputs, settings: AuditSettings = AuditSettings(), log=print) -> dict:
    """The audit as a JSON-able dict: settings, benchmark, baselines, update sizes and one entry per attack with its
    verdict, the worst attack named in the summary. Paths are checked where they are read (`load_model` keeps
    local paths local; each benchmark's loader names a missing data directory), so hub ids work too."""
    settings.validate()
    attacks, skipped = expand_attacks(settings.attacks, settings.dtype)
    device = str(resolve_device(settings.device))
    loading = settings.loading(inputs, device)
    bench = BENCHMARKS[settings.benchmark](inputs, settings, device)
    attacks, unfed = _runnable(attacks, bench, explicit=settings.attacks is not None)
    baselines, sizes, flips_against = _baselines(inputs, bench, loading, settings.code_flips, log)
    entries = []
    for attack in attacks:
        entry = _attack(attack, inputs, settings, bench, loading, flips_against, baselines)
        entries.append(entry)
        log(f"{attack.name}: {entry['verdict']} ({_fmt(entry['scores'])})")
    return _audit_record(inputs, settings, device, bench, baselines, sizes, entries, skipped + unfed)


def _baselines(
    inputs: AuditInputs, bench: LoadedBenchmark, loading: dict, code_flips: bool, log
) -> tuple[tuple[dict, dict], dict, nn.Module | None]:
    """Scores of the target and the unlearned model, the update size between them, and the target model itself
    when the code flips need its weights (else None, so that it is freed)."""
    target_model, tokenizer = load_model(inputs.target, **loading)
    target = bench.score(target_model, tokenizer)
    log(f"target: {_fmt(target)}")
    unlearned_model, _ = load_model(inputs.unlearned, **loading)
    unlearned = bench.score(unlearned_model, tokenizer)
    log(f"unlearned: {_fmt(unlearned)}")
    sizes = update_size(target_model, unlearned_model)
    log(update_size_reading(sizes))
    return (target, unlearned), sizes, target_model if code_flips else None


def _audit_record(
    inputs: AuditInputs,
    settings: AuditSettings,
    device: str,
    bench: LoadedBenchmark,
    baselines: tuple[dict, dict],
    sizes: dict,
    entries: list[dict],
    skipped: list[dict],
) -> dict:
    """The audit.json record of a finished audit."""
    top = worst_attack(entries)
    loaded = ["target", "unlearned"] + (["retrain"] if inputs.retrain is not None else [])
    return {
        "benchmark": bench.name,
        "target": str(Path(inputs.target).resolve()),
        "unlearned": str(Path(inputs.unlearned).resolve()),
        "corpus": str(Path(inputs.corpus).resolve()) if inputs.corpus else None,
        "retrain": str(Path(inputs.retrain).resolve()) if inputs.retrain else None,
        "settings": asdict(settings) | {"device": device},
        "thresholds": asdict(settings.thresholds),
        "signals": [asdict(s) for s in bench.signals],
        "utility": list(bench.utility),
        "labels": bench.labels,
        "info": bench.info,
        "notes": list(bench.notes),
        "baselines": {"target": baselines[0], "unlearned": baselines[1]},
        "integrity": f"passed at every load of {', '.join(loaded)} (attacked copies included): {CHECKS}",
        "update_size": sizes,
        "update_size_reading": update_size_reading(sizes),
        "attacks": entries,
        "skipped": skipped,
        "worst_attack": top["name"] if top else None,
        "summary": summary(entries, bench.labels),
        "verdict": worst([e["verdict"] for e in entries]),
    }


def _attack(
    attack: Attack,
    inputs: AuditInputs,
    settings: AuditSettings,
    bench: LoadedBenchmark,
    loading: dict,
    target_model,
    baselines: tuple[dict, dict],
) -> dict:
    """One attack on a fresh copy of the unlearned model: scores, recovery per signal, verdict, code flips (when
    `target_model` is given), what its quantizer did instead of its settings (`fallbacks`, empty when nothing or
    not a quantization attack) and the time it took."""
    start = time.perf_counter()
    model, tok = load_model(inputs.unlearned, **loading | {"dtype": attack.dtype or loading["dtype"]})
    flips, fallbacks = None, []
    if attack.kind == "quantization":
        quantizer = get_quantizer(attack.quantizer)
        calib = bench.calibration[attack.calibration or "generic"] if quantizer.needs_calibration else None
        if target_model is not None:  # by name: its own quantizer, so the attack's fallbacks are the attack's alone
            flips = code_flips(target_model, model, attack.quantizer, tok, calib)["overall"]["flip_fraction"]
        model = quantizer.quantize(model, tok, calib)
        fallbacks = quantizer.fallbacks
    elif attack.kind == "relearning":
        model = relearn(
            model,
            tok,
            bench.forget_texts,
            settings.relearn_steps,
            settings.relearn_lr,
            settings.relearn_batch_size,
            seed=settings.seed,
        )
    check_finite(model, f"{attack.name} attack on {inputs.unlearned}")  # no verdict on a broken model
    scores = bench.score(model, tok)
    target, unlearned = baselines
    per_signal = {
        s.name: signal_verdict(s, scores[s.name], unlearned[s.name], target[s.name], settings.thresholds)
        for s in bench.signals
    }
    return {
        "name": attack.name,
        "kind": attack.kind,
        "quantizer": attack.quantizer,
        "calibration": attack.calibration,
        "scores": scores,
        "recovery": per_signal,
        "verdict": verdict(per_signal),
        "code_flip_fraction": flips,
        "fallbacks": fallbacks,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.1f}" for k, v in scores.items())
