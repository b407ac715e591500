"""KnowMem: ROUGE-L F1 of the greedy few-shot answer to each question against the true answer (x100)."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.muse import QAItem
from qunlearn.evaluate.generate import generate_greedy
from qunlearn.evaluate.rouge import mean, rouge_l_f1

MAX_NEW_TOKENS = 32
STOP_STRINGS = ["\n\n", "\nQuestion", "Question:"]


def knowmem_prompt(icl: list[QAItem], question: str) -> str:
    """MUSE's prompt: every ICL pair as "Question: q\\nAnswer: a\\n\\n", then "Question: q\\nAnswer: "."""
    shots = "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n" for ex in icl)
    return shots + f"Question: {question}\nAnswer: "


def knowmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    qa: list[QAItem],
    icl: list[QAItem],
    batch_size: int = 16,
    progress: bool = True,
    max_new_tokens: int = MAX_NEW_TOKENS,
    desc: str = "KnowMem",
) -> dict:
    """{"value": mean score, "max_new_tokens", "items": [{question, answer, output, score}]}, scores x100."""
    prompts = [knowmem_prompt(icl, item.question) for item in qa]
    outputs = generate_greedy(model, tokenizer, prompts, max_new_tokens, STOP_STRINGS, batch_size, progress, desc)
    rows = [
        {
            "question": item.question,
            "answer": item.answer,
            "output": output,
            "score": 100 * rouge_l_f1(item.answer, output),
        }
        for item, output in zip(qa, outputs)
    ]
    return {"value": mean([r["score"] for r in rows]), "max_new_tokens": max_new_tokens, "items": rows}
