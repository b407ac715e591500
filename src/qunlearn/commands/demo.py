"""`qunlearn demo`: the paper's experiment on the embedded benchmark, end to end, with a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qunlearn.config import DEFAULT_METHODS, DEFAULT_QUANTIZERS, BenchmarkSettings, RunConfig
from qunlearn.data.synthetic import FLAVOURS
from qunlearn.pipeline import run_and_report

QUICK_METHODS = ["ga", "ga_gdr", "npo", "ga_sure", "npo_sure"]
QUICK_QUANTIZERS = ["fp", "rtn8", "rtn4"]


def demo_config(out: str, quick: bool, flavour: str = "news", seed: int = 0) -> RunConfig:
    """The demo grid: all 12 methods × fp/rtn8/rtn4/gptq4/awq4 on `small`; a subset on `tiny` with --quick."""
    return RunConfig(
        out=out,
        benchmark=BenchmarkSettings(preset="tiny" if quick else "small", flavour=flavour, seed=seed),
        methods=list(QUICK_METHODS if quick else DEFAULT_METHODS),
        quantizers=list(QUICK_QUANTIZERS if quick else DEFAULT_QUANTIZERS),
        unlearn={"seed": seed},
    )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the embedded benchmark end to end and write the report")
    parser.add_argument("--out", help="output directory (default: ./qunlearn-demo, ./qunlearn-demo-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 5 methods, fp/rtn8/rtn4")
    parser.add_argument("--flavour", choices=FLAVOURS, default="news", help="corpus style (default: news)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, training and unlearning seed (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out or ("qunlearn-demo-quick" if args.quick else "qunlearn-demo")
    config = demo_config(out, args.quick, args.flavour, args.seed)
    written = run_and_report(config, resume=True)
    print(f"report: {written['report.md']} and {written['report.html']}")
    head = json.loads(Path(written["report.json"]).read_text())["headline"]
    print(head["summary"])
    return 0
