"""Unlearning speed on the embedded target: training tokens/s per method, and SURE's saliency-pass cost.

Baseline named in every ratio: one training step of the same method (same batch size and max length).
The saliency pass is reported per forget batch (goal: <= 1.5x a training step) and for the whole forget
set (what a default SURE run pays once). Methods run round-robin in one process so that load from other
jobs on a shared machine hits them alike; the table shows the median over rounds.
Usage: python benchmarks/unlearn_speed.py [--bench DIR] [--steps 6] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from qunlearn.fileio import read_json, read_yaml
from qunlearn.prepare import PreparedBenchmark, prepare_benchmark
from qunlearn.unlearn.methods import METHODS
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn


def measure(bench: PreparedBenchmark, method: str, steps: int, out: Path) -> dict[str, float]:
    """One run of `steps` optimizer steps; tokens/s, seconds per step, and saliency seconds per forget batch."""
    run = unlearn(bench.target_dir, bench.corpus_dir, method, out, UnlearnSettings(max_steps=steps), progress=False)
    record = read_yaml(run / "unlearn.yaml")
    result = {
        "tokens_per_s": record["tokens"] / record["train_seconds"],
        "step_s": record["train_seconds"] / record["steps"],
    }
    if method.endswith("_sure"):
        batches = read_json(run / "saliency.json")["batches"]
        result |= {
            "saliency_s": record["saliency_seconds"],
            "saliency_batch_s": record["saliency_seconds"] / batches,
            "batches": batches,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", help="prepared benchmark dir (default: prepare the tiny preset in a temp dir)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bench = (
            PreparedBenchmark(Path(args.bench))
            if args.bench
            else prepare_benchmark(Path(tmp) / "bench", preset="tiny", progress=False)
        )
        info = read_yaml(bench.settings_file)
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for r in range(args.rounds):
            for method in METHODS:
                runs[method].append(measure(bench, method, args.steps, Path(tmp) / f"{method}-{r}"))
    median = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    print(
        f"embedded target: preset {info['preset']['name']}, {info['results']['target']['parameters']:,} parameters;"
        f" {args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}, median shown"
    )
    print(
        f"{'method':<14}{'tokens/s':>10}{'s/step':>9}{'saliency/batch':>16}{'÷ step':>8}{'whole pass':>12}{'÷ step':>8}"
    )
    for method, m in median.items():
        line = f"{method:<14}{m['tokens_per_s']:>10.0f}{m['step_s']:>9.3f}"
        if "saliency_s" in m:
            line += (
                f"{m['saliency_batch_s']:>15.3f}s{m['saliency_batch_s'] / m['step_s']:>7.2f}x"
                f"{m['saliency_s']:>11.3f}s{m['saliency_s'] / m['step_s']:>7.2f}x"
            )
        print(line)


if __name__ == "__main__":
    main()
