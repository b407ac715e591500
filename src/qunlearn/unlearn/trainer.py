"""One training loop for every unlearning method, on HF accelerate: one process (CPU or GPU), or N data-parallel
ranks under `torchrun` / `accelerate launch` (gloo on CPU, nccl on GPU; see launch.py).

Weights are held in the chosen dtype (not autocast): bf16 storage decides which small updates survive,
which is part of what the project studies. Data order is a pure function of (seed, epoch), and each epoch
ends with an accelerate checkpoint (model, optimizer, RNG), so `resume` replays exactly what an
uninterrupted run would have done, also under N processes. LR is constant (MUSE), AdamW with HF Trainer's
defaults (or 8-bit AdamW); memory options are in memory.py.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from qunlearn.data.batches import tokenize_documents
from qunlearn.data.muse import Corpus, load_corpus
from qunlearn.errors import TrainingDivergedError
from qunlearn.fileio import atomic_write_json, read_json
from qunlearn.models.io import check_tokenizer, load_model, save_model
from qunlearn.models.utils import round_to_storage
from qunlearn.outputs import output_lock, swap_in
from qunlearn.unlearn.launch import check_engine, from_main, make_accelerator
from qunlearn.unlearn.losses import LossTerm
from qunlearn.unlearn.memory import forget_logprobs, make_optimizer
from qunlearn.unlearn.methods import Method, get_method
from qunlearn.unlearn.rundir import (
    CHECKPOINTS,
    LOSSES_FILE,
    REFERENCE_FILE,
    SALIENCY_FILE,
    latest_checkpoint,
    prepare_out_dir,
    previous_run,
    record_failure,
    save_checkpoint,
    write_record,
)
from qunlearn.unlearn.saliency import Saliency, apply_mask, compute_saliency
from qunlearn.unlearn.schedule import check_world, count_steps, epoch_steps, micro_batches
from qunlearn.unlearn.settings import UnlearnSettings, check_context


@dataclass
class _State:
    """What an epoch checkpoint records besides model, optimizer and RNG."""

    epoch: int = 0
    step: int = 0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)


def _forward(model: torch.nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """Logits of `model` on a collated batch."""
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


def _check_finite(values: torch.Tensor, names: list[str], step: int, epoch: int) -> None:
    """Stop every rank with one message when a loss or gradient norm is NaN/inf on any rank (GA can diverge).

    `values` is [ranks, len(names)], gathered from all processes, so every rank raises the same error.
    """
    for rank, row in enumerate(values.tolist()):
        if all(math.isfinite(v) for v in row):
            continue
        where = f" on rank {rank}" if len(values) > 1 else ""
        what = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, row))
        raise TrainingDivergedError(
            f"{what} at step {step} (epoch {epoch + 1}){where}; lower --lr, raise --retain-weight, or use fewer epochs"
        )


@dataclass
class _OptimizerStep:
    """One optimizer step over this rank's micro-batches: models, optimizer, trainable parameters, loss terms."""

    accelerator: Accelerator
    model: torch.nn.Module
    ref: torch.nn.Module | None
    ref_logprobs: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]
    forget_term: LossTerm
    retain_term: LossTerm | None
    settings: UnlearnSettings

    def _term(self, fn: LossTerm, batch: dict) -> torch.Tensor:
        """One loss term on one batch, with the reference's logits or cached log-likelihoods if it needs them."""
        device = self.accelerator.device
        logits = _forward(self.model, batch, device)
        ref = None
        if fn.needs_reference and self.ref_logprobs is not None:
            ref = self.ref_logprobs[batch["index"]].to(device)
        elif fn.needs_reference:
            with torch.no_grad():
                ref = _forward(self.ref, batch, device)
        return fn(logits, batch["labels"].to(device), ref)

    def _objective(self, forget_batch: dict, retain_batch: dict | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L = L_forget + λ·L_retain on one micro-batch pair; returns the total and its parts (detached)."""
        forget = self._term(self.forget_term, forget_batch)
        parts = {"forget": forget.detach()}
        total = forget
        if self.retain_term is not None:
            retain = self._term(self.retain_term, retain_batch)
            parts["retain"] = retain.detach()
            total = forget + self.settings.retain_weight * retain
        return total, parts

    def __call__(self, micro: list[tuple[dict, dict | None]], state: _State, epoch: int) -> dict[str, float]:
        """Accumulate gradients over the micro-batches, clip, step; returns the step's loss terms (mean of ranks)."""
        acc, n = self.accelerator, len(micro)
        sums: dict[str, float] = {}
        for i, (forget_batch, retain_batch) in enumerate(micro):
            with acc.no_sync(self.model) if i < n - 1 else nullcontext():
                loss, parts = self._objective(forget_batch, retain_batch)
                names = ["loss", *parts]
                everyone = acc.gather(torch.stack([loss.detach(), *parts.values()]).reshape(1, -1)).cpu()
                _check_finite(everyone, names, state.step + 1, epoch)
                acc.backward(loss / n)
            for key, value in zip(names, everyone.mean(dim=0).tolist()):
                sums[key] = sums.get(key, 0.0) + value / n
            state.tokens += int(forget_batch["attention_mask"].sum())
            state.tokens += int(retain_batch["attention_mask"].sum()) if retain_batch else 0
        clip = self.settings.grad_clip if self.settings.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(self.trainable, clip))
        _check_finite(torch.tensor([[grad_norm]]), ["gradient norm"], state.step + 1, epoch)
        self.optimizer.step()
        if self.settings.storage:
            round_to_storage(self.trainable, self.settings.storage)
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return {k: round(v, 6) for k, v in sums.items()} | {"grad_norm": round(grad_norm, 6)}


