"""The forget set split in two: a relearning half (its source documents train the attack) and an evaluation half.

Rule: the first half (n // 2) of the VerbMem_f items and the first half of the KnowMem_f items are the relearn
side; the rest is the evaluation half, on which every attack (and the target/unlearned baselines) is scored.
The relearning slice is every forget document that mentions a relearn-side item (contains its VerbMem prompt,
its question or its answer, as whole words) and mentions no evaluation-side item (no VerbMem prompt or
continuation, question or answer of the evaluation half). So no training document contains any text the
evaluation asks for. The PrivLeak forget texts are restricted the same way: a text that is in the relearning
slice, or mentions a relearn-side item, is left out (after relearning on it, membership would be trivially
detectable). On the embedded corpus (one article per entity, VerbMem prompts cut from those articles,
four questions per entity in order, one Q/A note per question) this splits the forget entities in two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from qunlearn.data.muse import Corpus

SPLIT_RULE = (
    "first half of VerbMem_f and KnowMem_f items = relearn side, rest = evaluation half; relearning "
    "trains on forget documents that mention a relearn-side item and no evaluation-side item; PrivLeak "
    "uses the forget texts outside the relearning slice"
)


@dataclass(frozen=True)
class ForgetSplit:
    """The relearning documents and the corpus restricted to the evaluation half of the forget set."""

    relearn_docs: list[str]
    eval_corpus: Corpus
    counts: dict[str, int]


def _mentions(doc: str, markers: list[re.Pattern]) -> bool:
    return any(m.search(doc) for m in markers)


def _patterns(texts: list[str]) -> list[re.Pattern]:
    """Whole-word patterns for the non-empty marker texts."""
    return [re.compile(r"(?<!\w)" + re.escape(t.strip()) + r"(?!\w)") for t in dict.fromkeys(texts) if t.strip()]


def split_forget(corpus: Corpus) -> ForgetSplit:
    """Split `corpus`' forget set by the rule above (deterministic; see the module docstring)."""
    n_vm, n_qa = len(corpus.verbmem_forget) // 2, len(corpus.knowmem_forget) // 2
    relearn_vm, eval_vm = corpus.verbmem_forget[:n_vm], corpus.verbmem_forget[n_vm:]
    relearn_qa, eval_qa = corpus.knowmem_forget[:n_qa], corpus.knowmem_forget[n_qa:]
    wanted = _patterns(
        [v.prompt for v in relearn_vm] + [q.question for q in relearn_qa] + [q.answer for q in relearn_qa]
    )
    banned = _patterns(
        [v.prompt for v in eval_vm]
        + [v.gt for v in eval_vm]
        + [q.question for q in eval_qa]
        + [q.answer for q in eval_qa]
    )
    docs = [d for d in corpus.forget if _mentions(d, wanted) and not _mentions(d, banned)]
    privleak = [t for t in corpus.privleak_forget if not _mentions(t, wanted) and not any(t in d for d in docs)]
    eval_corpus = replace(corpus, verbmem_forget=eval_vm, knowmem_forget=eval_qa, privleak_forget=privleak)
    counts = {
        "relearn_verbmem": len(relearn_vm),
        "eval_verbmem": len(eval_vm),
        "relearn_knowmem": len(relearn_qa),
        "eval_knowmem": len(eval_qa),
        "relearn_docs": len(docs),
        "forget_docs": len(corpus.forget),
        "eval_privleak": len(privleak),
        "privleak_forget": len(corpus.privleak_forget),
    }
    return ForgetSplit(docs, eval_corpus, counts)
