"""The audit's benchmark registry: what "knowing the forget set" means, per benchmark.

A benchmark is one entry of `BENCHMARKS`: a loader `load(inputs, settings, device) -> LoadedBenchmark`, called once
per audit before any model is scored. The `LoadedBenchmark` it returns supplies
  (a) `score(model, tokenizer) -> {key: number}`: how to score a model in memory (no checkpoint per attack);
  (b) `signals`: which numbers the verdict is taken on, each a `Signal` with its direction, epsilon and kind —
      "forget" (knowledge of the forget set: KnowMem_f, VerbMem_f, MCQ accuracy on a hazard task) or
      "membership" (PrivLeak, TOFU's forget quality); `utility`: numbers shown beside them but never judged;
  (c) `labels` (a key's display name) and `notes` (how the numbers were made) for the report;
  plus the texts the attacks need: `forget_texts` (relearning trains on them; [] makes relearning unavailable)
  and `calibration` ({"generic": texts, "forget": texts or None} for GPTQ/AWQ).
Every benchmark gets the same attacks, recovery fractions and verdicts (`qunlearn.audit.verdict`).

Adding one is one loader function and one line in `BENCHMARKS` (`load_tofu_benchmark` is a complete example:
forget-set answer probability and ROUGE as forget signals, log10 of forget quality as a membership signal, model
utility shown but not judged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qunlearn.audit.split import SPLIT_RULE, split_forget
from qunlearn.audit.verdict import Signal
from qunlearn.data.muse import load_corpus, split_documents
from qunlearn.data.tofu import TofuData, TofuItem, load_tofu, plain_prompt
from qunlearn.errors import UserInputError
from qunlearn.evaluate.lmeval import mcq_accuracy, task_manager
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import FORGET_METRICS, RESULTS, evaluate_model
from qunlearn.evaluate.tofu import (
    evaluate_tofu,
    read_retain_truth_ratios,
    resolve_prompt_format,
    retain_model_truth_ratios,
)
from qunlearn.fileio import read_json, read_text
from qunlearn.models.io import load_model
from qunlearn.quant.calibration import calibration_texts

if TYPE_CHECKING:
    from qunlearn.audit.run import AuditInputs, AuditSettings

Scorer = Callable[[Any, Any], dict[str, float]]


@dataclass(frozen=True)
class LoadedBenchmark:
    """What a benchmark gives the audit once its data is loaded (see the module docstring)."""

    name: str
    score: Scorer
    signals: tuple[Signal, ...]
    utility: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    forget_texts: list[str] = field(default_factory=list)
    calibration: dict[str, list[str] | None] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def load_muse(inputs: AuditInputs, settings: AuditSettings, device: str) -> LoadedBenchmark:
    """MUSE: KnowMem_f and VerbMem_f on the evaluation half of the forget set; PrivLeak when a retrain model is given.

    Relearning trains on the forget documents of the other half (`qunlearn.audit.split`)."""
    if inputs.corpus is None:
        raise UserInputError("--benchmark muse needs --corpus (a MUSE-layout directory)")
    corpus = load_corpus(inputs.corpus)
    split = split_forget(corpus)
    docs = split.relearn_docs[: settings.relearn_docs]
    metrics = ["verbmem_f", "knowmem_f"]
    signals = [Signal(m, RESULTS[m].label) for m in FORGET_METRICS]
    auc = None
    if inputs.retrain is not None and split.eval_corpus.privleak_forget:
        auc = retrain_auc(
            inputs.retrain,
            split.eval_corpus,
            batch_size=settings.batch_size,
            progress=False,
            **settings.loading(inputs, device),
        )
        metrics.append("privleak")
        signals.append(Signal("privleak", RESULTS["privleak"].label, knows="lower", kind="membership"))

    def score(model, tokenizer) -> dict[str, float]:
        results = evaluate_model(model, tokenizer, split.eval_corpus, metrics, auc, settings.batch_size, progress=False)
        return {name: result["value"] for name, result in results.items()}

    counts = split.counts | {"relearn_docs_used": len(docs)}
    notes = (
        (
            f"Evaluation half: {counts['eval_verbmem']} VerbMem_f and {counts['eval_knowmem']} KnowMem_f items; "
            f"relearning trained on {len(docs)} of {counts['forget_docs']} forget documents ({SPLIT_RULE})."
        ),
    )
    if inputs.retrain is None:
        notes += ("No --retrain model: PrivLeak (the membership signal) is not measured.",)
    elif auc is None:
        notes += ("PrivLeak is not measured: every PrivLeak forget text is in the relearning slice.",)
    else:
        notes += (
            (
                f"PrivLeak on {counts['eval_privleak']} of {counts['privleak_forget']} forget texts (those outside "
                "the relearning slice) against the holdout texts; AUC_retrain on the same texts."
            ),
        )
    return LoadedBenchmark(
        name="muse",
        score=score,
        signals=tuple(signals),
        labels={m: RESULTS[m].label for m in metrics},
        forget_texts=docs,
        info={"split": {"rule": SPLIT_RULE, **counts}, "retrain_auc": auc},
        notes=notes,
        calibration={c: calibration_texts(corpus_dir=inputs.corpus, calibrate_on=c) for c in ("generic", "forget")},
    )


def load_lmeval(inputs: AuditInputs, settings: AuditSettings, device: str) -> LoadedBenchmark:
    """Multiple-choice tasks through lm-evaluation-harness: accuracy (×100) per `--tasks` task is a forget signal,
    per `--utility-tasks` task a utility number. Relearning and forget calibration use `--forget-texts`; generic
    calibration (GPTQ/AWQ) uses the retain and holdout text of `--corpus` when one is given."""
    if not settings.tasks:
        raise UserInputError("--benchmark lmeval needs --tasks (e.g. --tasks wmdp_bio)")
    manager = task_manager([*settings.tasks, *settings.utility_tasks], settings.include_path, settings.builtin_tasks)
    tasks = [*settings.tasks, *settings.utility_tasks]
    forget = _read_texts(settings.forget_texts) if settings.forget_texts else []

    def score(model, tokenizer) -> dict[str, float]:
        return mcq_accuracy(model, tokenizer, tasks, manager, settings.batch_size, settings.limit)

    notes = [
        f"Accuracy (% of questions whose correct choice has the highest log-likelihood, lm-evaluation-harness) "
        f"on {', '.join(settings.tasks)}"
        + (f"; utility: {', '.join(settings.utility_tasks)}." if settings.utility_tasks else ".")
    ]
    if settings.limit:
        notes.append(f"Only the first {settings.limit} questions of each task (--limit).")
    if not forget:
        notes.append("No --forget-texts: relearning and forget-calibrated quantization are unavailable.")
    return LoadedBenchmark(
        name="lmeval",
        score=score,
        signals=tuple(Signal(t, f"{t} acc") for t in settings.tasks),
        utility=tuple(settings.utility_tasks),
        labels={t: f"{t} acc" for t in tasks},
        forget_texts=forget,
        calibration={
            "generic": calibration_texts(corpus_dir=inputs.corpus) if inputs.corpus else None,
            "forget": forget or None,
        },
        info={"tasks": settings.tasks, "utility_tasks": settings.utility_tasks, "limit": settings.limit},
        notes=tuple(notes),
    )


TOFU_SPLIT_RULE = "first half of the forget questions: relearning; second half: scored"


def _qa_texts(items: list[TofuItem]) -> list[str]:
    """QA pairs as plain training text (`Question: … Answer: …`) for relearning and calibration."""
    return [plain_prompt(item.question) + item.answer for item in items]


TOFU_LABELS = {
    "forget_Q_A_Prob": "forget answer prob ×100",
    "forget_Q_A_ROUGE": "forget ROUGE-L recall ×100",
    "model_utility": "model utility ×100",
    "forget_quality": "forget quality (p)",
    "log10_forget_quality": "log10 forget quality",
}


def _tofu_scores(summary: dict) -> dict[str, float]:
    """The audit's TOFU numbers from `evaluate_tofu`'s summary: probabilities and utility ×100 (so that the
    nothing-forgotten gap of 1 point applies), and forget quality with its log10 when a reference was given."""
    scores = {key: 100 * summary[key] for key in ("forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility")}
    if summary["forget_quality"] is not None:
        scores["forget_quality"] = summary["forget_quality"]
        scores["log10_forget_quality"] = math.log10(max(summary["forget_quality"], 1e-300))
    return scores


def _tofu_reference(
    inputs: AuditInputs, settings: AuditSettings, device: str, scored: TofuData, half: int, n_forget: int
) -> list[float] | None:
    """Forget quality's reference: the retain model's truth ratios on the scored questions, from the model itself
    (`--retrain`) or from its earlier result (`--retain-logs`, covering all `n_forget` questions); None without."""
    if inputs.retrain is not None:
        model, tokenizer = load_model(inputs.retrain, **settings.loading(inputs, device))
        fmt = resolve_prompt_format(tokenizer, settings.prompt_format)
        return retain_model_truth_ratios(model, tokenizer, scored, fmt, settings.batch_size, progress=False)
    if settings.retain_logs is None:
        return None
    ratios = read_retain_truth_ratios(settings.retain_logs)
    if len(ratios) != n_forget:
        raise UserInputError(
            f"--retain-logs {settings.retain_logs}: {len(ratios)} forget truth ratios, but "
            f"{settings.forget_split} has {n_forget} questions"
        )
    return ratios[half:]


def load_tofu_benchmark(inputs: AuditInputs, settings: AuditSettings, device: str) -> LoadedBenchmark:
    """TOFU, scored as OpenUnlearning does (`qunlearn.evaluate.tofu`): forget-set answer probability and ROUGE-L
    recall (×100) are forget signals; log10 of forget quality (the KS-test p-value of forget truth ratios against
    the retain model's: lower = more distinguishable from a model that never saw the data) is a membership signal
    when `--retrain` (the retain model) or `--retain-logs` is given; model utility (×100) is shown, not judged.

    Relearning trains on the QA pairs of the first half of the forget questions; every model is scored on the
    second half (the retain model's reference truth ratios too), so relearning never sees a scored answer."""
    if inputs.corpus is None:
        raise UserInputError("--benchmark tofu needs --corpus (a TOFU directory, or a HF dataset id with the hf extra)")
    data = load_tofu(str(inputs.corpus), settings.forget_split)
    half = len(data.forget) // 2
    if half == 0:
        raise UserInputError(
            f"{inputs.corpus}: {settings.forget_split} has {len(data.forget)} question(s); "
            "the audit needs at least 2 (half to relearn, half to score)"
        )
    relearn_items, scored = data.forget[:half], replace(data, forget=data.forget[half:])
    reference = _tofu_reference(inputs, settings, device, scored, half, len(data.forget))
    formats: dict[str, str] = {}

    def score(model, tokenizer) -> dict[str, float]:
        fmt = resolve_prompt_format(tokenizer, settings.prompt_format)
        formats["prompt_format"] = fmt.kind
        result = evaluate_tofu(model, tokenizer, scored, reference, fmt, settings.batch_size, progress=False)
        return _tofu_scores(result["summary"])

    labels = TOFU_LABELS
    signals = [
        Signal("forget_Q_A_Prob", labels["forget_Q_A_Prob"]),
        Signal("forget_Q_A_ROUGE", labels["forget_Q_A_ROUGE"]),
    ]
    notes = [
        (
            f"TOFU {settings.forget_split} of {data.source}: {len(scored.forget)} forget questions scored; "
            f"relearning trained on the other {half} ({TOFU_SPLIT_RULE}). Prompt format: {settings.prompt_format} "
            "(chat when the tokenizer has a template, else `Question: … Answer: `)."
        )
    ]
    if reference is None:
        notes.append(
            "No --retrain (retain model) or --retain-logs: forget quality (the membership signal) is not measured."
        )
    else:
        signals.append(
            Signal(
                "log10_forget_quality", labels["log10_forget_quality"], knows="lower", epsilon=0.5, kind="membership"
            )
        )
        notes.append(
            "Forget quality: KS-test p-value of the scored forget questions' truth ratios against the retain "
            "model's on the same questions; judged on log10(p), a gap of at most 0.5 meaning nothing "
            "was forgotten."
        )
    return LoadedBenchmark(
        name="tofu",
        score=score,
        signals=tuple(signals),
        utility=("model_utility", *(("forget_quality",) if reference is not None else ())),
        labels=labels,
        forget_texts=_qa_texts(relearn_items),
        info={"split": {"rule": TOFU_SPLIT_RULE, "relearn": half, "scored": len(scored.forget)}, "formats": formats},
        calibration={"generic": _qa_texts(data.retain), "forget": _qa_texts(data.forget)},
        notes=tuple(notes),
    )


def _read_texts(path: Path) -> list[str]:
    """Documents from a JSON list of strings, or a text file with documents separated by blank lines."""
    path = Path(path)
    if path.suffix == ".json":
        texts = read_json(path)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise UserInputError(f"--forget-texts {path}: expected a JSON list of strings")
    else:
        texts = split_documents(read_text(path))
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserInputError(f"--forget-texts {path}: no documents")
    return texts


BENCHMARKS: dict[str, Callable[..., LoadedBenchmark]] = {
    "muse": load_muse,
    "tofu": load_tofu_benchmark,
    "lmeval": load_lmeval,
}
