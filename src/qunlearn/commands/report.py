"""`qunlearn report`: rebuild the report files of a run folder from its results.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from qunlearn.report import write_report
from qunlearn.results import RESULTS_FILE, latest_config_hash


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write report.md/.csv/.json/.html and plots from results.jsonl")
    parser.add_argument("--out", required=True, help="run folder holding results.jsonl; the report is written there")
    parser.add_argument(
        "--config-hash",
        help="keep only results of this config hash "
        "(default: the hash of the last line of results.jsonl, i.e. the latest run)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    config_hash = args.config_hash or latest_config_hash(out / RESULTS_FILE)
    written = write_report(out, config_hash)
    print(f"report for config {config_hash}: " + ", ".join(str(path) for path in written.values()))
    return 0
