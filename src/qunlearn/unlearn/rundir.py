"""An unlearning run's directory: where a run writes (in place, or staged beside an earlier run), its records
(unlearn.yaml with every setting and its status), and its epoch checkpoints (model, optimizer, RNG, loop state)."""

from __future__ import annotations

import platform
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import Accelerator

from qunlearn import __version__
from qunlearn.data.muse import Corpus
from qunlearn.errors import UserInputError
from qunlearn.fileio import atomic_write_json, atomic_write_yaml, read_yaml
from qunlearn.outputs import check_output_dir
from qunlearn.unlearn.methods import Method
from qunlearn.unlearn.settings import UnlearnSettings

SETTINGS_FILE = "unlearn.yaml"
LOSSES_FILE = "losses.json"
SALIENCY_FILE = "saliency.json"
REFERENCE_FILE = "reference_logprobs.json"
CHECKPOINTS = "checkpoints"


def prepare_out_dir(out_dir: Path, resume: bool, inputs: dict[str, Path], main: bool) -> Path:
    """Check `out_dir` and choose where this run writes: in place for a new or resumed run, else a staging dir.

    An earlier run in `out_dir` that is not resumed stays intact until the new one is complete (then swapped
    in); an input or a directory of another kind is refused.
    """
    check_output_dir(out_dir, SETTINGS_FILE, "an unlearning run", inputs)
    if (out_dir / SETTINGS_FILE).is_file() and not resume:
        staging = out_dir.parent / f".{out_dir.name}.staging"
        if main:
            shutil.rmtree(staging, ignore_errors=True)  # left by a killed run; the main process holds the lock
        return staging
    return out_dir


def record_failure(work_dir: Path, out_dir: Path, err: BaseException) -> None:
    """After a failed run: drop a staging dir, or mark the run's unlearn.yaml `status: failed` with the reason."""
    if work_dir != out_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    elif isinstance(err, UserInputError):
        pass  # refused before training (e.g. --resume with other settings): the records stay as they were
    elif (out_dir / SETTINGS_FILE).is_file():
        record = read_yaml(out_dir / SETTINGS_FILE)
        if record.get("status") != "complete":
            reason = " ".join(str(err).split()) or type(err).__name__
            atomic_write_yaml(out_dir / SETTINGS_FILE, record | {"status": "failed", "reason": reason})
    elif out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete epoch checkpoint in `out_dir`, if any."""
    done = sorted(
        (p for p in (out_dir / CHECKPOINTS).glob("epoch-*") if p.suffix != ".tmp"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return done[-1] if done else None


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: Any) -> None:
    """Model, optimizer, RNG and loop state after an epoch; written under a temp name, then renamed."""
    final = out_dir / CHECKPOINTS / f"epoch-{state.epoch}"
    tmp = final.with_suffix(".tmp")
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank's RNG state is in `tmp` before it is renamed
    if accelerator.is_main_process:
        atomic_write_json(tmp / "loop_state.json", asdict(state))
        tmp.rename(final)
        for old in (out_dir / CHECKPOINTS).glob("epoch-*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def write_record(
    out_dir: Path,
    method: Method,
    target_dir: Path,
    corpus: Corpus,
    settings: UnlearnSettings,
    accelerator: Accelerator,
    **extra: object,
) -> None:
    """Write unlearn.yaml: method, every resolved setting, environment, and `extra` (status, timings)."""
    atomic_write_yaml(
        out_dir / SETTINGS_FILE,
        {
            "method": method.name,
            "forget_loss": method.forget,
            "retain_term": method.retain,
            "sure": method.sure,
            "target": str(target_dir),
            "corpus": str(corpus.root),
            "settings": asdict(settings),
            "world_size": accelerator.num_processes,
            "device": str(accelerator.device),
            "global_batch": settings.batch_size * settings.grad_accum * accelerator.num_processes,
            "versions": {
                "qunlearn": __version__,
                "torch": str(torch.__version__),
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }
        | extra,
    )


def previous_run(out_dir: Path, method: Method, settings: UnlearnSettings) -> dict | None:
    """The records of the run `--resume` continues (None if there is none); refuse one with other settings."""
    if not (out_dir / SETTINGS_FILE).is_file():
        return None
    previous = read_yaml(out_dir / SETTINGS_FILE)
    if previous.get("settings") != asdict(settings) or previous.get("method") != method.name:
        raise UserInputError(
            f"--resume: {out_dir / SETTINGS_FILE} was written with other settings or method; "
            "rerun with the same options or without --resume"
        )
    return previous
