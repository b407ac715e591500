"""`qunlearn evaluate`: MUSE (default) or TOFU metrics of one checkpoint, written to a JSON file."""

from __future__ import annotations

import argparse

from qunlearn.commands.options import add_device_options, add_loading_options
from qunlearn.data.tofu import FORGET_SPLITS, load_tofu
from qunlearn.evaluate.registry import METRICS
from qunlearn.evaluate.run import SUITES, EvaluateSettings, evaluate_checkpoint
from qunlearn.evaluate.tofu import DEFAULT_DATE_STRING, DEFAULT_SYSTEM_PROMPT, MAX_NEW_TOKENS, PROMPT_FORMATS
from qunlearn.fileio import atomic_write_json
from qunlearn.models.io import resolve_device
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_file, output_lock


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="MUSE metrics (VerbMem, KnowMem, PrivLeak, utility) or TOFU metrics "
        "(forget quality, model utility) of a checkpoint",
    )
    parser.add_argument("--benchmark", choices=SUITES, default="muse", help="metric suite (default: muse)")
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


def run(args: argparse.Namespace) -> int:
    settings = EvaluateSettings.from_cli(args)
    if settings.benchmark == "muse" and settings.metrics is None and settings.retrain is None:
        print("privleak skipped: it needs the retrain model (--retrain DIR)")
    tofu = settings.benchmark == "tofu"
    data = load_tofu(settings.corpus, settings.forget_split) if tofu else None  # a broken data set is named first
    resolve_device(settings.device)
    models = {"--model": settings.model, "--retrain": settings.retrain, "--retain-model": settings.retain_model}
    for flag, path in models.items():
        if path:
            locate_model(path, flag)
    marker, kind = ("summary", "a TOFU evaluation result") if tofu else ("metrics", "an evaluation result")
    inputs = models | {"--corpus": settings.corpus, "--retain-logs": settings.retain_logs}
    check_output_file(args.out, marker, kind, inputs)
    with output_lock(args.out):
        result = evaluate_checkpoint(settings, data)
        atomic_write_json(args.out, result)
    print("\n".join(tofu_lines(result) if tofu else muse_lines(result)))
    print(f"wrote {args.out}")
    return 0


def muse_lines(result: dict) -> list[str]:
    """One line per metric with its value."""
    return [f"{name:<10} {metric['value']:10.3f}" for name, metric in result["metrics"].items()]


def tofu_lines(result: dict) -> list[str]:
    """The prompt format used, then one line per summary number (n/a without a retain reference)."""
    fmt = result["prompt_format"]
    lines = [
        f"prompt format: {fmt['kind']}" + (f" (system prompt {fmt['system_prompt']!r})" if fmt["system_prompt"] else "")
    ]
    return lines + [
        f"{name:<24} " + ("n/a (no --retain-model / --retain-logs)" if value is None else f"{value:10.4f}")
        for name, value in result["summary"].items()
    ]
