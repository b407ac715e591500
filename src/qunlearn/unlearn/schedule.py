"""The unlearning data schedule: which forget/retain chunks each optimizer step sees, per process.

Pure functions of (seed, epoch), so a resumed run replays exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from qunlearn.data.batches import collate
from qunlearn.errors import UserInputError
from qunlearn.unlearn.settings import UnlearnSettings


def draw_order(n: int, seed: int, epoch: int, stream: int, length: int) -> list[int]:
    """`length` indices drawn as consecutive permutations of range(n), a pure function of (seed, epoch, stream)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7 + stream)
    out: list[int] = []
    while len(out) < length:
        out += torch.randperm(n, generator=generator).tolist()
    return out[:length]


def micro_batches(chunks: list[list[int]], order: list[int], size: int, pad_id: int) -> list[dict]:
    """Collated batches of `size` chunks taken in `order`."""
    return [collate([chunks[i] for i in order[s : s + size]], pad_id) for s in range(0, len(order), size)]


def epoch_steps(
    forget: list[list[int]],
    retain: list[list[int]] | None,
    settings: UnlearnSettings,
    epoch: int,
    pad_id: int,
    rank: int,
    world: int,
) -> Iterator[list[tuple[dict, dict | None]]]:
    """This process's (forget, retain) micro-batches of each optimizer step of `epoch`.

    Micro-batch m of a step goes to rank m mod world, so N processes see what one process sees with
    grad_accum × N. Forget batches carry `index`, the chunks they hold.
    """
    size = settings.batch_size
    n_micro = micro_count(len(forget), settings, world)
    forget_order = draw_order(len(forget), settings.seed, epoch, 0, n_micro * size)
    forget_order = forget_order[: len(forget)] if world == 1 else forget_order
    retain_order = draw_order(len(retain), settings.seed, epoch, 1, len(forget_order)) if retain else None
    per_step = settings.grad_accum * world
    for start in range(0, n_micro, per_step):
        mine = range(start + rank, min(start + per_step, n_micro), world)
        step = []
        for m in mine:
            idx = slice(m * size, (m + 1) * size)
            forget_batch = collate([forget[i] for i in forget_order[idx]], pad_id)
            forget_batch["index"] = torch.tensor(forget_order[idx])  # which chunks: keys NPO's cached reference
            retain_batch = collate([retain[i] for i in retain_order[idx]], pad_id) if retain else None
            step.append((forget_batch, retain_batch))
        yield step


def micro_count(n_forget: int, settings: UnlearnSettings, world: int) -> int:
    """Forget micro-batches per epoch, rounded up so that every process gets the same number."""
    return math.ceil(math.ceil(n_forget / settings.batch_size) / world) * world


def count_steps(n_forget: int, settings: UnlearnSettings, world: int) -> int:
    """Optimizer steps per epoch."""
    return math.ceil(micro_count(n_forget, settings, world) / (settings.grad_accum * world))


def check_world(n_forget: int, settings: UnlearnSettings, world: int) -> None:
    """Refuse more processes than forget batches: the extra ranks would only repeat chunks to pad the step."""
    batches = math.ceil(n_forget / settings.batch_size)
    if world > batches:
        raise UserInputError(
            f"{world} processes, but the forget set has only {batches} batch(es) of --batch-size {settings.batch_size} "
            f"({n_forget} chunks); launch at most {batches} processes or lower --batch-size"
        )
