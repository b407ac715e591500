"""PrivLeak: Min-40% membership-inference AUC on D_forget vs holdout, relative to the retrain model's AUC.

`PrivLeak = (AUC_model - AUC_retrain) / AUC_retrain x 100`; AUC_retrain is computed from the retrain
checkpoint and cached next to it, keyed by the texts, the settings and the checkpoint's weight files.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.muse import Corpus, load_corpus
from qunlearn.evaluate.logprobs import token_stats
from qunlearn.evaluate.mia import ATTACKS, attack_scores, mia_auc
from qunlearn.fileio import atomic_write_json, read_json
from qunlearn.models.io import load_model
from qunlearn.models.utils import context_length

ATTACK = "Min-40%"
CACHE_FILE = "qunlearn_retrain_auc.json"


def privleak_value(auc: float, auc_retrain: float) -> float:
    """(AUC - AUC_retrain) / AUC_retrain x 100: 0 = like retrain, negative = remembers, positive = over-unlearned."""
    if auc_retrain <= 0:
        raise ValueError(f"AUC_retrain must be > 0 to normalise PrivLeak (got {auc_retrain})")
    return (auc - auc_retrain) / auc_retrain * 100


def _encode_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Whole texts with special tokens; only what exceeds the model's context is cut (with a warning)."""
    context = context_length(model)
    encoded = [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
    cut = sum(context is not None and len(ids) > context for ids in encoded)
    if cut:
        warnings.warn(
            f"{cut} of {len(texts)} PrivLeak texts exceed the model context ({context} tokens) and "
            f"were cut to their first {context} tokens",
            stacklevel=3,
        )
    return [ids[:context] for ids in encoded]


def attack_aucs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict]]:
    """AUC of every attack (forget = 0, holdout = 1) and per-text scores, from one forward pass per batch."""
    splits = {"forget": corpus.privleak_forget, "holdout": corpus.privleak_holdout}
    texts = [text for split in splits.values() for text in split]
    stats = token_stats(model, _encode_texts(model, tokenizer, texts), batch_size, progress, desc="PrivLeak")
    labels = [name for name, split in splits.items() for _ in split]
    items = [
        {"split": label, "text": text} | attack_scores(text, s.logprobs, s.mu, s.sigma)
        for label, text, s in zip(labels, texts, stats)
    ]
    aucs = {
        attack: mia_auc(
            [it[attack] for it in items if it["split"] == "forget"],
            [it[attack] for it in items if it["split"] == "holdout"],
        )
        for attack in ATTACKS
    }
    return aucs, items


def privleak(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    auc_retrain: float,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """{"value": PrivLeak, "auc", "auc_retrain", "attack", "attack_aucs": {attack: AUC}, "items": per-text scores}."""
    aucs, items = attack_aucs(model, tokenizer, corpus, batch_size, progress)
    return {
        "value": privleak_value(aucs[ATTACK], auc_retrain),
        "auc": aucs[ATTACK],
        "auc_retrain": auc_retrain,
        "attack": ATTACK,
        "attack_aucs": aucs,
        "items": items,
    }


def _cache_key(retrain_dir: Path, corpus: Corpus, dtype: str) -> str:
    """Hash of everything AUC_retrain depends on: the checkpoint and its weight files, the two text sets, the attack,
    the dtype."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in retrain_dir.glob("*.safetensors"))
    blob = json.dumps(
        {
            "retrain": str(retrain_dir.resolve()),
            "forget": corpus.privleak_forget,
            "holdout": corpus.privleak_holdout,
            "attack": ATTACK,
            "dtype": dtype,
            "weights": weights,
        }
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def retrain_auc(
    retrain_dir: str | Path,
    corpus: Corpus | str | Path,
    dtype: str = "fp32",
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    device_map: str | None = None,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
) -> float:
    """AUC_retrain of the retrain checkpoint on the corpus' PrivLeak sets.

    With `cache_dir` (a directory the caller owns, e.g. a run's output) the value is read from / written to its
    cache file there; the retrain checkpoint itself is an input and is never written. `tokenizer`: a tokenizer
    directory for a retrain checkpoint saved without one; `trust_remote_code` as in `load_model`.
    """
    retrain_dir = Path(retrain_dir)
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    cache_path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    key = _cache_key(retrain_dir, corpus, dtype)
    cache = read_json(cache_path) if cache_path is not None and cache_path.is_file() else {}
    if key in cache:
        return cache[key]["auc"]
    model, tokenizer = load_model(
        retrain_dir,
        dtype=dtype,
        device=device,
        device_map=device_map,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
    )
    auc = attack_aucs(model, tokenizer, corpus, batch_size, progress)[0][ATTACK]
    if cache_path is None:
        return auc
    cache[key] = {"auc": auc, "attack": ATTACK, "dtype": dtype, "retrain": str(retrain_dir), "corpus": str(corpus.root)}
    try:
        atomic_write_json(cache_path, cache)
    except OSError as err:
        warnings.warn(f"{cache_path}: could not cache AUC_retrain ({err})", stacklevel=2)
    return auc
