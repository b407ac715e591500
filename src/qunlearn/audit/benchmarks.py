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

Adding one (e.g. TOFU: forget quality as a membership signal with knows="lower" — a higher p-value means more
forgotten — and a small epsilon on its scale, the forget-set answer probability / ROUGE as forget signals, model
utility as utility) is one loader function and one line in `BENCHMARKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qunlearn.audit.split import SPLIT_RULE, split_forget
from qunlearn.audit.verdict import Signal
from qunlearn.data.muse import load_corpus, split_documents
from qunlearn.errors import UserInputError
from qunlearn.evaluate.lmeval import mcq_accuracy, task_manager
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import FORGET_METRICS, RESULTS, evaluate_model
from qunlearn.fileio import read_json, read_text
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
        auc = retrain_auc(inputs.retrain, split.eval_corpus, device=device, batch_size=settings.batch_size,
                          progress=False, device_map=settings.device_map)
        metrics.append("privleak")
        signals.append(Signal("privleak", RESULTS["privleak"].label, knows="lower", kind="membership"))

    def score(model, tokenizer) -> dict[str, float]:
        results = evaluate_model(model, tokenizer, split.eval_corpus, metrics, auc, settings.batch_size,
                                 progress=False)
        return {name: result["value"] for name, result in results.items()}

    counts = split.counts | {"relearn_docs_used": len(docs)}
    notes = ((f"Evaluation half: {counts['eval_verbmem']} VerbMem_f and {counts['eval_knowmem']} KnowMem_f items; "
             f"relearning trained on {len(docs)} of {counts['forget_docs']} forget documents ({SPLIT_RULE})."),)
    if inputs.retrain is None:
        notes += ("No --retrain model: PrivLeak (the membership signal) is not measured.",)
    elif auc is None:
        notes += ("PrivLeak is not measured: every PrivLeak forget text is in the relearning slice.",)
    else:
        notes += ((f"PrivLeak on {counts['eval_privleak']} of {counts['privleak_forget']} forget texts (those outside "
                  "the relearning slice) against the holdout texts; AUC_retrain on the same texts."),)
    return LoadedBenchmark(
        name="muse", score=score, signals=tuple(signals), labels={m: RESULTS[m].label for m in metrics},
        forget_texts=docs, info={"split": {"rule": SPLIT_RULE, **counts}, "retrain_auc": auc}, notes=notes,
        calibration={c: calibration_texts(corpus_dir=inputs.corpus, calibrate_on=c) for c in ("generic", "forget")})


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

    notes = [f"Accuracy (% of questions whose correct choice has the highest log-likelihood, lm-evaluation-harness) "
             f"on {', '.join(settings.tasks)}" + (f"; utility: {', '.join(settings.utility_tasks)}."
                                                 if settings.utility_tasks else ".")]
    if settings.limit:
        notes.append(f"Only the first {settings.limit} questions of each task (--limit).")
    if not forget:
        notes.append("No --forget-texts: relearning and forget-calibrated quantization are unavailable.")
    return LoadedBenchmark(
        name="lmeval", score=score, signals=tuple(Signal(t, f"{t} acc") for t in settings.tasks),
        utility=tuple(settings.utility_tasks), labels={t: f"{t} acc" for t in tasks}, forget_texts=forget,
        calibration={"generic": calibration_texts(corpus_dir=inputs.corpus) if inputs.corpus else None,
                     "forget": forget or None},
        info={"tasks": settings.tasks, "utility_tasks": settings.utility_tasks, "limit": settings.limit},
        notes=tuple(notes))


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


BENCHMARKS: dict[str, Callable[..., LoadedBenchmark]] = {"muse": load_muse, "lmeval": load_lmeval}