def _forget_saliency(
    model, forget: list[list[int]], method: Method, settings: UnlearnSettings, pad_id: int
) -> Saliency:
    """SURE's saliency pass at the target weights over the forget set (or its first `saliency_batches` batches)."""
    batches = micro_batches(forget, list(range(len(forget))), settings.batch_size, pad_id)
    batches = batches[: settings.saliency_batches] if settings.saliency_batches else batches
    return compute_saliency(
        model, batches, method.forget_term(settings.beta), settings.saliency_gamma, settings.saliency_percentile
    )


@dataclass
class _Setup:
    """What training starts from: the model to train, the frozen reference (or None), tokenizer and data."""

    model: torch.nn.Module
    ref: torch.nn.Module | None
    tokenizer: object
    forget: list[list[int]]
    retain: list[list[int]] | None
    ref_logprobs: torch.Tensor | None = None


def _set_up(
    target_dir: Path,
    corpus: Corpus,
    method: Method,
    settings: UnlearnSettings,
    accelerator: Accelerator,
    loading: dict,
) -> _Setup:
    """Load model (and reference) onto this process's device and tokenize the forget/retain documents.

    `loading`: load_model's tokenizer / trust_remote_code options."""
    model, tokenizer = load_model(target_dir, dtype=settings.dtype, device="cpu", **loading)
    check_context(settings.max_length, model)
    forget = tokenize_documents(tokenizer, corpus.forget, settings.max_length)
    retain = tokenize_documents(tokenizer, corpus.retain, settings.max_length) if method.retain else None
    if method.retain and not retain:
        raise ValueError(f"{corpus.root}: method '{method.name}' needs retain documents and the corpus has none")
    check_world(len(forget), settings, accelerator.num_processes)
    model.to(accelerator.device)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if method.needs_reference and settings.reference != "cached":
        ref_dtype = "bf16" if settings.reference == "bf16" else settings.dtype
        ref, _ = load_model(target_dir, dtype=ref_dtype, device=str(accelerator.device), **loading)
        ref.requires_grad_(False)
    if settings.storage:
        for net in (model, ref) if ref is not None else (model,):
            round_to_storage(net.parameters(), settings.storage)
    return _Setup(model, ref, tokenizer, forget, retain)


def _cached_reference(
    setup: _Setup, settings: UnlearnSettings, out_dir: Path, reuse: bool, device: torch.device
) -> torch.Tensor:
    """NPO's reference log-likelihoods of the forget chunks: computed on rank 0 at the target weights (or read
    back when resuming), saved with the run, handed to every rank."""
    cache = out_dir / REFERENCE_FILE

    def compute() -> torch.Tensor:
        if reuse and cache.is_file():
            return torch.tensor(read_json(cache), dtype=torch.float32)
        found = forget_logprobs(setup.model, setup.forget, settings.batch_size, setup.tokenizer.pad_token_id, device)
        atomic_write_json(cache, found.tolist())
        return found

    return from_main(compute)


def _sure_mask(
    setup: _Setup, method: Method, settings: UnlearnSettings, out_dir: Path, reuse: bool
) -> list[torch.nn.Parameter]:
    """Select SURE's salient modules on rank 0 (or reuse saliency.json when resuming), freeze the rest everywhere.

    Every rank trains with rank 0's selection, so the masks are identical by construction.
    """
    saliency_file = out_dir / SALIENCY_FILE

    def select() -> list[str]:
        if reuse and saliency_file.is_file():
            return read_json(saliency_file)["selected"]
        found = _forget_saliency(setup.model, setup.forget, method, settings, setup.tokenizer.pad_token_id)
        atomic_write_json(saliency_file, found.to_json())
        return found.selected

    return apply_mask(setup.model, from_main(select))


