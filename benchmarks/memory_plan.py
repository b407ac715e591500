"""Memory plan for unlearning a 7B model: bytes per parameter per method family × option, derived, and checked
against the peak RSS of a real trainer step of the 7B-shaped 2-block model (667M parameters) on CPU, timed.

Derived model states per parameter, weights held in dtype of w bytes (bf16: 2, fp32: 4):
  weights w + gradients w + optimizer (AdamW: two moments in the weights' dtype, 2w; 8-bit AdamW: 2)
  + reference (NPO/KLR 'model': w; 'bf16': 2; NPO 'cached': 0, 4 bytes per forget chunk instead).
Activations come on top and scale with batch × tokens (gradient checkpointing keeps one block's input).
Each measured case runs alone in a fresh subprocess (peak RSS is per process); the baseline is the RSS of the
same process after imports and the batch, before the model exists. "Held" is the RSS right after the step
(weights + optimizer state + reference; gradients freed), "peak" includes the step's temporaries; both are read
after the first step. Step time: wall time of the trainer's step, model building excluded, for the first step
(which also allocates the optimizer state and touches fresh memory) and a second step on the same batch, with the
process's CPU time of each (user + system, all threads; less sensitive than wall time to other jobs on the CPU).
Usage: python benchmarks/memory_plan.py [--dtype bf16] [--tokens 256] [--blocks 2] [--cases ga,ga:adamw8bit,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import torch

GB = 1e9
LLAMA2_7B_PARAMS = 6_738_415_616  # meta-llama/Llama-2-7b-hf
WIDTH = {"bf16": 2, "fp32": 4}
# method family × option: (method, reference, optim, gradient checkpointing)
CASES = {
    "ga": ("ga", "model", "adamw", False),
    "ga:adamw8bit": ("ga", "model", "adamw8bit", False),
    "ga:checkpointing": ("ga", "model", "adamw", True),
    "npo": ("npo", "model", "adamw", False),
    "npo:cached": ("npo", "cached", "adamw", False),
    "npo:cached+adamw8bit": ("npo", "cached", "adamw8bit", False),
    "klr": ("ga_klr", "model", "adamw", False),
    "klr:bf16-ref": ("ga_klr", "bf16", "adamw", False),
}


def state_bytes_per_param(method: str, reference: str, optim: str, dtype: str) -> float:
    """Weights + gradients + optimizer state + reference, in bytes per parameter (all parameters trained)."""
    w = WIDTH[dtype]
    optimizer = 2 * w if optim == "adamw" else 2
    needs_reference = method.startswith("npo") or method.endswith("klr")
    ref = 0 if not needs_reference or reference == "cached" else (2 if reference == "bf16" else w)
    return w + w + optimizer + ref


def rss() -> int:
    return psutil.Process().memory_info().rss


def timed(step: Callable[[list, object, int], dict], micro: list, state: object) -> tuple[float, float]:
    """Wall and CPU seconds of one trainer step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step(micro, state, 0)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: str, dtype: str, tokens: int, blocks: int) -> dict:
    """Two optimizer steps of the trainer's own step on the 7B-shaped model: RSS after the first, both timed."""
    from accelerate import Accelerator
    from transformers import LlamaForCausalLM

    from qunlearn.data.batches import collate
    from qunlearn.models.io import parse_dtype
    from qunlearn.models.shapes import llama2_7b_config
    from qunlearn.unlearn.memory import forget_logprobs, make_optimizer
    from qunlearn.unlearn.methods import get_method
    from qunlearn.unlearn.trainer import UnlearnSettings, _OptimizerStep, _State

    torch.manual_seed(0)
    method_name, reference, optim, checkpointing = CASES[case]
    method = get_method(method_name)
    chunk = torch.randint(3, 32000, (tokens,)).tolist()
    batch = collate([chunk], pad_id=0)
    base = rss()
    config = llama2_7b_config(blocks)
    model = LlamaForCausalLM(config).to(parse_dtype(dtype))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref, ref_logprobs = None, None
    if method.needs_reference and reference != "cached":
        ref = LlamaForCausalLM(config).to(parse_dtype("bf16" if reference == "bf16" else dtype))
        ref.load_state_dict(model.state_dict())
        ref.requires_grad_(False)
    if reference == "cached":
        ref_logprobs = forget_logprobs(model, [chunk], 1, 0, torch.device("cpu"))
    settings = UnlearnSettings(reference=reference, optim=optim, gradient_checkpointing=checkpointing).resolve(method)
    accelerator = Accelerator(cpu=True)
    trainable = list(model.parameters())
    optimizer = make_optimizer(optim, trainable, 1e-5, 0.0)
    model.train()
    step = _OptimizerStep(
        accelerator,
        model,
        ref,
        ref_logprobs,
        optimizer,
        trainable,
        method.forget_term(0.1),
        method.retain_term(),
        settings,
    )
    batch["index"] = torch.tensor([0])
    micro, state = [(batch, batch if method.retain else None)], _State()
    first_step_s, first_step_cpu_s = timed(step, micro, state)
    held = rss()  # after the step: weights, optimizer state and reference (gradients are freed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    second_step_s, second_step_cpu_s = timed(step, micro, state)
    params = sum(p.numel() for p in model.parameters())
    return {
        "case": case,
        "blocks": blocks,
        "params": params,
        "measured_gb": (peak - base) / GB,
        "held_gb": (held - base) / GB,
        "derived_states_gb": state_bytes_per_param(method_name, reference, optim, dtype) * params / GB,
        "first_step_s": first_step_s,
        "second_step_s": second_step_s,
        "first_step_cpu_s": first_step_cpu_s,
        "second_step_cpu_s": second_step_cpu_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", choices=list(WIDTH))
    parser.add_argument("--tokens", type=int, default=256, help="tokens in the one training chunk")
    parser.add_argument("--blocks", type=int, default=2, help="decoder blocks of the 7B-shaped model")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases to measure ('' for none)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one case in this process, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.dtype, args.tokens, args.blocks)))
        return
    print(f"derived model states for Llama-2-7B ({LLAMA2_7B_PARAMS / 1e9:.2f}B params), {args.dtype} weights:")
    for case, (method, reference, optim, _) in CASES.items():
        per = state_bytes_per_param(method, reference, optim, args.dtype)
        print(f"  {case:22s} {per:5.1f} B/param  {per * LLAMA2_7B_PARAMS / GB:6.1f} GB + activations")
    for case in filter(None, args.cases.split(",")):
        cmd = [sys.executable, __file__, "--one", case, "--dtype", args.dtype, "--tokens", str(args.tokens)]
        cmd += ["--blocks", str(args.blocks)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  {case}: failed: {done.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"  measured {case:22s} peak {r['measured_gb']:5.2f} GB, held after the step {r['held_gb']:5.2f} GB "
            f"(above baseline); derived states {r['derived_states_gb']:5.2f} GB "
            f"({r['params'] / 1e6:.0f}M params, {r['blocks']} blocks, {args.tokens} tokens); "
            f"step wall time {r['first_step_s']:.1f} s first, {r['second_step_s']:.1f} s second "
            f"(CPU {r['first_step_cpu_s']:.1f} s, {r['second_step_cpu_s']:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
