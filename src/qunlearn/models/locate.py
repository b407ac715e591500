"""Where a model argument points: a local checkpoint directory, or (only when clearly meant) a hub id.

A value that looks like a path (absolute, starting with `.` or `~`, more than one `/`, or whose first
component exists here) is local: when it does not exist it is "not found" at once, never a download.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qunlearn.errors import UserInputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
OFFLINE_VALUES = {"1", "true", "yes", "on"}


def looks_local(value: str) -> bool:
    """True for a value the user means as a path (see the module docstring); hub ids look like 'org/name'."""
    path = Path(value).expanduser()
    if path.exists() or value.startswith((".", "~", "/")) or "\\" in value or not HUB_ID.match(value):
        return True
    return "/" in value and Path(value.split("/", 1)[0]).exists()


def hub_offline() -> bool:
    """True when huggingface_hub is told not to use the network (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in OFFLINE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def locate_dir(value: str | os.PathLike, what: str) -> Path:
    """A local directory argument (`what` names the flag or field): not found or a file → one-line error."""
    path = Path(value).expanduser()
    if not path.exists():
        raise UserInputError(f"{what} {value}: directory not found")
    if not path.is_dir():
        raise UserInputError(f"{what} {value}: is a file, expected a directory")
    return path


def locate_model(value: str | os.PathLike, what: str = "model") -> str:
    """The model argument as a local checkpoint directory (checked to exist) or as a hub id to download."""
    text = str(value)
    if isinstance(value, os.PathLike) or looks_local(text):
        path = locate_dir(value, what)
        if not (path / "config.json").is_file():
            raise UserInputError(f"{what} {value}: not a HF checkpoint (no config.json)")
        return str(path)
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(text, "config.json"), str):
            raise UserInputError(
                f"{what} {text}: no such local directory, and the hub id is not in the cache "
                "while offline (HF_HUB_OFFLINE)"
            )
    return text
