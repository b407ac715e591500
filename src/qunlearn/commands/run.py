"""`qunlearn run --config RUN.yaml`: the grid for real models and data (or the embedded benchmark)."""

from __future__ import annotations

import argparse

from qunlearn.config import RunConfig
from qunlearn.pipeline import run_and_report


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run methods × quantizers × metrics from a YAML config, then report")
    parser.add_argument("--config", required=True, help="run config YAML (see examples/)")
    parser.add_argument("--out", help="output directory (overrides the config's 'out')")
    parser.add_argument("--resume", action="store_true", help="continue a run: skip every finished cell")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = run_and_report(RunConfig.from_cli(args), resume=args.resume)
    print(f"report: {written['report.md']} and {written['report.html']}")
    return 0
