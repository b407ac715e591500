"""The unlearning data schedule: draws are pure functions of (seed, epoch, stream); ranks split each step's
micro-batches without overlap; grad accumulation and processes see the same chunks for the same global batch."""

from __future__ import annotations

import pytest
import torch

from qunlearn.errors import UserInputError
from qunlearn.unlearn.schedule import check_world, count_steps, draw_order, epoch_steps, micro_count
from qunlearn.unlearn.settings import UnlearnSettings

PAD = 0


def chunks(n: int, offset: int = 1) -> list[list[int]]:
    """n one-token-apart chunks whose first token names them (offset + index)."""
    return [[offset + i, 999] for i in range(n)]


def settings(batch_size: int, grad_accum: int = 1, seed: int = 0) -> UnlearnSettings:
    return UnlearnSettings(batch_size=batch_size, grad_accum=grad_accum, seed=seed)


def names(batch: dict) -> list[int]:
    """The chunk ids of a collated batch (first column)."""
    return batch["input_ids"][:, 0].tolist()


def steps(forget, retain, s, epoch, rank, world) -> list[list[tuple[list[int], list[int] | None]]]:
    return [
        [(names(f), names(r) if r else None) for f, r in step]
        for step in epoch_steps(forget, retain, s, epoch, PAD, rank, world)
    ]


def test_draws_are_consecutive_permutations_fixed_by_seed_epoch_and_stream():
    order = draw_order(5, seed=3, epoch=1, stream=0, length=12)
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5)) and len(order) == 12
    assert order == draw_order(5, seed=3, epoch=1, stream=0, length=12)
    assert draw_order(5, 3, 1, 0, 7) == order[:7]  # a longer draw extends a shorter one
    assert order != draw_order(5, 3, 2, 0, 12) and order != draw_order(5, 3, 1, 1, 12)


def test_counts_round_up_so_every_rank_gets_the_same_number_of_micro_batches():
    # 10 chunks, batch 3 -> 4 micro-batches; 3 ranks -> 6 (two padded with repeated draws)
    assert micro_count(10, settings(3), world=1) == 4 and micro_count(10, settings(3), world=3) == 6
    assert count_steps(10, settings(3), world=1) == 4
    assert count_steps(10, settings(3, grad_accum=2), world=1) == 2
    assert count_steps(10, settings(3), world=3) == 2


def test_one_rank_sees_each_forget_chunk_exactly_once_per_epoch():
    seen = [c for step in steps(chunks(10), None, settings(3), 0, 0, 1) for f, _ in step for c in f]
    assert sorted(seen) == list(range(1, 11))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_step_without_overlap_and_cover_the_epoch(world):
    forget, s = chunks(12), settings(2)
    per_rank = [steps(forget, None, s, 0, rank, world) for rank in range(world)]
    assert len({len(r) for r in per_rank}) == 1  # the same number of steps on every rank
    for step in zip(*per_rank):
        micro = [f for rank_step in step for f, _ in rank_step]
        assert len(micro) == world  # one micro-batch per rank per step (grad_accum 1)
        flat = [c for f in micro for c in f]
        assert len(flat) == len(set(flat))
    seen = sorted(c for r in per_rank for step in r for f, _ in step for c in f)
    assert seen == list(range(1, 13))


def test_processes_and_grad_accum_see_the_same_chunks_for_the_same_global_batch():
    forget, retain = chunks(12), chunks(7, offset=100)
    one = steps(forget, retain, settings(2, grad_accum=2), 1, 0, 1)
    two = [steps(forget, retain, settings(2), 1, rank, 2) for rank in range(2)]
    assert len(one) == len(two[0]) == 3
    for accumulated, rank0, rank1 in zip(one, *two):
        assert accumulated == [*rank0, *rank1]  # micro-batch m goes to rank m mod world


def test_retain_batches_follow_their_own_stream_alongside_forget():
    forget, retain = chunks(6), chunks(4, offset=100)
    pairs = [p for step in steps(forget, retain, settings(2), 0, 0, 1) for p in step]
    assert all(len(f) == len(r) == 2 for f, r in pairs)
    drawn = [c for _, r in pairs for c in r]
    assert sorted(drawn[:4]) == list(range(100, 104))  # a permutation of retain before any repeat


def test_more_processes_than_forget_batches_are_refused_naming_both_numbers():
    check_world(8, settings(4), world=2)
    with pytest.raises(
        UserInputError, match=r"3 processes, but the forget set has only 2 batch\(es\) of --batch-size 4"
    ):
        check_world(8, settings(4), world=3)


def test_padding_uses_the_pad_id_and_masks_it_out_of_the_labels():
    forget = [[5, 6, 7], [8, 9]]
    (step,) = list(epoch_steps(forget, None, settings(2), 0, PAD, 0, 1))
    ((batch, _),) = step
    short = int((batch["attention_mask"].sum(dim=1) == 2).nonzero()[0])
    assert batch["input_ids"][short, 2] == PAD and batch["labels"][short, 2] == -100
    assert torch.equal(batch["labels"][1 - short], batch["input_ids"][1 - short])
