"""Load and save HF causal LMs with their tokenizers: safetensors only, remote code refused unless asked."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.errors import UserInputError
from qunlearn.fileio import current_umask
from qunlearn.models.integrity import check_files, check_model
from qunlearn.models.locate import locate_model
from qunlearn.outputs import swap_in

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map 'fp32' / 'bf16' / 'fp16' (or a torch.dtype) to a torch.dtype; unknown names list the valid ones."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; choose one of fp32, bf16, fp16") from None


def resolve_device(name: str | None = None) -> torch.device:
    """'auto' or None → cuda if available else cpu; otherwise the named device, which must exist here."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserInputError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserInputError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                "no visible GPU); use --device cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise UserInputError(f"--device {name}: only {count} CUDA device(s) visible")
    return device


# A directory holds a tokenizer when it has one of these (fast tokenizer, SentencePiece model, BPE vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer_config.json")


def has_tokenizer(path: str | Path) -> bool:
    """True unless `path` is a local directory without any tokenizer file (hub ids are assumed to have one)."""
    local = Path(path)
    return not local.is_dir() or any((local / name).is_file() for name in TOKENIZER_FILES)


def check_tokenizer(path: str | Path) -> None:
    """Fail in one line, naming the directory and the files looked for, when `path` holds no tokenizer."""
    if not has_tokenizer(path):
        raise UserInputError(
            f"{path}: no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); "
            f"give --tokenizer DIR (e.g. the base model's directory)"
        )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; one without a pad token pads with EOS (as MUSE does)."""
    check_tokenizer(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "fp32",
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    tokenizer: str | Path | None = None,
    need_tokenizer: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Load a causal LM and its tokenizer (from `tokenizer` if given, else from `path`), in eval mode.

    Weights must be safetensors, single or sharded (pickled `.bin` weights are never loaded); `trust_remote_code`
    stays off unless the caller asks for it. With `need_tokenizer=False`, a checkpoint without tokenizer files
    loads with tokenizer None (RTN, bitsandbytes and code flips need none). `device_map` ("auto", "cpu", ...) goes
    to from_pretrained, which then places the layers (over several GPUs and the CPU for a model larger than one
    device) instead of `device`. Every model passes `integrity.check_model` before it is returned.
    """
    source = locate_model(path)
    check_files(source, trust_remote_code)
    tokenizer_source = source if tokenizer is None else tokenizer
    if tokenizer is None and not need_tokenizer and not has_tokenizer(tokenizer_source):
        loaded_tokenizer = None
    else:
        loaded_tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
    model, info = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=parse_dtype(dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
        device_map=device_map,
    )
    check_model(model, info, source)
    if device_map is None:
        model.to(resolve_device(device))
    model.eval()
    return model, loaded_tokenizer


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    keep_other_files: bool = False,
    state_dict: dict | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """Save model (safetensors; sharded above `max_shard_size`, transformers' default if None) and tokenizer (if
    any) into one directory; an earlier one is replaced only once this is complete.

    With `keep_other_files` the files move into an existing `out_dir` one by one (each atomic), keeping the
    files already there that the model does not write (a run's records). `state_dict` replaces the model's
    own (the full weights gathered from a sharded FSDP / ZeRO-3 model).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700
        shards = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict, **shards)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if keep_other_files and out_dir.is_dir():
            for path in tmp.iterdir():
                os.replace(path, out_dir / path.name)
            tmp.rmdir()
        else:
            swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
