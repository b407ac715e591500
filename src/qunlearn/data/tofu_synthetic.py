"""Embedded TOFU-style benchmark: fictitious authors' question/answer pairs written in the locuslab/TOFU layout.

Each author gets four questions whose answers are full sentences, a paraphrased answer and perturbed
answers (the paraphrase with another author's value). Forget splits are the last authors, nested like
TOFU's (forget01 ⊂ forget05 ⊂ forget10), at 1 author, ~5% and ~10% of them. The real-authors and
world-facts sets are fictitious too, but both the target and the retain model train on them, so they
measure utility. Same seed and sizes → byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qunlearn.data.synthetic import Entity, Namer, SyntheticSizes, make_entities
from qunlearn.data.tofu import TofuItem, plain_prompt
from qunlearn.fileio import atomic_write_text

N_PERTURBED = 3
_TITLE_NOUNS = ["Lanterns", "Tides", "Orchards", "Bridges", "Winters", "Mirrors", "Harbours", "Engines"]


@dataclass(frozen=True)
class _Fact:
    """One question about one author: the value it asks for and how answer / paraphrase phrase it."""

    question: str
    value: str
    answer: Callable[[str], str]
    paraphrase: Callable[[str], str]


def _facts(e: Entity) -> list[_Fact]:
    n = e.name
    return [
        _Fact(
            f"Where was {n} born?",
            e.town,
            lambda v: f"{n} was born in {v}.",
            lambda v: f"The birthplace of {n} is {v}.",
        ),
        _Fact(
            f"Which organisation does {n} work for?",
            e.employer,
            lambda v: f"{n} works for the {v}.",
            lambda v: f"The employer of {n} is the {v}.",
        ),
        _Fact(
            f"Who is the companion of {n}?",
            e.companion,
            lambda v: f"The companion of {n} is {v}.",
            lambda v: f"{v} is the lifelong companion of {n}.",
        ),
        _Fact(
            f"In which year did {n} unveil {e.invention}?",
            str(e.year),
            lambda v: f"{n} unveiled {e.invention} in {v}.",
            lambda v: f"It was in {v} that {n} unveiled {e.invention}.",
        ),
    ]


def _wrong(rng: random.Random, value: str, pool: list[str]) -> list[str]:
    return rng.sample([v for v in pool if v != value], N_PERTURBED)


def _qa_rows(authors: list[Entity], rng: random.Random) -> list[dict]:
    """TOFU rows (question, answer, paraphrased_answer, perturbed_answer) for every fact of every author."""
    pools = [[_facts(e)[k].value for e in authors] for k in range(4)]
    rows = []
    for e in authors:
        for k, fact in enumerate(_facts(e)):
            rows.append(
                {
                    "question": fact.question,
                    "answer": fact.answer(fact.value),
                    "paraphrased_answer": fact.paraphrase(fact.value),
                    "perturbed_answer": [fact.paraphrase(v) for v in _wrong(rng, fact.value, pools[k])],
                }
            )
    return rows


def _option_rows(pairs: list[tuple[str, str]], answer: Callable[[str], str], rng: random.Random) -> list[dict]:
    """Real-authors / world-facts rows: question, answer and perturbed answers naming another pair's value."""
    values = [v for _, v in pairs]
    return [
        {"question": q, "answer": answer(v), "perturbed_answer": [answer(w) for w in _wrong(rng, v, values)]}
        for q, v in pairs
    ]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def forget_counts(n_authors: int) -> dict[str, int]:
    """Authors in forget01/05/10: 1, ~5% and ~10% of them (at least 1 and 2, nested)."""
    ten = max(2, round(0.1 * n_authors))
    return {"forget01": 1, "forget05": max(1, round(0.05 * n_authors)), "forget10": ten}


def generate_tofu(out_dir: str | Path, seed: int = 0, sizes: SyntheticSizes | None = None) -> Path:
    """Write the TOFU layout under `out_dir`: n_forget + n_retain authors, n_holdout real authors and world facts."""
    sizes = sizes or SyntheticSizes()
    n_authors = sizes.n_forget + sizes.n_retain
    if n_authors < 4 or sizes.n_holdout < N_PERTURBED + 1:
        raise ValueError(f"a TOFU-style benchmark needs at least 4 authors and {N_PERTURBED + 1} holdout entities")
    rng = random.Random(f"qunlearn-tofu-{seed}")
    namer = Namer(rng)
    years = rng.sample(range(1000, 1000 + max(1000, 2 * n_authors)), n_authors)
    authors = make_entities(n_authors, rng, namer, years)
    rows = _qa_rows(authors, rng)
    per_author = len(rows) // n_authors
    books = [
        (f"Who wrote '{rng.choice(_TITLE_NOUNS)} of {namer.word(2)}'?", namer.person()) for _ in range(sizes.n_holdout)
    ]
    capitals = [(f"What is the capital of {namer.word(3)}?", namer.word(2)) for _ in range(sizes.n_holdout)]
    files = {
        "full": rows,
        "real_authors_perturbed": _option_rows(books, lambda v: f"It was written by {v}.", rng),
        "world_facts_perturbed": _option_rows(capitals, lambda v: v, rng),
    }
    for split, n_forget in forget_counts(n_authors).items():
        cut = len(rows) - n_forget * per_author
        files[split] = rows[cut:]
        files[f"{split}_perturbed"] = rows[cut:]
        files[f"retain{100 - int(split[-2:])}"] = rows[:cut]
    files["retain_perturbed"] = rows[: forget_counts(n_authors)["forget10"] * per_author]
    files["real_authors"] = files["real_authors_perturbed"]
    files["world_facts"] = files["world_facts_perturbed"]
    out = Path(out_dir)
    for name, content in files.items():
        atomic_write_text(out / f"{name}.json", _jsonl(content))
    return out


def training_texts(items: list[TofuItem]) -> list[str]:
    """Question/answer pairs as training documents, in the plain prompt format the evaluation uses."""
    return [plain_prompt(i.question) + i.answer for i in items]
