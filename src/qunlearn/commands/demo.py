"""`qunlearn demo`: the paper's experiment on the embedded benchmark, end to end, with a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qunlearn.config import DemoSettings
from qunlearn.data.synthetic import FLAVOURS
from qunlearn.pipeline import run_and_report


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the embedded benchmark end to end and write the report")
    parser.add_argument("--out", help="output directory (default: ./qunlearn-demo, ./qunlearn-demo-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 5 methods, fp/rtn8/rtn4")
    parser.add_argument("--flavour", choices=FLAVOURS, default="news", help="corpus style (default: news)")
    parser.add_argument("--seed", type=int, default=0, help="corpus, training and unlearning seed (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = run_and_report(DemoSettings.from_cli(args).run_config(), resume=True)
    print(f"report: {written['report.md']} and {written['report.html']}")
    head = json.loads(Path(written["report.json"]).read_text())["headline"]
    print(head["summary"])
    return 0
