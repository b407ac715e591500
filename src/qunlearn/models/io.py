"""Load and save HF causal LMs with their tokenizers: safetensors only, remote code refused unless asked."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from qunlearn.errors import UserInputError
from qunlearn.fileio import current_umask

# qunlearn shows its own progress; transformers' per-load "Loading weights" bars would drown it.
hf_logging.disable_progress_bar()

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map 'fp32' / 'bf16' / 'fp16' (or a torch.dtype) to a torch.dtype; unknown names list the valid ones."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; choose one of fp32, bf16, fp16") from None


def resolve_device(name: str | None = None) -> torch.device:
    """'auto' or None → cuda if available else cpu; otherwise the named device."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# A directory holds a tokenizer when it has one of these (fast tokenizer, SentencePiece model, BPE vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer_config.json")


def has_tokenizer(path: str | Path) -> bool:
    """True unless `path` is a local directory without any tokenizer file (hub ids are assumed to have one)."""
    local = Path(path)
    return not local.is_dir() or any((local / name).is_file() for name in TOKENIZER_FILES)


def require_tokenizer(path: str | Path) -> None:
    """Fail in one line, naming the directory and the files looked for, when `path` holds no tokenizer."""
    if not has_tokenizer(path):
        raise UserInputError(f"{path}: no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); "
                             f"give --tokenizer DIR (e.g. the base model's directory)")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; one without a pad token pads with EOS (as MUSE does)."""
    require_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "fp32",
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    tokenizer: str | Path | None = None,
    need_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a causal LM and its tokenizer (from `tokenizer` if given, else from `path`), in eval mode.

    Weights must be safetensors, single or sharded (pickled `.bin` weights are never loaded); `trust_remote_code`
    stays off unless the caller asks for it. With `need_tokenizer=False`, a checkpoint without tokenizer files
    loads with tokenizer None (RTN, bitsandbytes and code flips need none).
    """
    local = Path(path)
    if local.exists() and not local.is_dir():
        raise ValueError(f"{local}: expected a model directory, got a file")
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local}: not a HF checkpoint (no config.json)")
        if not any(local.glob("*.safetensors")) and not (local / "model.safetensors.index.json").is_file():
            raise ValueError(f"{local}: no .safetensors weights (pickled weights are never loaded)")
    elif str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path}: model directory not found")
    source = path if tokenizer is None else tokenizer
    if tokenizer is None and not need_tokenizer and not has_tokenizer(source):
        loaded_tokenizer = None
    else:
        loaded_tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=parse_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.to(resolve_device(device)).eval()
    return model, loaded_tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, out_dir: str | Path,
               max_shard_size: str | int | None = None) -> Path:
    """Save model (safetensors; sharded above `max_shard_size`, transformers' default if None) and tokenizer
    (if any) into one directory, replacing it atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700
        shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(tmp, safe_serialization=True, **shards)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
