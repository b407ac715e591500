"""Load and validate a corpus in the MUSE layout (real MUSE-News/Books or the built-in synthetic one).

Layout (docs/architecture.md): raw/{forget,retain1,retain2,holdout}.{txt,json}, verbmem/forget.json,
knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}.json, privleak/{forget,retain,holdout}.json.
Every problem raises `CorpusError` naming the file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qunlearn.fileio import read_json, read_text

RAW_SPLITS_REQUIRED = ("forget", "retain1")
RAW_SPLITS_OPTIONAL = ("retain2", "holdout")


class CorpusError(ValueError):
    """A corpus file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class VerbMemItem:
    prompt: str
    gt: str


@dataclass(frozen=True)
class QAItem:
    question: str
    answer: str


@dataclass
class Corpus:
    """A MUSE-layout corpus in memory. Raw splits are lists of documents."""

    root: Path
    forget: list[str]
    retain1: list[str]
    retain2: list[str] = field(default_factory=list)
    holdout: list[str] = field(default_factory=list)
    verbmem_forget: list[VerbMemItem] = field(default_factory=list)
    knowmem_forget: list[QAItem] = field(default_factory=list)
    knowmem_retain: list[QAItem] = field(default_factory=list)
    knowmem_forget_icl: list[QAItem] = field(default_factory=list)
    knowmem_retain_icl: list[QAItem] = field(default_factory=list)
    privleak_forget: list[str] = field(default_factory=list)
    privleak_retain: list[str] = field(default_factory=list)
    privleak_holdout: list[str] = field(default_factory=list)

    @property
    def retain(self) -> list[str]:
        """All retain documents (retain1 then retain2)."""
        return self.retain1 + self.retain2

    def summary(self) -> dict[str, int]:
        """Item counts per split, for logs and reports."""
        return {
            "raw/forget docs": len(self.forget),
            "raw/retain docs": len(self.retain),
            "raw/holdout docs": len(self.holdout),
            "verbmem/forget": len(self.verbmem_forget),
            "knowmem/forget_qa": len(self.knowmem_forget),
            "knowmem/retain_qa": len(self.knowmem_retain),
            "privleak/forget": len(self.privleak_forget),
            "privleak/retain": len(self.privleak_retain),
            "privleak/holdout": len(self.privleak_holdout),
        }


def split_documents(text: str) -> list[str]:
    """Split raw text into documents at blank lines; whitespace-only documents are dropped."""
    docs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError) as err:
        raise CorpusError(str(err)) from None


def _load_raw(root: Path, split: str, required: bool) -> list[str]:
    """Read raw/<split>.txt (documents separated by blank lines) or raw/<split>.json (list of str / {text})."""
    txt, js = root / "raw" / f"{split}.txt", root / "raw" / f"{split}.json"
    others = [p for p in (root / "raw").glob(f"{split}.*") if p.suffix not in (".txt", ".json")]
    if txt.exists() and js.exists():
        raise CorpusError(f"{txt} and {js}: both exist; keep one raw file per split")
    if txt.exists():
        try:
            docs = split_documents(read_text(txt))
        except ValueError as err:
            raise CorpusError(str(err)) from None
        path = txt
    elif js.exists():
        data = _read_json(js)
        if not isinstance(data, list):
            raise CorpusError(f"{js}: expected a JSON list of documents, got {type(data).__name__}")
        docs = [_text_of(item, js, i) for i, item in enumerate(data)]
        docs = [d for d in docs if d.strip()]
        path = js
    elif others:
        raise CorpusError(f"{others[0]}: unsupported raw file type '{others[0].suffix}' (use .txt or .json)")
    elif required:
        raise CorpusError(f"{txt}: file not found (raw split '{split}' needs {split}.txt or {split}.json)")
    else:
        return []
    if not docs:
        raise CorpusError(f"{path}: split '{split}' is empty")
    return docs


def _text_of(item: Any, path: Path, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    raise CorpusError(f"{path}: item {index} must be a string or an object with a 'text' string")


def _load_records(path: Path, keys: tuple[str, ...]) -> list[dict[str, str]]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    if not data:
        raise CorpusError(f"{path}: split is empty")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise CorpusError(f"{path}: item {i} is {type(record).__name__}, expected an object with {keys}")
        for key in keys:
            if not isinstance(record.get(key), str):
                raise CorpusError(f"{path}: item {i} has no string field '{key}' (needs {', '.join(keys)})")
    return data


def _load_qa(path: Path) -> list[QAItem]:
    return [QAItem(r["question"], r["answer"]) for r in _load_records(path, ("question", "answer"))]


def _load_texts(path: Path) -> list[str]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON list of texts, got {type(data).__name__}")
    if not data:
        raise CorpusError(f"{path}: split is empty")
    return [_text_of(item, path, i) for i, item in enumerate(data)]


def load_corpus(root: str | Path) -> Corpus:
    """Load a MUSE-layout corpus directory, validating every file."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus directory not found")
    raw = {s: _load_raw(root, s, required=True) for s in RAW_SPLITS_REQUIRED}
    raw |= {s: _load_raw(root, s, required=False) for s in RAW_SPLITS_OPTIONAL}
    verbmem = [VerbMemItem(r["prompt"], r["gt"]) for r in _load_records(root / "verbmem/forget.json", ("prompt", "gt"))]
    return Corpus(
        root=root,
        **raw,
        verbmem_forget=verbmem,
        knowmem_forget=_load_qa(root / "knowmem/forget_qa.json"),
        knowmem_retain=_load_qa(root / "knowmem/retain_qa.json"),
        knowmem_forget_icl=_load_qa(root / "knowmem/forget_qa_icl.json"),
        knowmem_retain_icl=_load_qa(root / "knowmem/retain_qa_icl.json"),
        privleak_forget=_load_texts(root / "privleak/forget.json"),
        privleak_retain=_load_texts(root / "privleak/retain.json"),
        privleak_holdout=_load_texts(root / "privleak/holdout.json"),
    )
