"""Command-line options shared by every command that loads a checkpoint."""

from __future__ import annotations

import argparse


def add_loading_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--tokenizer, --trust-remote-code and (optionally) --dtype, as every model-loading command spells them."""
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="tokenizer directory, for checkpoints saved without tokenizer files"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own Python code (needed by some hub models; off by default)",
    )
    if dtype:
        parser.add_argument(
            "--dtype",
            choices=["fp32", "bf16", "fp16"],
            default="fp32",
            help="dtype the weights are loaded in (default fp32)",
        )
