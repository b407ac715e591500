"""Fidelity study: which settings make a small model's unlearning behave like a 7B model's under quantization.

Sweeps width × weight storage (fp32 / bf16) × learning rate (as a multiple of the "matching" LR, at which an
Adam step of size lr is half a bf16 ULP for a weight at half the median 4-bit step: lr·2^9 = median Δ₄/2) ×
RTN group size × method, on the embedded corpus. Per cell it unlearns the target, evaluates KnowMem/VerbMem on
the forget set and KnowMem on the retain set at fp, rtn8 and rtn4, and records how the weights moved relative
to the 4-bit and 8-bit grids (quant.diagnostics.weight_movement). Cells append to `<out>/cells.jsonl` (a rerun
skips finished cells); `--summarise` writes `<out>/fidelity.json` and `<out>/fidelity.png`.

Usage: python benchmarks/fidelity.py --bench DIR --out DIR [--widths 128,256] [--dtypes fp32,bf16]
       [--lr-ratios 1,4,16] [--methods ga,npo] [--group-sizes 128] [--epochs 10] [--summarise]
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import math
import shutil
import time
from pathlib import Path

import torch

from qunlearn.config import ModelShape, TrainSettings, get_preset
from qunlearn.data.muse import load_corpus
from qunlearn.evaluate import evaluate_model
from qunlearn.evaluate.memorisation import greedy_memorisation
from qunlearn.fileio import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, read_text
from qunlearn.models.io import load_model, load_tokenizer, save_model
from qunlearn.models.tiny import build_model, train_from_scratch
from qunlearn.prepare import PreparedBenchmark
from qunlearn.quant.diagnostics import combine_movements, weight_movement
from qunlearn.quant.layers import target_linears, weight_matrix
from qunlearn.quant.registry import get_quantizer
from qunlearn.quant.rtn import rtn_codes
from qunlearn.unlearn.settings import UnlearnSettings
from qunlearn.unlearn.trainer import unlearn

METRICS = ["knowmem_f", "verbmem_f", "knowmem_r"]
QUANTIZERS = ["fp", "rtn8", "rtn4"]  # the default; --quantizers adds e.g. rtn3, rtn2 for a recovery-vs-bits curve


# An Adam step of about lr is lost in bf16 storage (8-bit significand) once |w| exceeds lr·2^8 to lr·2^9.
BF16_HALF_ULP_EXPONENT = 9


def bf16_matching_lr(model: torch.nn.Module, group_size: int = 128) -> float:
    """The LR at which lr·2^9 is half the median 4-bit RTN step of the model's quantized linears: with bf16
    weights, only weights inside the 4-bit zero bin can then move (the regime of MUSE's 7B runs at lr 1e-5)."""
    steps = torch.cat(
        [rtn_codes(weight_matrix(lin).detach(), 4, group_size)[1].flatten() for lin in target_linears(model).values()]
    )
    return float(steps.median()) / 2 / 2**BF16_HALF_ULP_EXPONENT


def width_shape(width: int, base: ModelShape) -> ModelShape:
    """The `small` preset's Llama at another width: 32-wide heads, MLP 3× wide, same depth and vocabulary."""
    return ModelShape(
        hidden_size=width,
        num_layers=base.num_layers,
        num_heads=width // 32,
        intermediate_size=3 * width,
        vocab_size=base.vocab_size,
        max_position_embeddings=base.max_position_embeddings,
    )


def width_train(width: int, base: TrainSettings) -> TrainSettings:
    """The `small` preset's training with the peak LR scaled by sqrt(128/width) (wider models diverge at 3e-3)."""
    return TrainSettings(
        epochs=base.epochs, batch_size=base.batch_size, lr=base.lr * math.sqrt(128 / width), max_length=base.max_length
    )


def target_for_width(bench: PreparedBenchmark, width: int, root: Path, seed: int) -> Path:
    """The benchmark's own target at its width; other widths are trained once on the same corpus and tokenizer."""
    preset = get_preset("small")
    if width == preset.model.hidden_size:
        return bench.target_dir
    out = root / "targets" / f"h{width}"
    if (out / "config.json").is_file():
        return out
    corpus = load_corpus(bench.corpus_dir)
    tokenizer = load_tokenizer(bench.tokenizer_dir)
    model = build_model(width_shape(width, preset.model), tokenizer, seed)
    start = time.perf_counter()
    losses = train_from_scratch(
        model, tokenizer, corpus.forget + corpus.retain, width_train(width, preset.train), seed, desc=f"train h{width}"
    )
    record = {
        "width": width,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_train_loss": round(losses[-1], 4),
        "greedy_forget_token_match": round(greedy_memorisation(model, tokenizer, corpus), 4),
        "threads": torch.get_num_threads(),
    }
    save_model(model, tokenizer, out)
    atomic_write_json(out / "training.json", record)
    return out


def scores(model, tokenizer, corpus, group_size: int, quantizers: list[str]) -> dict[str, dict[str, float]]:
    """{quantizer: {metric: value}} for each quantizer (fake-quantized copies, fp32 compute)."""
    out = {}
    for name in quantizers:
        quantized = get_quantizer(name, **({} if name == "fp" else {"group_size": group_size}))
        copy_ = quantized.quantize(copy.deepcopy(model))
        results = evaluate_model(copy_, tokenizer, corpus, METRICS, batch_size=32, progress=False)
        out[name] = {metric: round(results[metric]["value"], 3) for metric in METRICS}
    return out


def movement(target, unlearned, group_size: int) -> dict[str, dict]:
    """weight_movement summed over every quantized linear, at 4 and 8 bits."""
    lin_t, lin_u = target_linears(target), target_linears(unlearned)
    return {
        f"rtn{bits}": combine_movements(
            weight_movement(lin.weight.detach(), lin_u[name].weight.detach(), bits, group_size)
            for name, lin in lin_t.items()
        )
        for bits in (4, 8)
    }


# The study's weight regimes: (compute dtype, storage dtype) of the unlearning run. "bf16s" emulates bf16 weight
# storage in fp32 compute (5-9x faster than bf16 matmuls on a CPU without native bf16; Adam states stay fp32).
REGIMES = {"fp32": ("fp32", None), "bf16": ("bf16", None), "bf16s": ("fp32", "bf16")}


def load_as(path: Path, regime: str):
    """A checkpoint with weights rounded to the regime's storage dtype, computed in fp32 (CPU bf16 is slow)."""
    compute, storage = REGIMES[regime]
    model, tokenizer = load_model(path, dtype=storage or compute)
    return model.float(), tokenizer


def run_cell(cell: dict, target_dir: Path, corpus, work: Path, references: dict, quantizers: list[str]) -> dict:
    """Unlearn, score under each quantizer and measure weight movement for one cell of the sweep.

    `references` keeps, per (width, regime, group size), the target as the regime stores it, its scores and its
    matching LR, so cells sharing them load and evaluate the target once."""
    key = (cell["width"], cell["dtype"], cell["group_size"])
    if key not in references:
        target, tokenizer = load_as(target_dir, cell["dtype"])
        references[key] = (
            target,
            tokenizer,
            scores(target, tokenizer, corpus, cell["group_size"], quantizers),
            bf16_matching_lr(target, cell["group_size"]),
        )
    target, tokenizer, target_scores, matching_lr = references[key]
    lr = cell["lr_ratio"] * matching_lr
    out_dir = work / "unlearned"
    shutil.rmtree(out_dir, ignore_errors=True)
    start = time.perf_counter()
    unlearn(
        target_dir,
        corpus,
        cell["method"],
        out_dir,
        UnlearnSettings(
            lr=lr,
            epochs=cell["epochs"],
            dtype=REGIMES[cell["dtype"]][0],
            storage=REGIMES[cell["dtype"]][1],
            seed=cell["seed"],
        ),
        progress=False,
    )
    seconds = time.perf_counter() - start
    model, _ = load_as(out_dir, cell["dtype"])
    return cell | {
        "lr": lr,
        "unlearn_seconds": round(seconds, 1),
        "target": target_scores,
        "unlearned": scores(model, tokenizer, corpus, cell["group_size"], quantizers),
        "movement": movement(target, model, cell["group_size"]),
    }


def cells_done(path: Path) -> list[dict]:
    """Finished cells of an earlier run (cut lines from a crash are skipped)."""
    if not path.is_file():
        return []
    done = []
    for line in read_text(path).splitlines():
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return done


CELL_KEYS = ("width", "dtype", "lr_ratio", "group_size", "method", "epochs", "seed")


def sweep(args: argparse.Namespace) -> None:
    bench = PreparedBenchmark(Path(args.bench))
    corpus = load_corpus(bench.corpus_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "cells.jsonl"
    done = {tuple(c[k] for k in CELL_KEYS) for c in cells_done(results)}
    grid = itertools.product(args.widths, args.dtypes, args.lr_ratios, args.group_sizes, args.methods)
    references: dict = {}
    for width, dtype, ratio, group, method in grid:
        cell = {
            "width": width,
            "dtype": dtype,
            "lr_ratio": ratio,
            "group_size": group,
            "method": method,
            "epochs": args.epochs,
            "seed": args.seed,
        }
        if tuple(cell[k] for k in CELL_KEYS) in done:
            continue
        target_dir = target_for_width(bench, width, out, args.seed)
        record = run_cell(cell, target_dir, corpus, out / "work", references, args.quantizers)
        append_jsonl(results, record)
        t, u = record["target"], record["unlearned"]
        print(
            f"h{width} {dtype} lr×{ratio} ({record['lr']:.2e}) g{group} {method}: KnowMem_f "
            + " ".join(f"{q} {u[q]['knowmem_f']:.1f}/{t[q]['knowmem_f']:.1f}" for q in args.quantizers)
            + f" | KnowMem_r fp {u['fp']['knowmem_r']:.1f} | moved "
            f"{record['movement']['rtn4']['moved'] / record['movement']['rtn4']['weights']:.3f}, rtn4 flips "
            f"{record['movement']['rtn4']['flips'] / record['movement']['rtn4']['weights']:.4f} "
            f"[{record['unlearn_seconds']} s]",
            flush=True,
        )


def retained(record: dict, quantizer: str, metric: str = "knowmem_f") -> float | None:
    """The unlearned model's score as a % of the target's under the same quantizer (the report's headline)."""
    if quantizer not in record["target"]:
        return None
    target = record["target"][quantizer][metric]
    return None if target == 0 else round(100 * record["unlearned"][quantizer][metric] / target, 2)


def derived(record: dict) -> dict:
    """The numbers the write-up compares, per cell: knowledge retained per quantizer, utility, how weights moved."""
    move4, move8 = record["movement"]["rtn4"], record["movement"]["rtn8"]
    return {
        **{f"knowmem_f_retained_{q}": retained(record, q) for q in record["target"]},
        **{f"verbmem_f_retained_{q}": retained(record, q, "verbmem_f") for q in record["target"]},
        "knowmem_r_fp": record["unlearned"]["fp"]["knowmem_r"],
        "moved_fraction": round(move4["moved"] / move4["weights"], 4),
        "moved_in_4bit_zero_bin": round(move4["moved_in_zero_bin"] / max(1, move4["moved"]), 4),
        "flip_fraction_rtn4": round(move4["flips"] / move4["weights"], 5),
        "flip_fraction_rtn8": round(move8["flips"] / move8["weights"], 5),
        "mean_change_in_4bit_steps": round(move4["mean_change_in_steps"], 4),
    }


def plot(cells: list[dict], path: Path) -> None:
    """Two panels, one point per cell: KnowMem_f retained at rtn4 against fp (above the diagonal = 4-bit brings
    knowledge back), and retained at fp against the share of 4-bit codes flipped (what forgetting cost)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    recovery, cost = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    regimes, widths = sorted({c["dtype"] for c in cells}), sorted({c["width"] for c in cells})
    markers = "os^Dv"
    for c in cells:
        fp, q4 = retained(c, "fp"), retained(c, "rtn4")
        if fp is None or q4 is None:
            continue
        style = {
            "color": f"C{regimes.index(c['dtype'])}",
            "marker": markers[widths.index(c["width"]) % 5],
            "alpha": 0.8,
            "linestyle": "none",
        }
        recovery.plot([fp], [q4], **style)
        cost.plot([derived(c)["flip_fraction_rtn4"] * 100], [fp], **style)
    recovery.plot([0, 100], [0, 100], color="grey", linewidth=0.8)
    recovery.set_xlabel("KnowMem_f retained at fp (% of target)")
    recovery.set_ylabel("KnowMem_f retained at rtn4 (% of target)")
    recovery.set_title("above the diagonal: 4-bit brings knowledge back", fontsize=9)
    cost.set_xlabel("4-bit codes flipped (%)")
    cost.set_ylabel("KnowMem_f retained at fp (% of target)")
    cost.set_title("what forgetting at full precision cost", fontsize=9)
    handles = [
        recovery.plot([], [], color=f"C{i}", marker="o", linestyle="none", label=r)[0] for i, r in enumerate(regimes)
    ]
    handles += [
        recovery.plot([], [], color="black", marker=markers[i % 5], linestyle="none", label=f"h{w}")[0]
        for i, w in enumerate(widths)
    ]
    cost.legend(handles=handles, fontsize=8, loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def table(cells: list[dict]) -> str:
    """The cells as a markdown table, in sweep order: settings, KnowMem_f retained per quantizer, utility, movement."""
    head = (
        "| width | weights | LR ratio | LR | group | method | epochs | seed | KnowMem_f retained fp / rtn8 / rtn4 (%) "
        "| KnowMem_r fp | moved | moved in 4-bit zero bin | rtn4 flips | rtn8 flips |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        d = derived(c)
        kept = " / ".join(
            "–" if d[f"knowmem_f_retained_{q}"] is None else f"{d[f'knowmem_f_retained_{q}']:.1f}" for q in QUANTIZERS
        )
        lines.append(
            f"| {c['width']} | {c['dtype']} | {c['lr_ratio']:g} | {c['lr']:.2e} | {c['group_size']} | "
            f"{c['method']} | {c['epochs']} | {c['seed']} | {kept} | {d['knowmem_r_fp']:.1f} | {d['moved_fraction']:.3f} | "
            f"{d['moved_in_4bit_zero_bin']:.3f} | {d['flip_fraction_rtn4']:.4f} | {d['flip_fraction_rtn8']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def summarise(out: Path) -> None:
    """fidelity.json (every cell with its derived numbers), fidelity.md (the table) and fidelity.png."""
    cells = cells_done(out / "cells.jsonl")
    if not cells:
        raise SystemExit(f"{out / 'cells.jsonl'}: no finished cells")
    atomic_write_json(out / "fidelity.json", {"cells": [c | {"derived": derived(c)} for c in cells]})
    atomic_write_text(out / "fidelity.md", table(cells))
    plot(cells, out / "fidelity.png")
    print(table(cells))


def parse_list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, help="prepared `small` benchmark (qunlearn prepare --out DIR)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--widths", type=parse_list(int), default=[128])
    parser.add_argument(
        "--dtypes",
        type=parse_list(str),
        default=["fp32", "bf16s"],
        help=f"weight regimes: {', '.join(REGIMES)} (bf16s: bf16 storage, fp32 compute)",
    )
    parser.add_argument("--lr-ratios", type=parse_list(float), default=[1.0, 4.0, 16.0])
    parser.add_argument("--group-sizes", type=parse_list(int), default=[128])
    parser.add_argument("--methods", type=parse_list(str), default=["ga"])
    parser.add_argument("--quantizers", type=parse_list(str), default=QUANTIZERS, help="fp and rtn<bits> names")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarise", action="store_true", help="only write fidelity.json/png from cells.jsonl")
    args = parser.parse_args()
    if args.summarise:
        summarise(Path(args.out))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
