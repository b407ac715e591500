"""`qunlearn prepare`: build the embedded benchmark and print its summary."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from qunlearn.config import ALL_FLAVOURS, PRESETS, BenchmarkSettings
from qunlearn.prepare import prepare_benchmark, summary_lines


def add_benchmark_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that prepares the embedded benchmark."""
    parser.add_argument(
        "--flavour",
        choices=ALL_FLAVOURS,
        default="news",
        help="news or books (MUSE layout), or tofu (TOFU layout: evaluate --benchmark tofu) (default: news)",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed (default: 0)")
    parser.add_argument("--preset", choices=list(PRESETS), default="small", help="model/corpus size (default: small)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="saved weight dtype (default: fp32)")
    parser.add_argument("--force", action="store_true", help="rebuild even if DIR holds the same settings")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("prepare", help="write the embedded benchmark: corpus, tokenizer, target, retrain")
    parser.add_argument("--out", required=True, help="output directory")
    add_benchmark_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bench = prepare_benchmark(args.out, **asdict(BenchmarkSettings.from_cli(args)), force=args.force)
    print("\n".join(summary_lines(bench)))
    return 0
