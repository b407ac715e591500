"""`qunlearn` entry point: each subcommand lives in `qunlearn/commands/<name>.py` with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys

from transformers.utils import logging as hf_logging

from qunlearn import __version__
from qunlearn.errors import QunlearnError

# One line per subcommand; a module's register(subparsers) adds its parser and sets `func`.
COMMANDS = ["demo", "prepare", "run", "unlearn", "quantize", "codeflips", "evaluate", "report", "audit"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="qunlearn", description="Machine unlearning that survives quantization.")
    parser.add_argument("--version", action="version", version=f"qunlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qunlearn.commands.{name}").register(sub)
    return parser


def one_line(err: BaseException) -> str:
    """An error's message on one line (library messages, e.g. transformers', can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the subcommand; every failure a user can cause prints one line and exits non-zero.

    Exit codes: 2 for bad input (flags, files, models that fail the integrity checks, refused outputs, OS
    errors such as a permission denied), 1 for a run that failed numerically, 130 for Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    # qunlearn shows its own progress; transformers' per-load "Loading weights" bars would drown it. Set here, for
    # the command line only: importing the library leaves transformers' settings alone.
    hf_logging.disable_progress_bar()
    try:
        return args.func(args) or 0
    except QunlearnError as err:
        print(f"qunlearn {args.command}: {err.label}: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except (ValueError, OSError) as err:
        print(f"qunlearn {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qunlearn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
