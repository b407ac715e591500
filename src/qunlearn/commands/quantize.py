"""`qunlearn quantize`: fake-quantize a checkpoint with one scheme and save it (dequantized) with quantize.yaml."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from qunlearn.commands.options import add_loading_options, add_scheme_options
from qunlearn.fileio import atomic_write_yaml
from qunlearn.models.integrity import check_finite
from qunlearn.models.io import load_model, save_model
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_dir, output_lock, staged_dir
from qunlearn.quant.scheme import SchemeSettings, configured_quantizer

QUANTIZE_FILE = "quantize.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("quantize", help="fake-quantize a model (RTN, GPTQ, AWQ, bitsandbytes) and save it")
    parser.add_argument("--model", required=True, help="input HF checkpoint directory")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    add_loading_options(parser)
    add_scheme_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = SchemeSettings.from_cli(args)
    quantizer, texts = configured_quantizer(settings)
    locate_model(args.model, "--model")
    check_output_dir(
        args.out,
        QUANTIZE_FILE,
        "a quantized checkpoint",
        {
            "--model": args.model,
            "--calibration": settings.calibration,
            "--corpus": settings.corpus,
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
        check_finite(model, f"{settings.scheme} quantization of {args.model}")
        save_model(model, tokenizer, staging)
        calibration = settings.calibration_source if quantizer.needs_calibration else None
        atomic_write_yaml(
            staging / QUANTIZE_FILE,
            {
                "source": str(args.model),
                "scheme": settings.scheme,
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
    print(f"{settings.scheme}: quantized {args.model} in {seconds:.1f}s → {args.out}")
    return 0
