"""The embedded models: a Llama built from a preset and trained from scratch on corpus text."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from qunlearn.config import ModelShape, TrainSettings
from qunlearn.data.batches import iterate_batches, pack_documents


def build_model(shape: ModelShape, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A randomly initialised LlamaForCausalLM of the given shape (untied embeddings, like Llama-2)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lr_at(step: int, total: int, settings: TrainSettings) -> float:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, int(settings.warmup_fraction * total))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_from_scratch(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    settings: TrainSettings,
    seed: int,
    desc: str = "train",
    progress: bool = True,
) -> list[float]:
    """Train on `docs`, packed anew each epoch, until memorised; returns the mean training loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    n_chunks = len(pack_documents(tokenizer, docs, settings.max_length, torch.Generator()))  # same every epoch
    steps_per_epoch = math.ceil(n_chunks / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=settings.weight_decay
    )
    model.train()
    epoch_losses, step = [], 0
    with tqdm(total=total, desc=desc, disable=not progress, unit="step") as bar:
        for _ in range(settings.epochs):
            running, chunks = 0.0, pack_documents(tokenizer, docs, settings.max_length, generator)
            for batch in iterate_batches(chunks, settings.batch_size, tokenizer.pad_token_id, generator):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, settings)
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                running += loss.item()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            epoch_losses.append(running / steps_per_epoch)
    model.eval()
    return epoch_losses
