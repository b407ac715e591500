"""Batched greedy generation: left padding, explicit position ids and a KV cache, stop strings per sequence.

Every prompt gets exactly the tokens that one-at-a-time `model.generate(do_sample=False)` gives it (tested),
so batching changes speed, never scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.evaluate.fast_llama import LlamaDecoder, unsupported_reason
from qunlearn.models.utils import context_length


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop string (MUSE's `get_prefix_before_words_occur`)."""
    for stop in stop_strings:
        text = text.split(stop)[0]
    return text


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Decode as MUSE's reference does: special tokens skipped, then transformers' tokenization-space clean-up.

    The clean-up is applied explicitly because transformers 5 ignores `clean_up_tokenization_spaces=True` for
    BPE tokenizers, whereas the 4.x versions MUSE ran on applied it to every tokenizer.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return tokenizer.clean_up_tokenization(text)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], budget: int | None) -> list[list[int]]:
    """Tokenize with special tokens; prompts over `budget` tokens lose tokens on the left (a leading BOS is kept)."""
    encoded, cut = [], 0
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if budget is not None and len(ids) > budget:
            cut += 1
            keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
            ids = ids[:1] + ids[len(ids) - budget + 1 :] if keep_bos else ids[len(ids) - budget :]
        encoded.append(ids)
    if cut:
        warnings.warn(
            f"{cut} of {len(prompts)} prompts were longer than {budget} tokens (model context minus new "
            f"tokens) and were truncated from the left",
            stacklevel=3,
        )
    return encoded


def _is_stopped(tokenizer: PreTrainedTokenizerBase, ids: list[int], stop_strings: Sequence[str]) -> bool:
    """Whether the decoded continuation contains a stop string (decoding the whole text, as the cut does)."""
    text = decode(tokenizer, ids)
    return any(stop in text for stop in stop_strings)


class _HFDecoder:
    """Decode steps through the model's own forward and its `DynamicCache`: any architecture, any attention."""

    def __init__(self, model: PreTrainedModel, cache: Cache) -> None:
        self.model, self.cache = model, cache

    def select(self, index: torch.Tensor) -> None:
        """Keep only the cache rows in `index`."""
        for layer in self.cache.layers:
            layer.batch_select_indices(index)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (rows, 1, vocab) for one new token per row."""
        out = self.model(
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = out.cache
        return out.logits


def _decoder(model: PreTrainedModel, cache: Cache, steps: int) -> LlamaDecoder | _HFDecoder:
    """The lean Llama decoder where it is bit-identical to the model's forward, the HF forward otherwise."""
    return LlamaDecoder(model, cache, steps) if unsupported_reason(model) is None else _HFDecoder(model, cache)


@torch.inference_mode()  # cheaper per op than no_grad; nothing made here outlives the call but Python ints
def _greedy_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[list[int]],
    max_new_tokens: int,
    stop_strings: Sequence[str],
    masked_id: int | None = None,
) -> list[list[int]]:
    """Greedy-decode one left-padded batch; each row stops at EOS, a stop string or `max_new_tokens`.

    The prompt goes through the model's forward, then one decode step per new token on the rows still running
    (`_decoder`: the lean Llama step where it applies). Finished rows leave the batch (inputs, mask, positions and
    KV cache are index-selected), and under SDPA the step's attention mask is passed ready-made (the boolean padding
    mask transformers would build, or none once no running row is padded) so the model does not rebuild it from the
    2-D mask each step.
    """
    eos = model.generation_config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else eos or [])
    width = max(len(ids) for ids in batch)
    pad = tokenizer.pad_token_id or 0  # padded positions are masked out, so any valid id works
    device = model.device
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [int(t != masked_id) for t in ids] for ids in batch], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt starts at position 0, as when alone
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    logits = out.logits
    decoder = _decoder(model, out.cache, max_new_tokens - 1)
    keep_mask = mask.bool()  # (running rows, tokens so far): which cached positions are real tokens
    new: list[list[int]] = [[] for _ in batch]
    running = list(range(len(batch)))  # batch row of each row still in the forward
    padded = not bool(keep_mask.all())
    # transformers builds exactly this boolean mask for SDPA; other attention kernels get the 2-D mask as before
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    for step in range(max_new_tokens):
        next_tokens = logits[:, -1].argmax(-1)
        keep = []
        for i, token in enumerate(next_tokens.tolist()):
            ids = new[running[i]]
            ids.append(token)
            if token not in eos_ids and not (stop_strings and _is_stopped(tokenizer, ids, stop_strings)):
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(running):
            index = torch.tensor(keep, device=device)
            next_tokens, keep_mask, positions = next_tokens[index], keep_mask[index], positions[index]
            decoder.select(index)
            running = [running[i] for i in keep]
            padded = padded and not bool(keep_mask.all())
        keep_mask = torch.cat([keep_mask, keep_mask.new_ones(len(running), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_mask = None if not padded else keep_mask[:, None, None, :] if sdpa else keep_mask.long()
        logits = decoder(next_tokens[:, None], positions, step_mask)
    return new


def greedy_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[int]]:
    """New token ids per prompt (EOS included when produced); a row may stop once a stop string is decoded.

    Prompts are batched by length (longest first, so memory problems show at once) to keep padding small.
    """
    context = context_length(model)
    encoded = encode_prompts(tokenizer, prompts, None if context is None else context - max_new_tokens)
    return greedy_from_ids(model, tokenizer, encoded, max_new_tokens, stop_strings, batch_size, progress, desc)


def greedy_from_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[list[int]],
    max_new_tokens: int,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
    masked_id: int | None = None,
) -> list[list[int]]:
    """`greedy_token_ids` for prompts already tokenized (e.g. by a chat template), used as given; prompt tokens
    equal to `masked_id` are hidden from attention and skipped by the position ids (as `generate` does for them)."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1 (got {batch_size}, {max_new_tokens})")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[list[int]] = [[] for _ in encoded]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        for row, ids in zip(
            rows,
            _greedy_batch(model, tokenizer, [encoded[i] for i in rows], max_new_tokens, stop_strings or (), masked_id),
        ):
            results[row] = ids
    return results


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    stop_strings: list[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of `prompts` as text (MUSE decoding), each cut before its first stop string."""
    ids = greedy_token_ids(model, tokenizer, prompts, max_new_tokens, stop_strings, batch_size, progress, desc)
    return [cut_at_stop(decode(tokenizer, row), stop_strings or ()) for row in ids]
