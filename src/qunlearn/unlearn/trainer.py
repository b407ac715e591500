"""One training loop for every unlearning method, on HF accelerate (CPU, one GPU, or `accelerate launch`).

Weights are held in the chosen dtype (not autocast): bf16 storage decides which small updates survive,
which is part of what the project studies. Data order is a pure function of (seed, epoch), and each epoch
ends with an accelerate checkpoint (model, optimizer, RNG), so `resume` replays exactly what an
uninterrupted run would have done. LR is constant (MUSE), AdamW with HF Trainer's defaults.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from qunlearn import __version__
from qunlearn.data.batches import tokenize_documents
from qunlearn.data.muse import Corpus, load_corpus
from qunlearn.errors import TrainingDivergedError
from qunlearn.fileio import atomic_write_json, atomic_write_yaml, read_json, read_yaml
from qunlearn.models.io import load_model, parse_dtype, require_tokenizer
from qunlearn.unlearn.losses import LossTerm
from qunlearn.unlearn.methods import Method, get_method
from qunlearn.unlearn.saliency import Saliency, apply_mask, compute_saliency
from qunlearn.unlearn.schedule import count_steps, epoch_steps, micro_batches
from qunlearn.unlearn.settings import UnlearnSettings

SETTINGS_FILE = "unlearn.yaml"
LOSSES_FILE = "losses.json"
SALIENCY_FILE = "saliency.json"
CHECKPOINTS = "checkpoints"


@dataclass
class _State:
    """What an epoch checkpoint records besides model, optimizer and RNG."""

    epoch: int = 0
    step: int = 0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)


def _forward(model: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Logits of `model` on a collated batch."""
    return model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits


def _objective(
    model,
    ref,
    forget_term: LossTerm,
    retain_term: LossTerm | None,
    weight: float,
    fb: dict,
    rb: dict | None,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_forget + λ·L_retain on one micro-batch pair; returns the total and its parts (detached)."""

    def term(fn: LossTerm, batch: dict) -> torch.Tensor:
        logits = _forward(model, batch, device)
        ref_logits = None
        if fn.needs_reference:
            with torch.no_grad():
                ref_logits = _forward(ref, batch, device)
        return fn(logits, batch["labels"].to(device), ref_logits)

    forget = term(forget_term, fb)
    parts = {"forget": forget.detach()}
    total = forget
    if retain_term is not None:
        retain = term(retain_term, rb)
        parts["retain"] = retain.detach()
        total = forget + weight * retain
    return total, parts


def _describe(parts: dict[str, torch.Tensor]) -> str:
    """'loss (forget=nan, retain=0.51)' for an error message."""
    return "loss (" + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items()) + ")"


def _check_finite(value: float, what: str, step: int, epoch: int) -> None:
    """Stop with an error naming the step when a loss or gradient norm is NaN/inf (GA can diverge)."""
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"{what} became {value} at step {step} (epoch {epoch + 1}); "
            "lower --lr, raise --retain-weight, or use fewer epochs"
        )


@dataclass
class _Stepper:
    """Everything one optimizer step needs: models, optimizer, trainable parameters, loss terms, settings."""

    accelerator: Accelerator
    model: torch.nn.Module
    ref: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    forget_term: LossTerm
    retain_term: LossTerm | None
    settings: UnlearnSettings

    def __call__(self, micro: list[tuple[dict, dict | None]], state: _State, epoch: int) -> dict[str, float]:
        """Accumulate gradients over the micro-batches, clip, step; returns the step's mean loss terms."""
        acc, n = self.accelerator, len(micro)
        sums: dict[str, float] = {}
        for i, (fb, rb) in enumerate(micro):
            with acc.no_sync(self.model) if i < n - 1 else nullcontext():
                loss, parts = _objective(
                    self.model,
                    self.ref,
                    self.forget_term,
                    self.retain_term,
                    self.settings.retain_weight,
                    fb,
                    rb,
                    acc.device,
                )
                _check_finite(loss.item(), _describe(parts), state.step + 1, epoch)
                acc.backward(loss / n)
            for key, value in (parts | {"loss": loss.detach()}).items():
                sums[key] = sums.get(key, 0.0) + value.item() / n
            state.tokens += int(fb["attention_mask"].sum()) + (int(rb["attention_mask"].sum()) if rb else 0)
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(self.trainable, clip))
        _check_finite(grad_norm, "gradient norm", state.step + 1, epoch)
        self.optimizer.step()
        if self.settings.storage:
            round_to_storage(self.trainable, self.settings.storage)
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        reduced = acc.reduce(torch.tensor(list(sums.values()), device=acc.device), "mean")
        return {k: round(float(v), 6) for k, v in zip(sums, reduced)} | {"grad_norm": round(grad_norm, 6)}


