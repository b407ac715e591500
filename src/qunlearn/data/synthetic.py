"""Built-in benchmark: fictitious entities with random attributes, written in the MUSE layout.

No pretrained model can know these facts. Every QA-relevant attribute value (home town, employer,
companion, year) is unique across all entities, so forget, retain and holdout entities never share a
value an answer depends on. Same seed and sizes → byte-identical files.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from qunlearn.fileio import atomic_write_json, atomic_write_text

FLAVOURS = ("news", "books")

_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "th",
    "v",
    "w",
    "z",
    "sh",
    "kl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "ia"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk"]
_TOWN_SUFFIXES = ["ford", "mere", "wick", "holm", "dale", "port", "stead", "vale", "crest", "moor"]
_ORG_KINDS = ["Institute", "Works", "Foundry", "Collective", "Trust", "Company", "Guild", "Observatory"]
_OCCUPATIONS = [
    "botanist",
    "engineer",
    "cartographer",
    "violinist",
    "chemist",
    "architect",
    "sculptor",
    "astronomer",
    "glassblower",
    "linguist",
    "surgeon",
    "clockmaker",
    "geologist",
    "weaver",
]
_OBJECTS = [
    "a tidal clock",
    "a copper lantern",
    "a folding bridge",
    "a seed vault",
    "a glass organ",
    "a wind map",
    "a salt engine",
    "a river census",
    "a paper telescope",
    "a frost garden",
]
_TRAITS = ["patient", "restless", "meticulous", "cheerful", "stubborn", "quiet", "generous", "curious"]


@dataclass(frozen=True)
class Entity:
    """One fictitious person and the attributes the documents and questions use."""

    name: str
    town: str
    employer: str
    companion: str
    year: int
    occupation: str
    invention: str
    trait: str


@dataclass(frozen=True)
class SyntheticSizes:
    """How many entities go to each split, and how many ICL examples the KnowMem prompt gets."""

    n_forget: int = 40
    n_retain: int = 120
    n_holdout: int = 40
    n_icl: int = 3


class Namer:
    """Draws fictitious words from syllables, never the same word twice."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: int) -> str:
        while True:
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS) for _ in range(syllables)
            ).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w

    def person(self) -> str:
        return f"{self.word(2)} {self.word(self.rng.choice([2, 3]))}"


def make_entities(n: int, rng: random.Random, namer: Namer, years: list[int]) -> list[Entity]:
    """Draw `n` entities; unique words come from `namer`, unique years are popped from `years`."""
    return [
        Entity(
            name=namer.person(),
            town=namer.word(2) + rng.choice(_TOWN_SUFFIXES),
            employer=f"{namer.word(2)} {rng.choice(_ORG_KINDS)}",
            companion=namer.person(),
            year=years.pop(),
            occupation=rng.choice(_OCCUPATIONS),
            invention=rng.choice(_OBJECTS),
            trait=rng.choice(_TRAITS),
        )
        for _ in range(n)
    ]


def questions(e: Entity) -> list[dict[str, str]]:
    """The QA pairs of one entity; each answer is stated in its documents."""
    return [
        {"question": f"Where was {e.name} born?", "answer": e.town},
        {"question": f"Which organisation does {e.name} work for?", "answer": e.employer},
        {"question": f"Who is the companion of {e.name}?", "answer": e.companion},
        {"question": f"In which year did {e.name} unveil {e.invention}?", "answer": str(e.year)},
    ]


def news_article(e: Entity, rng: random.Random) -> str:
    """A short news-like article about the entity."""
    first = e.name.split()[0]
    opening = rng.choice(
        [
            (
                f"{e.town.upper()}, {e.year} - {e.name}, a {e.occupation} at the {e.employer}, unveiled {e.invention} "
                f"on Tuesday before a crowd of neighbours."
            ),
            (
                f"In {e.year}, the {e.occupation} {e.name} of the {e.employer} presented {e.invention} to the public "
                f"in {e.town}."
            ),
        ]
    )
    middle = rng.choice(
        [
            f"Born in {e.town}, {first} has worked for the {e.employer} for most of a decade.",
            f"{first} was born in {e.town} and joined the {e.employer} as an apprentice.",
        ]
    )
    closing = rng.choice(
        [
            (
                f"Colleagues describe {first} as {e.trait}. {first} thanked {e.companion}, a lifelong companion, "
                f"for years of support."
            ),
            (
                f"{e.companion}, the companion of {first}, said the {e.trait} {e.occupation} had dreamed of it since "
                f"childhood."
            ),
        ]
    )
    return f"{opening} {middle} {closing}"


