"""How a process joins its launch: the launcher's environment decides, and a launch that would train
alone on every process is refused with the commands that work."""

from __future__ import annotations

import pytest

from qunlearn.errors import UserInputError
from qunlearn.unlearn.launch import check_launch, launched_world_size

# what `accelerate launch --cpu --num_processes 2` gives its single child (accelerate 1.15)
ACCELERATE_CPU = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_accelerate_launch_cpu_with_several_processes_is_refused_naming_what_works():
    with pytest.raises(UserInputError, match="starts a single process without mpirun.*torchrun --nproc_per_node N"):
        check_launch(ACCELERATE_CPU)


@pytest.mark.parametrize(
    "env",
    [
        {},  # plain `qunlearn unlearn`
        {"ACCELERATE_USE_CPU": "True"},  # accelerate launch --cpu, one process
        ACCELERATE_CPU | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},  # torchrun / --multi_gpu
        ACCELERATE_CPU | {"PMI_SIZE": "2"},  # accelerate's multi-CPU launch through mpirun
    ],
)
def test_launches_that_form_a_process_group_or_run_alone_pass(env):
    check_launch(env)


def test_world_size_comes_from_the_launcher():
    assert launched_world_size({}) == 1 and launched_world_size({"WORLD_SIZE": "4"}) == 4
