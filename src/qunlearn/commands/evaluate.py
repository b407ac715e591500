"""`qunlearn evaluate`: MUSE metrics of one checkpoint on one corpus, written to a JSON file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers

from qunlearn import __version__
from qunlearn.commands.options import add_loading_options
from qunlearn.data.muse import load_corpus
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import METRICS, check_metrics, evaluate_model
from qunlearn.fileio import atomic_write_json
from qunlearn.models.io import load_model, parse_dtype, resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="MUSE metrics (VerbMem, KnowMem, PrivLeak, utility) of a checkpoint")
    parser.add_argument("--model", required=True, help="HF causal LM directory (safetensors)")
    parser.add_argument("--corpus", required=True, help="MUSE-layout corpus directory")
    parser.add_argument("--retrain", help="retrain checkpoint directory (PrivLeak's AUC_retrain; cached there)")
    parser.add_argument("--metrics", nargs="+", metavar="NAME",
                        help=f"metrics to run (default: all of {', '.join(METRICS)}; privleak only with --retrain)")
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    add_loading_options(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts/texts per forward pass (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.metrics is None:
        args.metrics = [m for m in METRICS if m != "privleak" or args.retrain is not None]
        if args.retrain is None:
            print("privleak skipped: it needs the retrain model (--retrain DIR)")
    check_metrics(args.metrics, have_retrain_auc=args.retrain is not None)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (got {args.batch_size})")
    parse_dtype(args.dtype)
    device = str(resolve_device(args.device))
    corpus = load_corpus(args.corpus)
    auc_retrain = None
    if "privleak" in args.metrics:
        auc_retrain = retrain_auc(args.retrain, corpus, dtype=args.dtype, device=device,
                                  batch_size=args.batch_size, progress=not args.no_progress, tokenizer=args.tokenizer)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, tokenizer=args.tokenizer,
                                  trust_remote_code=args.trust_remote_code)
    start = time.perf_counter()
    results = evaluate_model(model, tokenizer, corpus, args.metrics, auc_retrain, args.batch_size,
                             progress=not args.no_progress)
    atomic_write_json(args.out, {
        "model": str(Path(args.model).resolve()),
        "corpus": str(Path(args.corpus).resolve()),
        "retrain": str(Path(args.retrain).resolve()) if args.retrain else None,
        "settings": {"metrics": args.metrics, "device": device, "dtype": args.dtype, "batch_size": args.batch_size,
                     "decoding": "greedy"},
        "seconds": round(time.perf_counter() - start, 3),
        "versions": {"qunlearn": __version__, "torch": str(torch.__version__),
                     "transformers": transformers.__version__},
        "metrics": results,
    })
    for name, result in results.items():
        print(f"{name:<10} {result['value']:10.3f}")
    print(f"wrote {args.out}")
    return 0
