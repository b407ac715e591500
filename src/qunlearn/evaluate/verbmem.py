"""VerbMem(D_forget): ROUGE-L F1 of the greedy continuation of each forget prompt against its true text (x100)."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.muse import VerbMemItem
from qunlearn.evaluate.generate import decode, generate_greedy
from qunlearn.evaluate.rouge import mean, rouge_l_f1

MAX_NEW_TOKENS = 128


def reference_text(tokenizer: PreTrainedTokenizerBase, gt: str, max_tokens: int = MAX_NEW_TOKENS) -> str:
    """MUSE's reference: `gt` tokenized with special tokens, cut to `max_tokens` tokens, decoded back."""
    return decode(tokenizer, tokenizer(gt, add_special_tokens=True)["input_ids"][:max_tokens])


def verbmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[VerbMemItem],
    batch_size: int = 16,
    progress: bool = True,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """{"value": mean score, "max_new_tokens", "items": [{prompt, reference, output, score}]}, scores x100."""
    outputs = generate_greedy(
        model, tokenizer, [it.prompt for it in items], max_new_tokens, None, batch_size, progress, desc="VerbMem_f"
    )
    rows = []
    for item, output in zip(items, outputs):
        reference = reference_text(tokenizer, item.gt, max_new_tokens)
        rows.append(
            {
                "prompt": item.prompt,
                "reference": reference,
                "output": output,
                "score": 100 * rouge_l_f1(reference, output),
            }
        )
    return {"value": mean([r["score"] for r in rows]), "max_new_tokens": max_new_tokens, "items": rows}