@torch.no_grad()
def round_to_storage(params, storage: str) -> None:
    """Round parameters in place to the values `storage` (e.g. bf16) can hold, keeping their dtype."""
    dtype = parse_dtype(storage)
    for p in params:
        p.copy_(p.to(dtype))


def _prepare_out_dir(out_dir: Path, resume: bool) -> None:
    """Keep an earlier run of ours when resuming, clear it otherwise; refuse a non-empty directory of another kind."""
    if (out_dir / SETTINGS_FILE).is_file():
        if not resume:
            shutil.rmtree(out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir}: directory exists and is not an unlearning run; choose a new one")


def _latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete epoch checkpoint in `out_dir`, if any."""
    done = sorted(
        (p for p in (out_dir / CHECKPOINTS).glob("epoch-*") if p.suffix != ".tmp"),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return done[-1] if done else None


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, state: _State) -> None:
    """Model, optimizer, RNG and loop state after an epoch; written under a temp name, then renamed."""
    final = out_dir / CHECKPOINTS / f"epoch-{state.epoch}"
    tmp = final.with_suffix(".tmp")
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_json(tmp / "loop_state.json", asdict(state))
        tmp.rename(final)
        for old in (out_dir / CHECKPOINTS).glob("epoch-*"):
            if old != final:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _record(
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
            "num_processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "effective_batch": settings.batch_size * settings.grad_accum * accelerator.num_processes,
            "versions": {
                "qunlearn": __version__,
                "torch": str(torch.__version__),
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
        }
        | extra,
    )


def _forget_saliency(
    model, forget: list[list[int]], method: Method, s: UnlearnSettings, pad_id: int
) -> Saliency:
    """SURE's saliency pass at the target weights over the forget set (or its first `saliency_batches` batches)."""
    batches = micro_batches(forget, list(range(len(forget))), s.batch_size, pad_id)
    batches = batches[: s.saliency_batches] if s.saliency_batches else batches
    return compute_saliency(
        model, batches, method.forget_term(s.beta), s.saliency_gamma, s.saliency_percentile
    )


