"""`qunlearn evaluate`: MUSE (default) or TOFU metrics of one checkpoint, written to a JSON file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers

from qunlearn import __version__
from qunlearn.commands.options import add_device_options, add_loading_options
from qunlearn.data.muse import load_corpus
from qunlearn.data.tofu import FORGET_SPLITS, TofuData, load_tofu
from qunlearn.errors import UserInputError
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.evaluate.registry import METRICS, check_metrics, evaluate_model
from qunlearn.evaluate.tofu import (
    DEFAULT_DATE_STRING,
    DEFAULT_SYSTEM_PROMPT,
    MAX_NEW_TOKENS,
    PROMPT_FORMATS,
    evaluate_tofu,
    read_retain_truth_ratios,
    resolve_prompt_format,
    retain_model_truth_ratios,
)
from qunlearn.fileio import atomic_write_json
from qunlearn.models.io import load_model, parse_dtype, resolve_device
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_file, output_lock


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="MUSE metrics (VerbMem, KnowMem, PrivLeak, utility) or TOFU metrics "
        "(forget quality, model utility) of a checkpoint",
    )
    parser.add_argument("--benchmark", choices=["muse", "tofu"], default="muse", help="metric suite (default: muse)")
    parser.add_argument("--model", required=True, help="HF causal LM directory (safetensors)")
    parser.add_argument(
        "--corpus",
        "--data",
        dest="corpus",
        required=True,
        help="MUSE-layout corpus directory, or for --benchmark tofu a TOFU directory or HF dataset id",
    )
    parser.add_argument("--retrain", help="retrain checkpoint directory (PrivLeak's AUC_retrain; read only)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="NAME",
        help=f"MUSE metrics to run (default: all of {', '.join(METRICS)}; privleak only with --retrain)",
    )
    parser.add_argument("--out", required=True, help="output JSON file")
    add_device_options(parser)
    add_loading_options(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts/texts per forward pass (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    tofu = parser.add_argument_group("TOFU (--benchmark tofu)")
    tofu.add_argument("--forget-split", choices=FORGET_SPLITS, default="forget10", help="(default: forget10)")
    tofu.add_argument("--retain-model", help="model trained without the forget split: forget quality's reference")
    tofu.add_argument(
        "--retain-logs",
        metavar="JSON",
        help="instead of --retain-model: its earlier result (this command's JSON, or OpenUnlearning's TOFU_EVAL.json)",
    )
    tofu.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="auto",
        help="chat (tokenizer's template), plain (Question: ... Answer:), or auto: chat when the "
        "tokenizer has a template (default: auto)",
    )
    tofu.add_argument(
        "--system-prompt",
        default=DEFAULT_SYSTEM_PROMPT,
        help=f"chat format's system message, '' for none (default: {DEFAULT_SYSTEM_PROMPT!r})",
    )
    tofu.add_argument(
        "--date-string",
        default=DEFAULT_DATE_STRING,
        help=f"date given to chat templates that print one (default: {DEFAULT_DATE_STRING!r})",
    )
    tofu.add_argument(
        "--max-new-tokens",
        type=int,
        default=MAX_NEW_TOKENS,
        help=f"greedy answer length for ROUGE (default: {MAX_NEW_TOKENS})",
    )
    parser.set_defaults(func=run)


def _header(args: argparse.Namespace, device: str) -> dict:
    return {
        "model": str(Path(args.model).resolve()),
        "versions": {
            "qunlearn": __version__,
            "torch": str(torch.__version__),
            "transformers": transformers.__version__,
        },
        "device": device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
    }


def run_tofu(args: argparse.Namespace, device: str, data: TofuData) -> int:
    """TOFU: the retain model's forget truth ratios first (when given), then every metric of --model."""
    if args.retain_model and args.retain_logs:
        raise UserInputError("give --retain-model or --retain-logs, not both")
    progress = not args.no_progress
    reference = read_retain_truth_ratios(args.retain_logs) if args.retain_logs else None
    loading = {
        "dtype": args.dtype,
        "device": device,
        "device_map": args.device_map,
        "tokenizer": args.tokenizer,
        "trust_remote_code": args.trust_remote_code,
    }
    if args.retain_model:
        retain_lm, retain_tok = load_model(args.retain_model, **loading)
        fmt = resolve_prompt_format(retain_tok, args.prompt_format, args.system_prompt, args.date_string)
        reference = retain_model_truth_ratios(retain_lm, retain_tok, data, fmt, args.batch_size, progress)
        del retain_lm
    model, tokenizer = load_model(args.model, **loading)
    fmt = resolve_prompt_format(tokenizer, args.prompt_format, args.system_prompt, args.date_string)
    result = evaluate_tofu(model, tokenizer, data, reference, fmt, args.batch_size, progress, args.max_new_tokens)
    retain = args.retain_model or args.retain_logs
    atomic_write_json(
        args.out, _header(args, device) | {"retain_reference": str(Path(retain).resolve()) if retain else None} | result
    )
    print(f"prompt format: {fmt.kind}" + (f" (system prompt {fmt.system_prompt!r})" if fmt.system_prompt else ""))
    for name, value in result["summary"].items():
        print(f"{name:<24} " + ("n/a (no --retain-model / --retain-logs)" if value is None else f"{value:10.4f}"))
    print(f"wrote {args.out}")
    return 0


