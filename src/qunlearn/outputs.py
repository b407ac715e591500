"""Outputs that never destroy an input or an earlier result: checks up front, one writer, swap when complete.

Every writing command (1) checks its `--out` before any work: it must not equal, contain or lie inside an
input, and an existing `--out` must be an earlier output of the same command (its marker file, or its key
in a JSON file); (2) holds an advisory lock beside the output for the whole run, so a second process on
the same `--out` stops at once; (3) writes a replacement into a staging directory beside it and swaps it
in only when complete, so a failed or killed run leaves the earlier result as it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from qunlearn.errors import OutputConflictError
from qunlearn.fileio import current_umask

Inputs = Mapping[str, "str | os.PathLike | None"]


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _beside(out: Path, suffix: str) -> Path:
    """A hidden sibling of `out` (same folder, so renames between them are atomic)."""
    return out.parent / f".{out.name}.{suffix}"


def check_not_an_input(out: str | os.PathLike, inputs: Inputs, flag: str = "--out") -> None:
    """Refuse an output that equals, contains or lies inside one of the `inputs` (flag → path), naming both."""
    real_out = _real(out)
    for name, path in inputs.items():
        if path is None or not Path(path).expanduser().exists():
            continue
        real_in = _real(path)
        if real_out == real_in:
            relation = "is"
        elif real_in.is_relative_to(real_out):
            relation = "contains"
        elif real_out.is_relative_to(real_in):
            relation = "is inside"
        else:
            continue
        raise OutputConflictError(
            f"{flag} {out} {relation} the input {name} {path}; inputs are never written to, choose another output path"
        )


def _check_parent(out: Path, flag: str) -> None:
    """The nearest existing ancestor of `out` must be a writable directory (checked before any work)."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputConflictError(f"{flag} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputConflictError(f"{flag} {out}: directory {parent} is not writable")


def check_output_dir(out: str | os.PathLike, marker: str, kind: str, inputs: Inputs, flag: str = "--out") -> None:
    """Refuse an output directory that is an input, a file, or a non-empty directory without `marker`."""
    out = Path(out).expanduser()
    check_not_an_input(out, inputs, flag)
    if out.exists() and not out.is_dir():
        raise OutputConflictError(f"{flag} {out}: is a file, expected a directory for {kind}")
    if out.is_dir():
        if not (out / marker).is_file() and any(out.iterdir()):
            raise OutputConflictError(
                f"{flag} {out}: directory exists and is not {kind} (no {marker}); choose a new or empty directory"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputConflictError(f"{flag} {out}: directory is not writable")
    _check_parent(out, flag)


def check_output_file(out: str | os.PathLike, key: str, kind: str, inputs: Inputs, flag: str = "--out") -> None:
    """Refuse an output file that is (inside) an input, a directory, or an existing file that is not a `kind`.

    A previous `kind` is recognised as a JSON object with the top-level `key`.
    """
    out = Path(out).expanduser()
    check_not_an_input(out, inputs, flag)
    if out.is_dir():
        raise OutputConflictError(f"{flag} {out}: is a directory, expected a JSON file path")
    if out.exists():
        try:
            previous = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if not isinstance(previous, dict) or key not in previous:
            raise OutputConflictError(f"{flag} {out}: file exists and is not {kind}; choose a new file name")
    _check_parent(out, flag)


def _recover(out: Path) -> None:
    """Finish or undo a swap cut short by a crash (run under the lock): the earlier result comes back."""
    old, staging = _beside(out, "old"), _beside(out, "staging")
    if old.exists() and not out.exists():
        old.rename(out)
    for leftover in (old, staging):
        if leftover.is_dir():
            shutil.rmtree(leftover)


@contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive advisory lock on `out` (a hidden `.NAME.lock` beside it); a second holder stops at once."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _beside(out, "lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputConflictError(
                f"{flag} {out}: another qunlearn process is writing it (lock {lock}); "
                "wait for it to finish or choose another output"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file that its previous holder unlinked after we opened it
            break
        os.close(fd)
    try:
        _recover(out)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def swap_in(new: Path, out: Path) -> None:
    """Replace `out` by the complete directory `new` (a sibling): the earlier `out` is removed only afterwards."""
    old = _beside(out, "old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    new.rename(out)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """An empty staging directory beside `out`; swapped in for `out` on success, removed on failure."""
    out = Path(out).expanduser()
    staging = _beside(out, "staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o777 & ~current_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)
