"""qunlearn's error vocabulary: every failure a user can cause or meet is one of these, one line at the CLI.

Each type carries the exit code and the short label the CLI prints (`qunlearn CMD: LABEL: message`).
They subclass the built-in they refine, so `except ValueError` around library calls keeps working.
"""

from __future__ import annotations


class QunlearnError(Exception):
    """Base of qunlearn's own errors: `label` prefixes the CLI's one-line message, `exit_code` ends the process."""

    label = "error"
    exit_code = 2


class UserInputError(QunlearnError, ValueError):
    """Bad input: a flag, config field, file or directory that cannot be used (the message names it)."""


class ModelIntegrityError(UserInputError):
    """A checkpoint that loads but cannot be judged: missing/unexpected tensors, wrong shapes, NaN/inf weights."""

    label = "model check failed"


class OutputConflictError(UserInputError):
    """An `--out` that would overwrite an input, is another kind of output, or is held by another process."""

    label = "output refused"


class QuantizerUnavailableError(QunlearnError, RuntimeError):
    """A quantizer that cannot run in this environment (missing package, no accelerator)."""

    label = "quantizer unavailable"


class TrainingDivergedError(QunlearnError, FloatingPointError):
    """A loss or gradient became NaN/inf during training (GA can diverge); the message names the step."""

    label = "training diverged"
    exit_code = 1


class NumericalError(QunlearnError, ArithmeticError):
    """A numerical failure that no fallback could absorb (e.g. a non-finite saliency score)."""

    label = "numerical failure"
    exit_code = 1
