"""Multiple-choice accuracy through lm-evaluation-harness (optional: `pip install -e ".[lmeval]"`).

The model is scored in memory: lm-eval's HF wrapper takes the (possibly fake-quantized or relearned) model object,
so no checkpoint is written per attack. Tasks are lm-eval's own (`wmdp_bio`, `mmlu`, ...) or task YAMLs in an
`include_path` folder (e.g. a local multiple-choice JSON file).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from qunlearn.errors import UserInputError

EXTRA = 'pip install -e ".[lmeval]"  (or: pip install lm-eval)'


def _lm_eval() -> Any:
    """The lm_eval package, or a one-line error naming the extra to install."""
    try:
        import lm_eval
    except ImportError:
        raise UserInputError(
            f"--benchmark lmeval needs lm-evaluation-harness, which is not installed: {EXTRA}"
        ) from None
    return lm_eval


def close_names(name: str, known: list[str], n: int = 5) -> list[str]:
    """Up to `n` known task names closest to `name` (difflib ratio ≥ 0.6)."""
    return difflib.get_close_matches(name, known, n=n)


def task_manager(tasks: list[str], include_path: str | Path | None = None, builtin: bool = True) -> Any:
    """lm-eval's TaskManager over its built-in tasks (unless `builtin` is False) and `include_path`; an unknown task
    name is an error listing the close names. Indexing the built-in tasks takes about a minute on a 2-core CPU."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    if not builtin and include_path is None:
        raise UserInputError("--no-builtin-tasks needs --include-path (a folder of task YAMLs)")
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=builtin)
    for name in tasks:
        if name not in manager.all_tasks:
            close = close_names(name, manager.all_tasks)
            hint = f"close names: {', '.join(close)}" if close else "no close names (see `lm-eval ls tasks`)"
            raise UserInputError(f"--tasks: unknown lm-eval task '{name}'; {hint}")
    return manager


def mcq_accuracy(
    model: Any, tokenizer: Any, tasks: list[str], manager: Any, batch_size: int = 16, limit: int | None = None
) -> dict[str, float]:
    """Accuracy × 100 per task of the in-memory `model`: the share of questions whose correct choice has the
    highest log-likelihood (lm-eval's `acc`)."""
    _lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = str(next(model.parameters()).device)
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        out = simple_evaluate(
            model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False, bootstrap_iters=0
        )
    finally:
        model.train(was_training)
    scores = {}
    for name in tasks:
        result = out["results"].get(name, {})
        if "acc,none" not in result:
            raise UserInputError(f"--tasks: lm-eval task '{name}' reports no 'acc' (is it multiple-choice?)")
        scores[name] = 100.0 * result["acc,none"]
    return scores
