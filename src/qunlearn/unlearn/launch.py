"""How an unlearning process joins its launch: alone, or as one rank of `torchrun` / `accelerate launch`.

Without CUDA, accelerate only forms a process group when told to use the CPU; a rank started by `torchrun`
or `accelerate launch --multi_gpu` on a CPU machine would otherwise train alone on the whole forget set.
`make_accelerator` asks for the CPU (gloo) in that case and checks that every launched process joined.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, broadcast_object_list

from qunlearn.errors import UserInputError

T = TypeVar("T")

CPU_LAUNCH = (
    "on CPU run `torchrun --nproc_per_node N -m qunlearn.cli unlearn ...` "
    "or `accelerate launch --multi_gpu --num_processes N -m qunlearn.cli unlearn ...` (gloo, no GPU needed)"
)


def launched_world_size(env: Mapping[str, str]) -> int:
    """How many processes the launcher started (1 when run directly)."""
    return int(env.get("WORLD_SIZE", "1"))


def check_launch(env: Mapping[str, str]) -> None:
    """Refuse `accelerate launch --cpu --num_processes N>1`: accelerate starts one process there (N need mpirun).

    That launcher sets MASTER_ADDR only when N > 1 and, unlike torchrun or mpirun, no WORLD_SIZE.
    """
    mpi = any(key in env for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if cpu and "MASTER_ADDR" in env and "WORLD_SIZE" not in env and not mpi:
        raise UserInputError(
            "accelerate launch --cpu --num_processes N starts a single process without mpirun; " + CPU_LAUNCH
        )


def make_accelerator() -> Accelerator:
    """The Accelerator of this process; data-parallel over gloo on a machine without CUDA."""
    check_launch(os.environ)
    world = launched_world_size(os.environ)
    accelerator = Accelerator(cpu=world > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise UserInputError(
            f"the launcher started {world} processes but accelerate joined {accelerator.num_processes}; " + CPU_LAUNCH
        )
    return accelerator


def is_main_process() -> bool:
    """Whether this process writes outputs and messages (rank 0, or the only process)."""
    return PartialState().is_main_process


def from_main(make: Callable[[], T]) -> T:
    """`make()` run on rank 0 only, its result (or its error) handed to every rank."""
    result: list = [None]
    if PartialState().is_main_process:
        try:
            result[0] = (make(), None)
        except Exception as err:  # noqa: BLE001 -- re-raised on every rank below, so no rank waits forever
            result[0] = (None, err)
    value, error = broadcast_object_list(result)[0]
    if error is not None:
        raise error
    return value


def check_engine(accelerator: Accelerator, grad_accum: int) -> None:
    """Refuse --grad-accum > 1 under DeepSpeed: its engine steps inside every backward, not after N micro-batches."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and grad_accum != 1:
        raise UserInputError(
            f"--grad-accum {grad_accum} with a DeepSpeed accelerate config: DeepSpeed steps the optimizer in every "
            "backward; use --grad-accum 1 (raise --batch-size or processes) or an FSDP / DDP launch"
        )
