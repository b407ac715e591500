"""Small model utilities shared by training and evaluation: a model's context length, emulated weight storage."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import PreTrainedModel

from qunlearn.models.io import parse_dtype


def context_length(model: PreTrainedModel) -> int | None:
    """The model's maximum sequence length (a multimodal model's: its language model's), or None when its config
    does not state one."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


@torch.no_grad()
def round_to_storage(params: Iterable[torch.Tensor], storage: str) -> None:
    """Round parameters in place to the values `storage` (e.g. bf16) can hold, keeping their dtype."""
    dtype = parse_dtype(storage)
    for p in params:
        p.copy_(p.to(dtype))
