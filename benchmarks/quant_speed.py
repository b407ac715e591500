"""Quantizer speed: RTN against a plain copy of the same weights, and GPTQ/AWQ/bnb wall time on the embedded target.

Everything is measured side by side in one run (interleaved repeats, median), and reported as ratios.
Usage: python benchmarks/quant_speed.py [--bench DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from qunlearn.models.io import load_model
from qunlearn.prepare import prepare_benchmark
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_quantize

SHAPES = [(1024, 1024)] * 4 + [(2816, 1024), (2816, 1024), (1024, 2816)]  # one small Llama block


def seconds(fn) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rtn_vs_copy(repeats: int) -> None:
    """RTN-4 of a block's weights against `clone()` of the same weights (goal: at most 3×)."""
    weights = [torch.randn(shape) for shape in SHAPES]
    copies, rtns = [], []
    for _ in range(repeats):
        copies.append(seconds(lambda: [w.clone() for w in weights]))
        rtns.append(seconds(lambda: [rtn_quantize(w, 4) for w in weights]))
    copy_s, rtn_s = statistics.median(copies), statistics.median(rtns)
    print(
        f"RTN-4 vs plain copy, {sum(a * b for a, b in SHAPES) / 1e6:.1f}M fp32 weights: "
        f"copy {copy_s * 1e3:.1f} ms, RTN {rtn_s * 1e3:.1f} ms → {rtn_s / copy_s:.2f}× (goal ≤ 3×)"
    )


def on_target(bench_dir: str | None, n_samples: int) -> None:
    """Wall time of each scheme on the embedded tiny target, as a ratio to RTN-4 on the same model."""
    bench = prepare_benchmark(bench_dir or tempfile.mkdtemp(), preset="tiny", seed=0, progress=False)
    model, tokenizer = load_model(bench.target_dir)
    texts = calibration_texts(corpus_dir=bench.corpus_dir)
    times = {}
    for scheme in ("rtn4", "gptq4", "awq4", "bnb-nf4", "bnb-int8"):
        options = {"n_samples": n_samples, "seq_len": 128} if get_quantizer(scheme).needs_calibration else {}
        quantizer = get_quantizer(scheme, **options)
        times[scheme] = seconds(lambda q=quantizer: q.quantize(copy.deepcopy(model), tokenizer, texts))
    times["deepcopy only"] = seconds(lambda: copy.deepcopy(model))
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny target ({params / 1e3:.0f}k params), {n_samples} calibration sequences of ≤128 tokens:")
    for scheme, value in times.items():
        print(f"  {scheme:14s} {value:7.2f} s   {value / times['rtn4']:8.1f}× RTN-4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench", help="prepared tiny benchmark directory (default: prepare one in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-samples", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rtn_vs_copy(args.repeats)
    on_target(args.bench, args.n_samples)


if __name__ == "__main__":
    main()
