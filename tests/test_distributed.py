"""Data-parallel unlearning on 2 CPU processes (gloo), launched the documented way, on the `tiny` benchmark.

How runs are compared: the update Δ = weights after − target weights of a 2-process run at batch 2 per
process must equal a 1-process run at batch 2 × grad-accum 2 (same global batch, same micro-batches) up to
the float order of the gradient reduction: max |Δ₂ − Δ₁| ≤ 1e-5 · max |Δ₁| and the same sign wherever
|Δ₁| > 1e-5 · max |Δ₁|. (On this CPU the two are bit-identical: halving is exact and gloo sums two terms.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from qunlearn.fileio import read_json, read_yaml
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

BIN = Path(sys.executable).parent
ARGS = ["--max-length", "32", "--batch-size", "2", "--quiet"]
SURE = ["--method", "npo_gdr_sure", "--saliency-batches", "1", "--max-steps", "1"]


def launch(launcher: list[str], out: Path, bench, extra: list[str], **popen) -> subprocess.Popen:
    """Start `LAUNCHER -m qunlearn.cli unlearn ...` on the tiny benchmark, as the README writes it."""
    cmd = [
        *launcher,
        "-m",
        "qunlearn.cli",
        "unlearn",
        "--target",
        str(bench.target_dir),
        "--corpus",
        str(bench.corpus_dir),
        "--out",
        str(out),
        *ARGS,
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def torchrun(out: Path, bench, extra: list[str]) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m qunlearn.cli unlearn ...` (standalone: a free port of its own)."""
    proc = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], out, bench, extra)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def free_port() -> str:
    """A local TCP port free now: accelerate 1.1 passes `--main_process_port 0` to the ranks literally (they hang)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def update(out: Path, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    after = load_file(str(out / "model.safetensors"))
    return {k: after[k] - target[k] for k in target}


@pytest.fixture(scope="module")
def two_process_run(tiny_benchmark, tmp_path_factory):
    """One SURE step of npo_gdr_sure on 2 processes launched by torchrun; returns (out dir, completed process)."""
    out = tmp_path_factory.mktemp("dp") / "two"
    done = torchrun(out, tiny_benchmark, SURE)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_make_the_update_of_one_process_at_the_same_global_batch(
    tiny_benchmark, two_process_run, tmp_path
):
    two, _ = two_process_run
    settings = UnlearnSettings(max_length=32, batch_size=2, grad_accum=2, saliency_batches=1, max_steps=1)
    one = unlearn(
        tiny_benchmark.target_dir, tiny_benchmark.corpus_dir, "npo_gdr_sure", tmp_path / "one", settings, progress=False
    )
    record = read_yaml(two / "unlearn.yaml")
    assert record["world_size"] == 2 and record["global_batch"] == 4 == read_yaml(one / "unlearn.yaml")["global_batch"]
    target = load_file(str(tiny_benchmark.target_dir / "model.safetensors"))
    d1, d2 = update(one, target), update(two, target)
    scale = max(float(d.abs().max()) for d in d1.values())
    assert scale > 0
    for k in d1:
        assert float((d2[k] - d1[k]).abs().max()) <= 1e-5 * scale, k
        moved = d1[k].abs() > 1e-5 * scale
        assert torch.equal(d1[k][moved].sign(), d2[k][moved].sign()), k
    curve1, curve2 = read_json(one / "losses.json"), read_json(two / "losses.json")
    assert [{k: pytest.approx(v, rel=1e-6) for k, v in e.items()} for e in curve1] == curve2  # reported means


def test_sure_freezes_the_same_modules_on_every_rank_and_as_one_process(tiny_benchmark, two_process_run, tmp_path):
    two, _ = two_process_run
    target = load_file(str(tiny_benchmark.target_dir / "model.safetensors"))
    moved = {k for k, d in update(two, target).items() if bool(d.any())}
    saliency = read_json(two / "saliency.json")
    assert 0 < saliency["n_selected"] < saliency["n_modules"]
    # a parameter moved iff its module was selected: ranks that trained other masks would move other weights
    assert moved == {k for k in target if k.rsplit(".", 1)[0] in saliency["selected"]}


def test_only_rank_zero_writes_and_speaks(two_process_run):
    two, done = two_process_run
    assert done.stdout.count("written to") == 1
    assert not list(two.glob("*.tmp*")) and not (two / "checkpoints").exists()
    assert read_yaml(two / "unlearn.yaml")["status"] == "complete"


def test_accelerate_launch_runs_the_same_data_parallel_run(tiny_benchmark, two_process_run, tmp_path):
    two, _ = two_process_run
    port = free_port()
    proc = launch(
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", port, "-q"],
        tmp_path / "acc",
        tiny_benchmark,
        SURE,
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("written to") == 1 and read_yaml(tmp_path / "acc" / "unlearn.yaml")["world_size"] == 2
    a, b = load_file(str(two / "model.safetensors")), load_file(str(tmp_path / "acc" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_diverging_run_stops_every_rank_with_the_message(tiny_benchmark, tmp_path):
    start = time.monotonic()
    done = torchrun(
        tmp_path / "nan", tiny_benchmark, ["--method", "ga", "--lr", "1e30", "--grad-clip", "0", "--max-steps", "3"]
    )
    assert done.returncode != 0 and time.monotonic() - start < 200
    assert "qunlearn unlearn: training diverged:" in done.stderr and "at step 2 (epoch 1)" in done.stderr


@pytest.mark.slow
def test_resume_under_two_processes_is_bit_identical_to_an_uninterrupted_run(tiny_benchmark, tmp_path):
    extra = ["--method", "npo_gdr", "--epochs", "4", "--batch-size", "1"]  # 30 steps per epoch: time to interrupt
    whole = torchrun(tmp_path / "whole", tiny_benchmark, extra)
    assert whole.returncode == 0, whole.stderr[-3000:]
    split = tmp_path / "split"
    proc = launch([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"], split, tiny_benchmark, extra)
    while not (split / "checkpoints" / "epoch-1").is_dir():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    for worker in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        worker.kill()  # a crash of launcher and workers (torchrun's workers are not in its process group)
    proc.communicate()
    assert not (split / "losses.json").exists(), "the run finished before it could be interrupted"
    resumed = torchrun(split, tiny_benchmark, [*extra, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(tmp_path / "whole" / "losses.json") == read_json(split / "losses.json")