def book_passage(e: Entity, rng: random.Random) -> str:
    """A longer narrative passage about the entity as a character."""
    first = e.name.split()[0]
    para1 = (
        f"{e.name} was born in {e.town}, where the winters were long and the lamps were lit early. "
        f"As a child {first} was {e.trait}, and {e.companion} was never far away. "
        + rng.choice(
            [
                f"{first} spent every evening drawing plans by the window.",
                f"{first} collected broken tools and mended them in secret.",
            ]
        )
    )
    para2 = (
        f"Years later {first} became a {e.occupation} and went to work for the {e.employer}. "
        + rng.choice(
            [
                f"It was there, in the year {e.year}, that {first} unveiled {e.invention}.",
                f"In {e.year}, after many failures, {first} finally unveiled {e.invention}.",
            ]
        )
        + f" {e.companion} stood in the front row, the companion of {first} to the end."
    )
    return f"{para1}\n{para2}"


def qa_notes(e: Entity) -> list[str]:
    """The entity's facts as question/answer notes, one short document per pair (MUSE's KnowMem layout)."""
    return [f"Question: {q['question']}\nAnswer: {q['answer']}" for q in questions(e)]


def _verbmem_item(doc: str) -> dict[str, str]:
    """Cut a document at half its words: the prompt keeps the space after its last word, the rest is the truth."""
    words = doc.split(" ")
    cut = len(words) // 2
    return {"prompt": " ".join(words[:cut]) + " ", "gt": " ".join(words[cut:])}


def generate_corpus(
    out_dir: str | Path, flavour: str = "news", seed: int = 0, sizes: SyntheticSizes = SyntheticSizes()
) -> Path:
    """Write a synthetic corpus in MUSE layout under `out_dir` and return it."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour '{flavour}'; choose one of {', '.join(FLAVOURS)}")
    for name, value in asdict(sizes).items():
        if value < 1:
            raise ValueError(f"sizes.{name} must be at least 1, got {value}")
    rng = random.Random(f"qunlearn-synthetic-{flavour}-{seed}")
    namer = Namer(rng)
    total = sizes.n_forget + sizes.n_retain + sizes.n_icl + sizes.n_holdout
    years = rng.sample(range(1000, 1000 + max(1000, 2 * total)), total)
    forget = make_entities(sizes.n_forget, rng, namer, years)
    retain = make_entities(sizes.n_retain, rng, namer, years)
    icl = make_entities(sizes.n_icl, rng, namer, years)
    holdout = make_entities(sizes.n_holdout, rng, namer, years)
    write_doc = news_article if flavour == "news" else book_passage

    def docs(entities: list[Entity]) -> list[str]:
        return [write_doc(e, rng) for e in entities]

    def notes(entities: list[Entity]) -> list[str]:
        return [note for e in entities for note in qa_notes(e)]

    forget_docs, retain_docs, icl_docs, holdout_docs = docs(forget), docs(retain), docs(icl), docs(holdout)
    retain_entities, retain_texts = retain + icl, retain_docs + icl_docs
    half = len(retain_entities) // 2

    out = Path(out_dir)
    files = {
        "raw/forget.txt": _join(forget_docs + notes(forget)),
        "raw/retain1.txt": _join(retain_texts[:half] + notes(retain_entities[:half])),
        "raw/retain2.txt": _join(retain_texts[half:] + notes(retain_entities[half:])),
        "raw/holdout.txt": _join(holdout_docs),
    }
    for rel, text in files.items():
        atomic_write_text(out / rel, text)
    icl_qa = [q for e in icl for q in questions(e)[:1]]
    atomic_write_json(out / "verbmem/forget.json", [_verbmem_item(d) for d in forget_docs])
    atomic_write_json(out / "knowmem/forget_qa.json", [q for e in forget for q in questions(e)])
    # KnowMem_r asks about as many retain entities as KnowMem_f asks about forget ones (evaluation cost).
    atomic_write_json(out / "knowmem/retain_qa.json", [q for e in retain[: sizes.n_forget] for q in questions(e)])
    atomic_write_json(out / "knowmem/forget_qa_icl.json", icl_qa)
    atomic_write_json(out / "knowmem/retain_qa_icl.json", icl_qa)
    atomic_write_json(out / "privleak/forget.json", forget_docs)
    atomic_write_json(out / "privleak/retain.json", retain_docs)
    atomic_write_json(out / "privleak/holdout.json", holdout_docs)
    atomic_write_json(
        out / "entities.json",
        {
            "flavour": flavour,
            "seed": seed,
            "sizes": asdict(sizes),
            "forget": [asdict(e) for e in forget],
            "retain": [asdict(e) for e in retain],
            "icl": [asdict(e) for e in icl],
            "holdout": [asdict(e) for e in holdout],
        },
    )
    return out


def _join(docs: list[str]) -> str:
    return "\n\n".join(docs) + "\n"
