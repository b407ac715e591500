"""`qunlearn quantize`: fake-quantize a checkpoint with one scheme and save it (dequantized) with quantize.yaml."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from qunlearn.commands.options import add_loading_options
from qunlearn.errors import QuantizerUnavailableError, UserInputError
from qunlearn.fileio import atomic_write_yaml
from qunlearn.models.integrity import check_finite
from qunlearn.models.io import load_model, save_model
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_dir, output_lock, staged_dir
from qunlearn.quant.calibration import CALIBRATE_ON, calibration_texts
from qunlearn.quant.registry import QUANTIZERS, get_quantizer

QUANTIZE_FILE = "quantize.yaml"


def add_scheme_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that build a quantizer: scheme, grid and calibration."""
    parser.add_argument(
        "--scheme",
        required=True,
        choices=list(QUANTIZERS),
        metavar="NAME",
        help="quantizer: " + "; ".join(f"{name} ({spec.summary})" for name, spec in QUANTIZERS.items()),
    )
    parser.add_argument("--group-size", type=int, help="RTN/GPTQ/AWQ group size (default 128; -1 = per row)")
    parser.add_argument("--calibration", help="calibration text file (documents separated by blank lines)")
    parser.add_argument("--corpus", help="MUSE-layout corpus whose text calibrates GPTQ/AWQ")
    parser.add_argument(
        "--calibrate-on",
        choices=CALIBRATE_ON,
        default="generic",
        help="corpus text to calibrate on: retain+holdout (generic, default) or forget",
    )
    parser.add_argument("--n-samples", type=int, help="calibration sequences (default 128)")
    parser.add_argument("--device", default=None, help="device for GPTQ/AWQ blocks (default: where the model is)")


def build_quantizer(args: argparse.Namespace):
    """The quantizer named by --scheme with the options given on the command line, and its calibration text."""
    if args.group_size is not None and not (args.group_size > 0 or args.group_size == -1):
        raise UserInputError(f"--group-size must be positive or -1 (per row), got {args.group_size}")
    if args.n_samples is not None and args.n_samples < 1:
        raise UserInputError(f"--n-samples must be at least 1, got {args.n_samples}")
    probe = get_quantizer(args.scheme)
    options = {
        key: value
        for key, value in (("group_size", args.group_size), ("n_samples", args.n_samples), ("device", args.device))
        if value is not None
    }
    quantizer = get_quantizer(args.scheme, **{k: v for k, v in options.items() if hasattr(probe, k)})
    reason = quantizer.unavailable_reason()
    if reason:
        raise QuantizerUnavailableError(f"--scheme {args.scheme} not available: {reason}")
    texts = calibration_texts(args.calibration, args.corpus, args.calibrate_on)
    if quantizer.needs_calibration and not texts:
        raise UserInputError(f"--scheme {args.scheme} needs calibration text: give --calibration FILE or --corpus DIR")
    return quantizer, texts


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("quantize", help="fake-quantize a model (RTN, GPTQ, AWQ, bitsandbytes) and save it")
    parser.add_argument("--model", required=True, help="input HF checkpoint directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    add_loading_options(parser)
    add_scheme_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quantizer, texts = build_quantizer(args)
    locate_model(args.model, "--model")
    check_output_dir(
        args.out,
        QUANTIZE_FILE,
        "a quantized checkpoint",
        {
            "--model": args.model,
            "--calibration": args.calibration,
            "--corpus": args.corpus,
            "--tokenizer": args.tokenizer,
        },
    )
    with output_lock(args.out), staged_dir(args.out) as staging:
        model, tokenizer = load_model(
            args.model,
            dtype=args.dtype,
            tokenizer=args.tokenizer,
            trust_remote_code=args.trust_remote_code,
            need_tokenizer=quantizer.needs_calibration,
        )
        start = time.perf_counter()
        model = quantizer.quantize(model, tokenizer, texts if quantizer.needs_calibration else None)
        seconds = time.perf_counter() - start
        check_finite(model, f"{args.scheme} quantization of {args.model}")
        save_model(model, tokenizer, staging)
        calibration = (
            args.calibration or (f"{args.corpus} ({args.calibrate_on})" if args.corpus else None)
            if quantizer.needs_calibration
            else None
        )
        atomic_write_yaml(
            staging / QUANTIZE_FILE,
            {
                "source": str(args.model),
                "scheme": args.scheme,
                "dtype": args.dtype,
                "options": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in asdict(quantizer).items() if k != "fallbacks"
                },
                "fallbacks": quantizer.fallbacks,
                "calibration": calibration,
                "calibration_docs": len(texts) if calibration else 0,
                "seconds": round(seconds, 3),
            },
        )
    print(f"{args.scheme}: quantized {args.model} in {seconds:.1f}s → {args.out}")
    return 0
