"""`qunlearn` entry point: each subcommand lives in `qunlearn/commands/<name>.py` with a `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys

from qunlearn.errors import QunlearnError

# One line per subcommand; a module's register(subparsers) adds its parser and sets `func`.
COMMANDS = ["demo", "prepare", "run", "unlearn", "quantize", "codeflips", "evaluate", "report", "audit"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="qunlearn", description="Machine unlearning that survives quantization.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qunlearn.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the subcommand; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except QunlearnError as err:
        print(f"qunlearn {args.command}: {err.label}: {err}", file=sys.stderr)
        return err.exit_code
    except (ValueError, FileNotFoundError) as err:
        print(f"qunlearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qunlearn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
