"""Parity of our RTN, GPTQ and AWQ with llm-compressor on the embedded tiny target (its own virtualenv).

Setup:  python3 -m venv /tmp/lcvenv && /tmp/lcvenv/bin/pip install torch==2.13.0 llmcompressor
Run:    /tmp/lcvenv/bin/python benchmarks/quant_parity.py --model BENCH/models/target --corpus BENCH/corpus
        (or --calibration FILE, e.g. on the 7B-shaped model of benchmarks/real_shape.py)
Both sides use llm-compressor's symmetric int grid (scale = amax / 7.5 at 4 bits), fp32, static groups,
no act-order, the same calibration sequences in the same order (llm-compressor's: longest first; --our-order keeps
ours). Reports, per scheme, how many weights differ, how many sit on another grid point (more than half a step
apart) and by how many steps at most (--per-layer: per layer); --noise-control also runs our GPTQ on fp64-summed
Hessians, to show how far float rounding alone moves weights; --eager-attention calibrates ours with the attention
kernel llm-compressor's calibration uses.
AWQ: steps are llm-compressor's own group steps of its smoothed weights; the scales folded into the norms are
compared too. Its AWQ pins cached inputs in page-locked memory, which torch refuses without an accelerator
("Cannot access accelerator device when none is available"); `no_memory_pinning` skips that, and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from qunlearn.quant import base as quant_base
from qunlearn.quant.awq import AWQQuantizer
from qunlearn.quant.calibration import calibration_sequences, calibration_texts
from qunlearn.quant.gptq import GPTQQuantizer, HessianAccumulator
from qunlearn.quant.layers import target_linears
from qunlearn.quant.rtn import rtn_codes, rtn_quantize

BITS, DENOMINATOR = 4, 7.5


def library_recipe(kind: str, group_size: int):
    """llm-compressor modifiers for one scheme on a symmetric 4-bit group grid."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    groups = {
        "group_0": QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(
                num_bits=BITS, type="int", symmetric=True, strategy="group", group_size=group_size
            ),
        )
    }
    if kind == "rtn":
        return QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    if kind == "gptq":
        return GPTQModifier(
            config_groups=groups, ignore=["lm_head"], actorder=None, block_size=128, dampening_frac=0.01
        )
    return [AWQModifier(duo_scaling=True, n_grid=20), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]


def library_weights(model) -> dict[str, torch.Tensor]:
    """The dequantized weights llm-compressor's forward pass uses, per Linear."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    out = {}
    for name, module in target_linears(model).items():
        args = module.quantization_scheme.weights
        out[name] = fake_quantize(module.weight, module.weight_scale, getattr(module, "weight_zero_point", None), args)
    return out


def library_scales(model) -> dict[str, torch.Tensor]:
    """llm-compressor's per-group weight scales, per Linear (rows, groups)."""
    return {n: m.weight_scale.detach().float() for n, m in target_linears(model).items() if hasattr(m, "weight_scale")}


def compare(
    ours: dict[str, torch.Tensor],
    theirs: dict[str, torch.Tensor],
    steps: dict[str, torch.Tensor],
    group_size: int,
    per_layer: bool = False,
    scales: dict[str, torch.Tensor] | None = None,
) -> str:
    """Weights that differ, those on another grid point, and the largest difference in steps, over all layers (and
    per layer if asked)."""
    differ = moved = total = 0
    worst = 0.0
    lines = []
    scales = scales or {}
    for name, w in ours.items():
        diff = (w - theirs[name].to(w.dtype)).detach().abs().reshape(w.shape[0], -1, group_size)
        in_steps = diff / steps[name].detach().unsqueeze(-1).clamp_min(1e-12)
        layer_differ, layer_moved, layer_worst = (
            int((diff > 0).sum()),
            int((in_steps > 0.5).sum()),
            float(in_steps.max()),
        )
        differ += layer_differ
        moved += layer_moved
        total += w.numel()
        worst = max(worst, layer_worst)
        lines.append(
            f"  {name}: {100 * layer_differ / w.numel():.3f}% differ, {100 * layer_moved / w.numel():.3f}% on another"
            f" grid point, max {layer_worst:.2f} steps"
        )
        if per_layer and name in scales:
            rel = float(((scales[name] - steps[name]).abs() / steps[name].clamp_min(1e-12)).max())
            lines[-1] += f", group scales max rel. diff {rel:.3g}"
    summary = (
        f"{differ}/{total} weights differ ({100 * differ / total:.3f}%), {moved} on another grid point"
        f" ({100 * moved / total:.3f}%), max {worst:.2f} steps"
    )
    return "\n".join([summary, *lines]) if per_layer else summary