def _device(args: argparse.Namespace) -> str:
    """Check --batch-size and --dtype; the device to run on."""
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be >= 1 (got {args.batch_size})")
    parse_dtype(args.dtype)
    return str(resolve_device(args.device))


def run(args: argparse.Namespace) -> int:
    if args.benchmark == "muse":
        if args.metrics is None:
            args.metrics = [m for m in METRICS if m != "privleak" or args.retrain is not None]
            if args.retrain is None:
                print("privleak skipped: it needs the retrain model (--retrain DIR)")
        check_metrics(args.metrics, have_retrain_auc=args.retrain is not None)
    data = load_tofu(args.corpus, args.forget_split) if args.benchmark == "tofu" else None
    device = _device(args)
    models = {"--model": args.model, "--retrain": args.retrain, "--retain-model": args.retain_model}
    for flag, path in models.items():
        if path:
            locate_model(path, flag)
    marker, kind = (
        ("summary", "a TOFU evaluation result") if args.benchmark == "tofu" else ("metrics", "an evaluation result")
    )
    check_output_file(args.out, marker, kind, models | {"--corpus": args.corpus, "--retain-logs": args.retain_logs})
    with output_lock(args.out):
        return run_tofu(args, device, data) if args.benchmark == "tofu" else run_muse(args, device)


def run_muse(args: argparse.Namespace, device: str) -> int:
    """MUSE: AUC_retrain from --retrain when PrivLeak is asked for, then every metric of --model."""
    corpus = load_corpus(args.corpus)
    auc_retrain = None
    if "privleak" in args.metrics:
        auc_retrain = retrain_auc(
            args.retrain,
            corpus,
            dtype=args.dtype,
            device=device,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device_map=args.device_map,
            tokenizer=args.tokenizer,
        )
    model, tokenizer = load_model(
        args.model,
        dtype=args.dtype,
        device=device,
        device_map=args.device_map,
        tokenizer=args.tokenizer,
        trust_remote_code=args.trust_remote_code,
    )
    start = time.perf_counter()
    results = evaluate_model(
        model, tokenizer, corpus, args.metrics, auc_retrain, args.batch_size, progress=not args.no_progress
    )
    atomic_write_json(
        args.out,
        {
            "model": str(Path(args.model).resolve()),
            "corpus": str(Path(args.corpus).resolve()),
            "retrain": str(Path(args.retrain).resolve()) if args.retrain else None,
            "settings": {
                "metrics": args.metrics,
                "device": device,
                "device_map": args.device_map,
                "dtype": args.dtype,
                "batch_size": args.batch_size,
                "decoding": "greedy",
            },
            "seconds": round(time.perf_counter() - start, 3),
            "versions": {
                "qunlearn": __version__,
                "torch": str(torch.__version__),
                "transformers": transformers.__version__,
            },
            "metrics": results,
        },
    )
    for name, result in results.items():
        print(f"{name:<10} {result['value']:10.3f}")
    print(f"wrote {args.out}")
    return 0