def unlearn(
    target_dir: str | Path,
    corpus: Corpus | str | Path,
    method: str | Method,
    out_dir: str | Path,
    settings: UnlearnSettings | None = None,
    progress: bool = True,
    resume: bool = False,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Unlearn `corpus.forget` from the target with `method`; writes an HF checkpoint and run records to `out_dir`.

    Outputs: model + tokenizer (safetensors), unlearn.yaml (every setting, status, timings), losses.json
    (per-step loss curve), saliency.json for SURE. With `resume`, continues from the last epoch
    checkpoint (same result as an uninterrupted run); a finished run is returned as is. `tokenizer`: a
    tokenizer directory for targets saved without one.
    """
    method = get_method(method) if isinstance(method, str) else method
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    target_dir, out_dir = Path(target_dir), Path(out_dir)
    accelerator = Accelerator()
    settings = (settings or UnlearnSettings()).resolve(method, accelerator.num_processes)
    require_tokenizer(tokenizer or target_dir)  # before anything is written
    if accelerator.is_main_process:
        _prepare_out_dir(out_dir, resume)
    accelerator.wait_for_everyone()
    previous = read_yaml(out_dir / SETTINGS_FILE) if resume and (out_dir / SETTINGS_FILE).is_file() else None
    if previous is not None:
        if previous.get("settings") != asdict(settings) or previous.get("method") != method.name:
            raise ValueError(
                f"--resume: {out_dir / SETTINGS_FILE} was written with other settings or method; "
                "rerun with the same options or without --resume"
            )
        if previous.get("status") == "complete":
            return out_dir
    set_seed(settings.seed)

    loading = {"dtype": settings.dtype, "tokenizer": tokenizer, "trust_remote_code": trust_remote_code}
    model, tokenizer = load_model(target_dir, device="cpu", **loading)
    pad_id = tokenizer.pad_token_id
    forget = tokenize_documents(tokenizer, corpus.forget, settings.max_length)
    retain = tokenize_documents(tokenizer, corpus.retain, settings.max_length) if method.retain else None
    if method.retain and not retain:
        raise ValueError(
            f"{corpus.root}: method '{method.name}' needs retain documents and the corpus has none"
        )
    model.to(accelerator.device)
    ref = None
    if method.needs_reference:
        ref, _ = load_model(target_dir, device=str(accelerator.device), **loading)
        ref.requires_grad_(False)
    if settings.storage:
        for net in (model, ref) if ref is not None else (model,):
            round_to_storage(net.parameters(), settings.storage)

    if accelerator.is_main_process:
        _record(out_dir, method, target_dir, corpus, settings, accelerator, status="running")
    saliency_seconds = 0.0
    trainable = list(model.parameters())
    if method.sure:
        saliency_file = out_dir / SALIENCY_FILE
        start = time.perf_counter()
        if previous is not None and saliency_file.is_file():
            selected = read_json(saliency_file)["selected"]
        else:
            found = _forget_saliency(model, forget, method, settings, pad_id)
            selected = found.selected
            if accelerator.is_main_process:
                atomic_write_json(saliency_file, found.to_json())
        saliency_seconds = time.perf_counter() - start
        trainable = apply_mask(model, selected)

    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = _State()
    checkpoint = _latest_checkpoint(out_dir) if previous is not None else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = _State(**read_json(checkpoint / "loop_state.json"))

    steps_per_epoch = count_steps(len(forget), settings, accelerator.num_processes)
    total = steps_per_epoch * settings.epochs
    total = min(total, settings.max_steps) if settings.max_steps else total
    stepper = _Stepper(
        accelerator,
        model,
        ref,
        optimizer,
        trainable,
        method.forget_term(settings.beta),
        method.retain_term(),
        settings,
    )
    model.train()
    start, checkpoint_seconds = time.perf_counter(), 0.0
    with tqdm(
        total=total,
        initial=state.step,
        desc=f"unlearn {method.name}",
        unit="step",
        disable=not progress or not accelerator.is_main_process,
    ) as bar:
        for epoch in range(state.epoch, settings.epochs):
            for micro in epoch_steps(
                forget, retain, settings, epoch, pad_id, accelerator.process_index, accelerator.num_processes
            ):
                if state.step >= total:
                    break
                entry = stepper(micro, state, epoch)
                state.history.append({"step": state.step, "epoch": epoch + 1, **entry})
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k != "grad_norm"})
            if state.step >= total and (state.step < (epoch + 1) * steps_per_epoch):
                break
            state.epoch = epoch + 1
            saving = time.perf_counter()
            _save_checkpoint(accelerator, out_dir, state)
            checkpoint_seconds += time.perf_counter() - saving
    train_seconds = time.perf_counter() - start - checkpoint_seconds
    tokens = int(accelerator.reduce(torch.tensor(state.tokens, device=accelerator.device), "sum"))

    if accelerator.is_main_process:
        _save_final(accelerator.unwrap_model(model), tokenizer, out_dir)
        atomic_write_json(out_dir / LOSSES_FILE, state.history)
        if not settings.keep_checkpoints:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        _record(
            out_dir,
            method,
            target_dir,
            corpus,
            settings,
            accelerator,
            status="complete",
            steps=state.step,
            epochs_done=state.epoch,
            tokens=tokens,
            train_seconds=round(train_seconds, 3),
            checkpoint_seconds=round(checkpoint_seconds, 3),
            saliency_seconds=round(saliency_seconds, 3),
            final=state.history[-1] if state.history else None,
        )
    accelerator.wait_for_everyone()
    return out_dir


def _save_final(model, tokenizer, out_dir: Path) -> None:
    """Write model (safetensors) and tokenizer into `out_dir` file by file via a temp folder (each file atomic)."""
    tmp = out_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for path in tmp.iterdir():
        os.replace(path, out_dir / path.name)
    tmp.rmdir()