@contextlib.contextmanager
def fp64_hessian_sums():
    """Our GPTQ with Hessians summed in fp64 and rounded to fp32 at the end: a change of float rounding only."""
    add, hessian = HessianAccumulator.add, HessianAccumulator.hessian  # restored on exit

    def add64(self: HessianAccumulator, x: torch.Tensor) -> None:
        self.sequences += x.shape[0] if x.dim() > 2 else 1
        rows = math.sqrt(2) * x.reshape(-1, x.shape[-1]).double()
        self.sums = rows.T @ rows if self.sums is None else self.sums.add_(rows.T @ rows)

    def hessian32(self: HessianAccumulator) -> torch.Tensor:
        return hessian(self).float()

    HessianAccumulator.add, HessianAccumulator.hessian = add64, hessian32
    try:
        yield
    finally:
        HessianAccumulator.add, HessianAccumulator.hessian = add, hessian


@contextlib.contextmanager
def library_sample_order(dataset: Dataset):
    """Our quantizers take the calibration sequences in llm-compressor's order (its LengthAwareSampler puts the
    longest first), so that both sides sum Hessians in the same order: float sums depend on it."""
    from llmcompressor.datasets.utils import LengthAwareSampler

    order = list(LengthAwareSampler(dataset))
    draw = quant_base.calibration_sequences

    def reordered(*args, **kwargs) -> list[torch.Tensor]:
        sequences = draw(*args, **kwargs)
        return [sequences[i] for i in order]

    quant_base.calibration_sequences = reordered
    try:
        yield
    finally:
        quant_base.calibration_sequences = draw


@contextlib.contextmanager
def no_memory_pinning():
    """llm-compressor's AWQ pins its cached parent inputs in page-locked memory before each grid search (for faster
    host-to-accelerator copies); torch without an accelerator refuses `pin_memory()`. Skipping it changes no value."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    pin = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda *_args, **_kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = pin


def norm_scale_differences(base, ours, theirs) -> dict[str, float]:
    """Per decoder-block norm, the largest relative difference of the AWQ scales folded into it (base / smoothed)."""
    base_state, our_state, their_state = base.state_dict(), ours.state_dict(), theirs.state_dict()
    out = {}
    for name, weight in base_state.items():
        if ".layers." in name and name.endswith("norm.weight"):
            our_s, their_s = weight / our_state[name], weight / their_state[name]
            out[name.removesuffix(".weight")] = float(((our_s - their_s).abs() / their_s).max())
    return out


def our_copy(base, eager_attention: bool):
    """A copy of the model for our quantizer, with eager attention if asked: llm-compressor's calibration forward
    passes force it (`calibration_forward_context`), and sdpa's attention outputs differ from it in float rounding."""
    model = copy.deepcopy(base)
    if eager_attention:
        model.set_attn_implementation("eager")
    return model


