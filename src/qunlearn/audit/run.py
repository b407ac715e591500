"""Run an audit: baselines (target, unlearned) and every attack on the evaluation half, with verdicts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qunlearn.audit.attacks import expand_attacks, relearn
from qunlearn.audit.split import SPLIT_RULE, split_forget
from qunlearn.audit.verdict import DEFAULT_THRESHOLD, EPSILON, VERDICT_METRICS, metric_verdict, verdict
from qunlearn.data.muse import load_corpus
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import evaluate_model
from qunlearn.models.io import load_model, resolve_device
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.diagnostics import code_flips
from qunlearn.quant.registry import get_quantizer


@dataclass(frozen=True)
class AuditInputs:
    target: Path
    unlearned: Path
    corpus: Path
    retrain: Path | None = None
    tokenizer: Path | None = None  # for checkpoints saved without tokenizer files
    trust_remote_code: bool = False


@dataclass(frozen=True)
class AuditSettings:
    attacks: list[str] | None = None  # None: every available attack
    threshold: float = DEFAULT_THRESHOLD
    relearn_steps: int = 10
    relearn_lr: float = 1e-4
    relearn_docs: int | None = None  # cap on the relearning slice (first N documents); None: all of it
    relearn_batch_size: int = 4
    code_flips: bool = True
    device: str = "auto"
    batch_size: int = 16
    seed: int = 0

    def check(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"--threshold must be between 0 and 1 (got {self.threshold})")
        if self.relearn_steps < 1 or self.relearn_lr <= 0 or self.relearn_batch_size < 1:
            raise ValueError("--relearn-steps and --relearn-batch-size must be >= 1 and --relearn-lr > 0")
        if self.relearn_docs is not None and self.relearn_docs < 1:
            raise ValueError(f"--relearn-docs must be >= 1 (got {self.relearn_docs})")


def _scores(results: dict) -> dict[str, float]:
    return {name: result["value"] for name, result in results.items()}


def run_audit(inputs: AuditInputs, settings: AuditSettings = AuditSettings(), log=print) -> dict:
    """The audit as a JSON-able dict: settings, split, baselines and one entry per attack with its verdict."""
    settings.check()
    for name in ("target", "unlearned", "corpus", "retrain"):
        path = getattr(inputs, name)
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"--{name}: {path}: directory not found")
    attacks, skipped = expand_attacks(settings.attacks)
    device = str(resolve_device(settings.device))
    corpus = load_corpus(inputs.corpus)
    split = split_forget(corpus)
    relearn_docs = split.relearn_docs[: settings.relearn_docs]
    if any(a.kind == "relearning" for a in attacks) and not relearn_docs:
        raise ValueError("relearning attack: no forget document mentions only relearn-side items "
                         "(leave 'relearn' out of --attacks for this corpus)")
    metrics = ["verbmem_f", "knowmem_f"]
    auc = None
    if inputs.retrain is not None:
        auc = retrain_auc(inputs.retrain, corpus, device=device, batch_size=settings.batch_size,
                          tokenizer=inputs.tokenizer, progress=False)
        metrics.append("privleak")

    def evaluate(model, tokenizer) -> dict[str, float]:
        return _scores(evaluate_model(model, tokenizer, split.eval_corpus, metrics, auc, settings.batch_size,
                                      progress=False))

    loading = {"tokenizer": inputs.tokenizer, "trust_remote_code": inputs.trust_remote_code}
    target_model, tokenizer = load_model(inputs.target, device=device, **loading)
    target = evaluate(target_model, tokenizer)
    log(f"target: {_fmt(target)}")
    unlearned_model, _ = load_model(inputs.unlearned, device=device, **loading)
    unlearned = evaluate(unlearned_model, tokenizer)
    log(f"unlearned: {_fmt(unlearned)}")
    del unlearned_model
    if not settings.code_flips:
        target_model = None  # only the code flips need the target's weights

    texts = {c: calibration_texts(corpus_dir=inputs.corpus, calibrate_on=c) for c in ("generic", "forget")}
    entries = []
    for attack in attacks:
        start = time.perf_counter()
        model, tok = load_model(inputs.unlearned, dtype=attack.dtype, device=device, **loading)
        flips = None
        if attack.kind == "quantization":
            quantizer = get_quantizer(attack.quantizer)
            calib = texts[attack.calibration or "generic"] if quantizer.needs_calibration else None
            if settings.code_flips:
                flips = code_flips(target_model, model, quantizer, tok, calib)["overall"]["flip_fraction"]
            model = quantizer.quantize(model, tok, calib)
        elif attack.kind == "relearning":
            model = relearn(model, tok, relearn_docs, settings.relearn_steps, settings.relearn_lr,
                            settings.relearn_batch_size, seed=settings.seed)
        scores = evaluate(model, tok)
        del model
        per_metric = {m: metric_verdict(scores[m], unlearned[m], target[m], settings.threshold)
                      for m in VERDICT_METRICS}
        entry = {"name": attack.name, "kind": attack.kind, "quantizer": attack.quantizer,
                 "calibration": attack.calibration, "scores": scores, "recovery": per_metric,
                 "verdict": verdict(per_metric), "code_flip_fraction": flips,
                 "seconds": round(time.perf_counter() - start, 2)}
        entries.append(entry)
        log(f"{attack.name}: {entry['verdict']} ({_fmt(scores)})")
    recovering = [e["name"] for e in entries if e["verdict"] == "recovers"]
    summary = (f"{len(recovering)} of {len(entries)} attacks recover the forgotten knowledge: {', '.join(recovering)}"
               if recovering else f"unlearning holds under all {len(entries)} attacks")
    return {
        "target": str(Path(inputs.target).resolve()), "unlearned": str(Path(inputs.unlearned).resolve()),
        "corpus": str(Path(inputs.corpus).resolve()),
        "retrain": str(Path(inputs.retrain).resolve()) if inputs.retrain else None,
        "settings": asdict(settings) | {"device": device},
        "threshold": settings.threshold, "epsilon": EPSILON, "verdict_metrics": list(VERDICT_METRICS),
        "split": {"rule": SPLIT_RULE, **split.counts, "relearn_docs_used": len(relearn_docs)},
        "baselines": {"target": target, "unlearned": unlearned},
        "attacks": entries, "skipped": skipped, "summary": summary,
        "verdict": "recovers" if recovering else "holds",
    }


def _fmt(scores: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.1f}" for k, v in scores.items())

