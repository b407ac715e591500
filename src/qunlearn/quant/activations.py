"""Where a calibrated quantizer's activations wait between uses: on the compute device, in host memory, or on disk.

At realistic calibration sizes the activations, not the weights, dominate a quantizer's memory (a 7B block's inputs
at 128 × 512 tokens are 1 GB in fp32; AWQ's cached parent inputs several GB): offloading them keeps one sample's
worth on the compute device (and, with 'disk', in host memory) at the cost of copying each sample in when used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

OFFLOAD = ("none", "cpu", "disk")


class ActivationStore:
    """A list of calibration items (tensors, or tuples/lists/dicts holding tensors), one per sample, each handed out
    on the compute `device`. `offload` says where they wait: 'none' (as given: on the compute device), 'cpu' (host
    memory) or 'disk' (one file per item in a temporary directory, removed by `close` or when the store is freed).
    """

    def __init__(self, offload: str = "none", device: torch.device | str | None = None) -> None:
        if offload not in OFFLOAD:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD)}, got '{offload}'")
        self.offload = offload
        self.device = torch.device(device) if device is not None else None
        self._items: list[Any] = []
        self._directory = tempfile.TemporaryDirectory(prefix="qunlearn-activations-") if offload == "disk" else None

    def append(self, item: Any) -> None:
        """Add one sample's item at the end."""
        self._items.append(None)
        self[len(self._items) - 1] = item

    def __setitem__(self, index: int, item: Any) -> None:
        if self._directory is not None:
            path = Path(self._directory.name) / f"{index}.pt"
            torch.save(_moved(item, torch.device("cpu"), compact=True), path)
            self._items[index] = path
        elif self.offload == "cpu":
            self._items[index] = _moved(item, torch.device("cpu"))
        else:
            self._items[index] = item

    def __getitem__(self, index: int) -> Any:
        stored = self._items[index]
        if self._directory is not None:
            return torch.load(stored, map_location=self.device, weights_only=False)  # our own file, written above
        return stored if self.offload == "none" or self.device is None else _moved(stored, self.device)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        """Drop every item (and the files of a disk store)."""
        self._items = []
        if self._directory is not None:
            self._directory.cleanup()


def _moved(item: Any, device: torch.device, compact: bool = False) -> Any:
    """`item` with every tensor in it on `device`; with `compact`, a tensor viewing part of a larger storage is
    copied, so that saving it writes its own elements only (torch.save writes whole storages)."""
    if isinstance(item, torch.Tensor):
        moved = item.detach().to(device)
        if compact and moved.untyped_storage().nbytes() > moved.numel() * moved.element_size():
            moved = moved.clone()
        return moved
    if type(item) in (tuple, list):
        return type(item)(_moved(x, device, compact) for x in item)
    if type(item) is dict:
        return {key: _moved(value, device, compact) for key, value in item.items()}
    return item
