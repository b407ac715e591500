"""Greedy memorisation checks: how much of a ground-truth continuation greedy decoding reproduces, token by token.

Used to check that the embedded models memorised their training text (`prepare`) and by the fidelity study.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qunlearn.data.muse import Corpus


def greedy_memorisation(model, tokenizer, corpus: Corpus, n_items: int = 5, n_tokens: int = 32) -> float:
    """Share of the first `n_tokens` ground-truth tokens that greedy decoding reproduces, over forget prompts."""
    return greedy_token_match(model, tokenizer, [(i.prompt, i.gt) for i in corpus.verbmem_forget[:n_items]], n_tokens)


def greedy_token_match(model, tokenizer, probes: Sequence[tuple[str, str]], n_tokens: int = 32) -> float:
    """Share of the first `n_tokens` tokens of each truth that greedy decoding after its prompt reproduces."""
    hits = total = 0
    for prompt_text, truth in probes:
        prompt = tokenizer(prompt_text, return_tensors="pt")
        want = tokenizer(truth, add_special_tokens=False)["input_ids"][:n_tokens]
        with torch.no_grad():
            out = model.generate(
                **prompt, max_new_tokens=len(want), do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        got = out[0, prompt["input_ids"].shape[1] :].tolist()
        hits += sum(g == w for g, w in zip(got, want))
        total += len(want)
    return hits / max(1, total)