def perplexity(model, sequences: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return math.exp(sum(model(input_ids=s, labels=s).loss.item() for s in sequences) / len(sequences))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="MUSE-layout corpus: retain + holdout text calibrates")
    source.add_argument("--calibration", help="calibration text file (documents separated by blank lines)")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--only", choices=["rtn", "gptq", "awq"], action="append")
    parser.add_argument("--per-layer", action="store_true", help="also print the differences of every layer")
    parser.add_argument(
        "--our-order",
        dest="library_order",
        action="store_false",
        help="calibrate ours in our own sequence order (default: in llm-compressor's, longest first)",
    )
    parser.add_argument(
        "--noise-control",
        action="store_true",
        help="GPTQ: also compare ours with ours on fp64-summed Hessians (how far float rounding alone moves weights)",
    )
    parser.add_argument(
        "--eager-attention",
        action="store_true",
        help="calibrate ours with eager attention, as llm-compressor does (default: the model's own, e.g. sdpa)",
    )
    args = parser.parse_args()
    from llmcompressor import oneshot

    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    texts = calibration_texts(args.calibration, args.corpus)
    sequences = calibration_sequences(tokenizer, texts, args.n_samples, args.seq_len)
    held_out = calibration_sequences(tokenizer, texts, 64, args.seq_len, seed=1)[args.n_samples :]
    dataset = Dataset.from_dict(
        {"input_ids": [s[0].tolist() for s in sequences], "attention_mask": [[1] * s.shape[1] for s in sequences]}
    )
    g = args.group_size
    steps = {n: rtn_codes(m.weight, BITS, g, DENOMINATOR)[1] for n, m in target_linears(base).items()}
    ours_make = {
        "rtn": lambda m: (
            [
                lin.weight.data.copy_(rtn_quantize(lin.weight, BITS, g, DENOMINATOR))
                for lin in target_linears(m).values()
            ]
            and m
        ),
        "gptq": lambda m: GPTQQuantizer(
            "gptq4", bits=BITS, group_size=g, denominator=DENOMINATOR, n_samples=args.n_samples, seq_len=args.seq_len
        ).quantize(m, tokenizer, texts),
        "awq": lambda m: AWQQuantizer(
            "awq4", bits=BITS, group_size=g, denominator=DENOMINATOR, n_samples=args.n_samples, seq_len=args.seq_len
        ).quantize(m, tokenizer, texts),
    }
    print(f"fp32 perplexity on held-out retain chunks: {perplexity(base, held_out):.4f}")
    for kind in args.only or ["rtn", "gptq", "awq"]:
        start = time.perf_counter()
        with library_sample_order(dataset) if args.library_order else contextlib.nullcontext():
            ours = ours_make[kind](our_copy(base, args.eager_attention))
        ours_s = time.perf_counter() - start
        theirs = copy.deepcopy(base)
        start = time.perf_counter()
        try:
            with no_memory_pinning() if kind == "awq" else contextlib.nullcontext():
                oneshot(
                    model=theirs,
                    recipe=library_recipe(kind, g),
                    dataset=None if kind == "rtn" else dataset,
                    num_calibration_samples=args.n_samples,
                    max_seq_length=args.seq_len,
                    shuffle_calibration_samples=False,
                )
        except Exception as err:  # noqa: BLE001 — record the library's failure and go on with the next scheme
            print(f"{kind}: llm-compressor failed: {type(err).__name__}: {err}")
            continue
        theirs_s = time.perf_counter() - start
        their_w = library_weights(theirs)
        our_w = {n: m.weight.detach() for n, m in target_linears(ours).items()}
        if kind == "awq":  # steps of llm-compressor's grid on its smoothed weights
            result = compare(our_w, their_w, library_scales(theirs), g, args.per_layer)
        else:
            result = compare(our_w, their_w, steps, g, args.per_layer, library_scales(theirs))
        line = f"{kind}: {result}; time ours {ours_s:.1f}s, llm-compressor {theirs_s:.1f}s"
        if kind == "awq":
            norms = norm_scale_differences(base, ours, theirs)
            line += f"; norm scales max rel. diff {max(norms.values()):.3g}"
            for name, model in (("ours", ours), ("llm-compressor", theirs)):
                line += f"; ppl {name} {perplexity(model, held_out):.4f}"
            if args.per_layer:
                line += "".join(f"\n  {name}: scales max rel. diff {rel:.3g}" for name, rel in norms.items())
        print(line, flush=True)
        if kind == "gptq" and args.noise_control:
            order = library_sample_order(dataset) if args.library_order else contextlib.nullcontext()
            with fp64_hessian_sums(), order:
                control = ours_make["gptq"](our_copy(base, args.eager_attention))
            control_w = {n: m.weight.detach() for n, m in target_linears(control).items()}
            print(
                f"gptq noise control, ours vs ours with fp64-summed Hessians: "
                f"{compare(our_w, control_w, steps, g, args.per_layer)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
