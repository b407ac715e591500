"""Keeping a quantizer's working memory small: big matrices are worked on a slice at a time, and memory freed on the
host is handed back to the operating system between layers (so that peak memory is what the work needs)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# The most elements a slice's temporary holds (16 MB in fp32, 32 MB in fp64).
SLICE_ELEMENTS = 2**22


def slices(length: int, other: int) -> list[slice]:
    """Consecutive slices over `length` indices of a matrix whose other dimension is `other` wide, each covering at
    most SLICE_ELEMENTS elements (and at least one index)."""
    step = max(1, SLICE_ELEMENTS // max(1, other))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


@functools.cache
def _glibc_malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


def release_freed_memory() -> None:
    """Hand memory that is free inside the process back to the OS (glibc keeps freed mid-sized tensors otherwise)."""
    trim = _glibc_malloc_trim()
    if trim is not None:
        trim(0)
