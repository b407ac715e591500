"""`qunlearn codeflips`: the code flips between two checkpoints under one quantizer, printed and saved."""

from __future__ import annotations

import argparse
from contextlib import nullcontext

from qunlearn.commands.options import add_loading_options, add_scheme_options
from qunlearn.fileio import atomic_write_json
from qunlearn.models.io import load_model
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_file, output_lock
from qunlearn.quant.diagnostics import code_flips
from qunlearn.quant.scheme import SchemeSettings, configured_quantizer


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("codeflips", help="fraction of quantized codes that differ between two models")
    parser.add_argument("--a", required=True, help="first checkpoint (e.g. the target)")
    parser.add_argument("--b", required=True, help="second checkpoint (e.g. the unlearned model)")
    parser.add_argument("--out", help="write the full per-module result to this JSON file")
    add_scheme_options(parser)
    add_loading_options(parser)
    parser.set_defaults(func=run)


def format_result(result: dict, top: int = 10) -> list[str]:
    """Overall line, then the `top` modules with the most flips."""
    overall = result["overall"]
    half = overall.get("below_half_step_fraction")
    lines = [
        f"{result['scheme']}: {overall['flips']} of {overall['weights']} codes flipped "
        f"({100 * overall['flip_fraction']:.4f}%)"
        + (f"; {100 * half:.2f}% of weights moved less than half a step" if half is not None else "")
    ]
    ranked = sorted(result["modules"].items(), key=lambda item: -item[1]["flip_fraction"])[:top]
    lines += [f"  {name}: {100 * counts['flip_fraction']:.4f}%" for name, counts in ranked]
    return lines


def run(args: argparse.Namespace) -> int:
    settings = SchemeSettings.from_cli(args)
    quantizer, texts = configured_quantizer(settings)
    locate_model(args.a, "--a")
    locate_model(args.b, "--b")
    if args.out:
        check_output_file(
            args.out,
            "overall",
            "a code-flip result",
            {"--a": args.a, "--b": args.b, "--calibration": settings.calibration, "--corpus": settings.corpus},
        )
    with output_lock(args.out) if args.out else nullcontext():
        loading = {
            "dtype": args.dtype,
            "tokenizer": args.tokenizer,
            "trust_remote_code": args.trust_remote_code,
            "need_tokenizer": quantizer.needs_calibration,
        }
        model_a, tokenizer = load_model(args.a, **loading)
        model_b, _ = load_model(args.b, **loading)
        result = code_flips(model_a, model_b, quantizer, tokenizer, texts)
        print("\n".join(format_result(result)))
        if args.out:
            atomic_write_json(args.out, result)
    return 0
