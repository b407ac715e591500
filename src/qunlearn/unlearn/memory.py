"""Memory options of a run: where the reference comes from, which optimizer, gradient checkpointing.

The reference (NPO, KLR) is the frozen target. `model` holds a second copy in --dtype; `bf16` holds it in
bf16 without gradients (half of an fp32 copy); `cached` keeps no second model: NPO's reference sequence
log-likelihoods of every forget chunk are computed once before training and saved with the run (KLR
needs the reference's full next-token distributions on retain batches, so it cannot use the cache).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qunlearn.data.batches import collate
from qunlearn.errors import UserInputError
from qunlearn.unlearn.losses import sequence_logprob

REFERENCES = ("model", "bf16", "cached")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")


def make_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW (HF Trainer's defaults), or bitsandbytes' 8-bit / paged 8-bit AdamW (2 bytes of state per weight)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name not in OPTIMIZERS:
        raise UserInputError(f"--optim: unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserInputError(
            f"--optim {name} needs bitsandbytes (pip install 'qunlearn[bnb]'); without it use --optim adamw"
        ) from None
    cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def forget_logprobs(
    model: torch.nn.Module, chunks: list[list[int]], batch_size: int, pad_id: int, device: torch.device
) -> torch.Tensor:
    """log π(chunk) of every forget chunk under `model`, in chunk order, as float32 [n_chunks] (NPO's reference)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(chunks), batch_size):
        batch = collate(chunks[start : start + batch_size], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        out.append(sequence_logprob(logits, batch["labels"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)