def _train(
    step: _OptimizerStep,
    setup: _Setup,
    settings: UnlearnSettings,
    out_dir: Path,
    state: _State,
    desc: str,
    progress: bool,
) -> float:
    """Run the epochs from `state` on, checkpointing after each; returns the seconds spent checkpointing."""
    accelerator = step.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    steps_per_epoch = count_steps(len(setup.forget), settings, world)
    total = steps_per_epoch * settings.epochs
    total = min(total, settings.max_steps) if settings.max_steps else total
    pad_id = setup.tokenizer.pad_token_id
    checkpoint_seconds = 0.0
    step.model.train()
    show = progress and accelerator.is_main_process
    with tqdm(total=total, initial=state.step, desc=desc, unit="step", disable=not show) as bar:
        for epoch in range(state.epoch, settings.epochs):
            for micro in epoch_steps(setup.forget, setup.retain, settings, epoch, pad_id, rank, world):
                if state.step >= total:
                    break
                entry = step(micro, state, epoch)
                state.history.append({"step": state.step, "epoch": epoch + 1, **entry})
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k != "grad_norm"})
            if state.step >= total and (state.step < (epoch + 1) * steps_per_epoch):
                break
            state.epoch = epoch + 1
            saving = time.perf_counter()
            save_checkpoint(accelerator, out_dir, state)
            checkpoint_seconds += time.perf_counter() - saving
    return checkpoint_seconds


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
    checkpoint (same result as an uninterrupted run); a finished run is returned as is. Under `torchrun` or
    `accelerate launch` every rank calls this; rank 0 writes, the others wait at barriers. The inputs are
    never written; an earlier run in `out_dir` is replaced only by a complete one; a failed run records
    `status: failed` and its reason; a second process on the same `out_dir` is refused (lock). `tokenizer`: a
    tokenizer directory for targets saved without one.
    """
    out_dir = Path(out_dir)
    root = corpus.root if isinstance(corpus, Corpus) else Path(corpus)
    check_tokenizer(tokenizer or target_dir)  # before anything is written
    loading = {"tokenizer": tokenizer, "trust_remote_code": trust_remote_code}
    accelerator = make_accelerator()
    main = accelerator.is_main_process
    with output_lock(out_dir) if main else nullcontext():
        work_dir = from_main(
            lambda: prepare_out_dir(out_dir, resume, {"--target": Path(target_dir), "--corpus": root}, main)
        )
        try:
            _unlearn(accelerator, target_dir, corpus, method, work_dir, settings, progress, resume, loading)
        except BaseException as err:
            if main:
                record_failure(work_dir, out_dir, err)
            raise
        if main and work_dir != out_dir:
            swap_in(work_dir, out_dir)
        accelerator.wait_for_everyone()
    return out_dir


def _unlearn(
    accelerator: Accelerator,
    target_dir: str | Path,
    corpus: Corpus | str | Path,
    method: str | Method,
    out_dir: Path,
    settings: UnlearnSettings | None,
    progress: bool,
    resume: bool,
    loading: dict,
) -> None:
    """The training run of `unlearn`, writing into `out_dir` (the run directory or its staging dir)."""
    method = get_method(method) if isinstance(method, str) else method
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    target_dir, out_dir = Path(target_dir), Path(out_dir)
    settings = (settings or UnlearnSettings()).resolve(method, accelerator.num_processes)
    settings.validate(method)
    check_engine(accelerator, settings.grad_accum)
    previous = previous_run(out_dir, method, settings) if resume else None
    if previous is not None and previous.get("status") == "complete":
        return
    set_seed(settings.seed)

    setup = _set_up(target_dir, corpus, method, settings, accelerator, loading)
    if accelerator.is_main_process:
        write_record(out_dir, method, target_dir, corpus, settings, accelerator, status="running")
    if settings.reference == "cached":
        setup.ref_logprobs = _cached_reference(setup, settings, out_dir, previous is not None, accelerator.device)
    start = time.perf_counter()
    trainable = _sure_mask(setup, method, settings, out_dir, previous is not None) if method.sure else None
    saliency_seconds = time.perf_counter() - start
    trainable = trainable if trainable is not None else list(setup.model.parameters())

    optimizer = make_optimizer(settings.optim, trainable, settings.lr, settings.weight_decay)
    model, optimizer = accelerator.prepare(setup.model, optimizer)
    state = _State()
    checkpoint = latest_checkpoint(out_dir) if previous is not None else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = _State(**read_json(checkpoint / "loop_state.json"))
    step = _OptimizerStep(
        accelerator,
        model,
        setup.ref,
        setup.ref_logprobs,
        optimizer,
        trainable,
        method.forget_term(settings.beta),
        method.retain_term(),
        settings,
    )
    start = time.perf_counter()
    checkpoint_seconds = _train(step, setup, settings, out_dir, state, f"unlearn {method.name}", progress)
    train_seconds = time.perf_counter() - start - checkpoint_seconds
    tokens = int(accelerator.reduce(torch.tensor(state.tokens, device=accelerator.device), "sum"))

    weights = accelerator.get_state_dict(model)  # every rank takes part: it gathers a sharded (FSDP, ZeRO-3) model
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), setup.tokenizer, out_dir, keep_other_files=True, state_dict=weights)
        atomic_write_json(out_dir / LOSSES_FILE, state.history)
        if not settings.keep_checkpoints:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        write_record(
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
