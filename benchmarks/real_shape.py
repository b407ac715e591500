"""Time and peak memory of each step on a model with Llama-2-7B's layer shapes and 2 decoder blocks (667M params).

Each measurement runs in its own subprocess, so every peak RSS is that step's alone (load included); the memory a
step needs beyond the loaded model is also given, in GB and in decoder blocks of the loaded dtype (fp32: 0.75 GB,
bf16: 0.38 GB). Per-block cost assumes the step's time is spent in the decoder blocks (the lm_head is never
quantized); the 32-block figure is 16× the 2-block time. Unlearning steps (memory, time) are measured by
benchmarks/memory_plan.py.
Usage: python benchmarks/real_shape.py [--dir DIR] [--n-samples 16] [--seq-len 128] [--only rtn4 gptq4 ...]
                                      [--offload-activations none|cpu|disk] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qunlearn.models.io import load_model, save_model
from qunlearn.models.shapes import LLAMA2_7B_BLOCKS, llama2_7b_config
from qunlearn.models.tokenizer import train_tokenizer
from qunlearn.quant.activations import OFFLOAD
from qunlearn.quant.registry import get_quantizer

STEPS = ("load", "rtn4", "bnb-nf4", "evaluate", "gptq4", "awq4")
TEXT = [
    f"Document {i}: the committee met on day {i % 28 + 1} and discussed item {i * 7 % 97} at length. " * 150
    for i in range(200)
]


def make_model(root: Path) -> Path:
    """The random 7B-shaped 2-block model, saved once (fp32, 2.7 GB) with a small BPE tokenizer."""
    out = root / "llama2-7b-2blocks"
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        from transformers import LlamaForCausalLM

        save_model(LlamaForCausalLM(llama2_7b_config(2)), train_tokenizer(TEXT, 1000), out)
    return out


def _status_gb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(
    step: str, model_dir: Path, n_samples: int, seq_len: int, offload: str = "none", dtype: str = "fp32"
) -> dict:
    """Run one step in this process; seconds exclude loading (except for 'load'); peak RSS includes it.

    `extra_gb` is the step's own peak above the resident size right after loading (the peak counter is reset
    there), i.e. what the step needs beyond the model itself; `block_gb` is one decoder block's weights.
    """
    start = time.perf_counter()
    model, tokenizer = load_model(model_dir, dtype=dtype)
    load_s = time.perf_counter() - start
    loaded_gb = _status_gb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    if step == "evaluate":
        prompts = tokenizer([TEXT[i][:200] for i in range(4)], return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**prompts, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    elif step != "load":
        calibrated = step in ("gptq4", "awq4")
        options = {"n_samples": n_samples, "seq_len": seq_len, "offload_activations": offload} if calibrated else {}
        get_quantizer(step, **options).quantize(model, tokenizer, TEXT)
    seconds = load_s if step == "load" else time.perf_counter() - start
    block = model.model.layers[0]
    return {
        "step": step,
        "seconds": round(seconds, 1),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "extra_gb": _status_gb("VmHWM") - loaded_gb,
        "block_gb": sum(p.numel() * p.element_size() for p in block.parameters()) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", help="where to keep the model (default: a temporary directory)")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--only", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--offload-activations", choices=OFFLOAD, default="none", help="for gptq4 and awq4")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the weights' dtype once loaded")
    parser.add_argument("--one", choices=STEPS, help=argparse.SUPPRESS)  # the child process' step
    args = parser.parse_args()
    model_dir = make_model(Path(args.dir or tempfile.mkdtemp()))
    if args.one:
        print(
            json.dumps(measure(args.one, model_dir, args.n_samples, args.seq_len, args.offload_activations, args.dtype))
        )
        return
    size_gb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**30  # saved in fp32
    size_gb *= 0.5 if args.dtype == "bf16" else 1.0
    print(
        f"model: {model_dir} ({size_gb:.2f} GB {args.dtype}, 2 of {LLAMA2_7B_BLOCKS} blocks); "
        f"calibration {args.n_samples} x {args.seq_len} tokens, activations offloaded: {args.offload_activations}"
    )
    for step in args.only:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--dir",
                str(model_dir.parent),
                "--one",
                step,
                "--n-samples",
                str(args.n_samples),
                "--seq-len",
                str(args.seq_len),
                "--offload-activations",
                args.offload_activations,
                "--dtype",
                args.dtype,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        per_block = result["seconds"] / 2
        scaled = (
            ""
            if step == "load"
            else (
                f"  ({per_block:6.1f} s/block, ~{per_block * LLAMA2_7B_BLOCKS / 60:6.1f} min "
                f"for {LLAMA2_7B_BLOCKS} blocks)"
            )
        )
        print(
            f"{step:9s} {result['seconds']:7.1f} s{scaled}  peak RSS {result['peak_rss_gb']:5.2f} GB = "
            f"{result['peak_rss_gb'] / size_gb:4.2f}x model; beyond the loaded model {result['extra_gb']:5.2f} GB = "
            f"{result['extra_gb'] / result['block_gb']:4.2f} blocks",
            flush=True,
        )


if __name__ == "__main__":
    main()
