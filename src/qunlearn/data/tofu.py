"""Load TOFU (question/answer pairs about fictitious authors) in the layout of the HF dataset `locuslab/TOFU`.

One file per config, `<config>.json` (JSON lines, as on the Hub; a JSON array or `.jsonl` also works):
forget01/05/10 and retain99/95/90 (training splits), `<forget split>_perturbed` and `retain_perturbed`
(question, answer, paraphrased_answer, perturbed_answer[]), `real_authors_perturbed` and
`world_facts_perturbed` (question, answer, perturbed_answer[]). These are the files OpenUnlearning's TOFU
evaluation reads. A source is a local directory (a Hub snapshot folder works as is) or, with the optional
`datasets` package and a network, a HF dataset id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qunlearn.errors import UserInputError
from qunlearn.fileio import read_text

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
DEFAULT_HF_ID = "locuslab/TOFU"


@dataclass(frozen=True)
class TofuItem:
    """One TOFU question; the optional fields are present where the config has them."""

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class TofuData:
    """The four evaluation sets of one forget split: what TOFU's forget quality and model utility read."""

    source: str
    forget_split: str
    forget: list[TofuItem]
    retain: list[TofuItem]
    real_authors: list[TofuItem]
    world_facts: list[TofuItem]

    def summary(self) -> dict[str, int]:
        """Question counts per evaluation set."""
        return {
            "forget": len(self.forget),
            "retain": len(self.retain),
            "real_authors": len(self.real_authors),
            "world_facts": len(self.world_facts),
        }


def plain_prompt(question: str) -> str:
    """The plain prompt (OpenUnlearning's phi-1.5 template): the answer follows it directly."""
    return f"Question: {question}\nAnswer: "


def _parse_rows(path: Path) -> list[Any]:
    """Rows of a JSON-lines file, or of a file holding one JSON array; errors name the file and line."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UserInputError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserInputError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    return rows


def _config_file(root: Path, config: str) -> Path:
    """`<config>.json` or `<config>.jsonl` under `root`; a missing config names both."""
    for suffix in (".json", ".jsonl"):
        if (root / f"{config}{suffix}").is_file():
            return root / f"{config}{suffix}"
    raise UserInputError(f"{root}: TOFU split '{config}' not found (expected {config}.json or {config}.jsonl)")


def _hf_rows(dataset_id: str, config: str) -> list[dict]:
    """Rows of one config of a HF dataset (needs `datasets` and, unless cached, a network)."""
    try:
        import datasets
    except ImportError:
        raise UserInputError(
            f"{dataset_id}: not a local directory, and loading a HF dataset needs the `datasets` "
            'package (pip install -e ".[hf]"); or pass a local TOFU directory'
        ) from None
    try:
        return list(datasets.load_dataset(dataset_id, name=config, split="train"))
    except (ConnectionError, OSError) as err:
        raise UserInputError(
            f"{dataset_id}: cannot load TOFU split '{config}' (offline or not on the Hub: "
            f"{type(err).__name__}); download it once and pass the local directory"
        ) from None
    except ValueError as err:  # datasets raises ValueError for an unknown config name
        raise UserInputError(f"{dataset_id}: TOFU split '{config}' not found ({err})") from None


def _text(row: Any, field: str, where: str, required: bool = True) -> str | None:
    if not isinstance(row, dict):
        raise UserInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    value = row.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        state = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise UserInputError(f"{where}: field '{field}' is {state}")
    return value


def _answers(row: dict, field: str, where: str) -> tuple[str, ...]:
    value = row.get(field)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        state = "missing" if value is None else "not a non-empty list of strings"
        raise UserInputError(f"{where}: field '{field}' is {state}")
    return tuple(value)


class TofuSource:
    """Where TOFU configs come from: a local directory, or a HF dataset id when no such directory exists."""

    def __init__(self, source: str | Path):
        self.source = str(source)
        local = Path(source).expanduser()
        self.root = local if local.is_dir() else None
        if self.root is None:
            if local.exists():
                raise UserInputError(f"{source}: expected a TOFU directory, got a file")
            if self.source.startswith((".", "/", "~")) or self.source.count("/") != 1:
                raise UserInputError(f"{source}: TOFU directory not found (nor a HF dataset id owner/name)")

    def rows(self, config: str) -> tuple[list[Any], str]:
        """The rows of `config` and a name for error messages (the file, or id:config)."""
        if self.root is not None:
            path = _config_file(self.root, config)
            rows, where = _parse_rows(path), str(path)
        else:
            rows, where = _hf_rows(self.source, config), f"{self.source}:{config}"
        if not rows:
            raise UserInputError(f"{where}: no questions")
        return rows, where

    def items(self, config: str, paraphrased: bool = False, perturbed: bool = False) -> list[TofuItem]:
        """The questions of `config`; `paraphrased`/`perturbed` require those fields on every row."""
        rows, where = self.rows(config)
        items = []
        for number, row in enumerate(rows, start=1):
            at = f"{where}: row {number}"
            items.append(
                TofuItem(
                    question=_text(row, "question", at),
                    answer=_text(row, "answer", at),
                    paraphrased_answer=_text(row, "paraphrased_answer", at) if paraphrased else None,
                    perturbed_answers=_answers(row, "perturbed_answer", at) if perturbed else (),
                )
            )
        return items


def load_tofu(source: str | Path = DEFAULT_HF_ID, forget_split: str = "forget10") -> TofuData:
    """The evaluation sets of `forget_split`: its perturbed file, retain_perturbed, real authors, world facts."""
    if forget_split not in FORGET_SPLITS:
        raise UserInputError(f"unknown TOFU forget split '{forget_split}'; choose one of {', '.join(FORGET_SPLITS)}")
    src = TofuSource(source)
    return TofuData(
        source=src.source,
        forget_split=forget_split,
        forget=src.items(f"{forget_split}_perturbed", paraphrased=True, perturbed=True),
        retain=src.items("retain_perturbed", paraphrased=True, perturbed=True),
        real_authors=src.items("real_authors_perturbed", perturbed=True),
        world_facts=src.items("world_facts_perturbed", perturbed=True),
    )


def load_training_split(source: str | Path, config: str) -> list[TofuItem]:
    """Question/answer pairs of a training config (forget10, retain90, full, ...)."""
    return TofuSource(source).items(config)
