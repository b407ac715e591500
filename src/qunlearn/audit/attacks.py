"""The attack battery: quantization (per calibration set), relearning (fine-tuning on a forget slice), precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.batches import iterate_batches, tokenize_documents
from qunlearn.models.io import parse_dtype
from qunlearn.quant.calibration import CALIBRATE_ON
from qunlearn.quant.registry import get_quantizer

QUANT_ATTACKS = ("rtn8", "rtn4", "rtn3", "gptq4", "awq4", "bnb-int8", "bnb-fp4", "bnb-nf4")
PRECISION_ATTACKS = ("fp16", "bf16")
ATTACK_NAMES = (*QUANT_ATTACKS, "relearn", *PRECISION_ATTACKS)


@dataclass(frozen=True)
class Attack:
    """One attack: `name` as reported (e.g. 'gptq4@forget'), its kind and parameters."""

    name: str
    kind: str  # "quantization", "relearning" or "precision"
    quantizer: str | None = None
    calibration: str | None = None
    dtype: str | None = None  # a precision attack's dtype; None: the audit's


def expand_attacks(names: list[str] | None, dtype: str = "fp32") -> tuple[list[Attack], list[dict]]:
    """Attack names → attacks; calibrated quantizers run once per calibration set ('gptq4@forget' picks one).

    With no names, every attack is run and unavailable quantizers are skipped (returned with the reason), as is
    the precision attack to the audit's own `dtype` (its cast would change nothing); either named explicitly is an
    error.
    """
    explicit = names is not None
    attacks, skipped = [], []
    for name in names or ATTACK_NAMES:
        base, _, calibration = name.partition("@")
        if base == "relearn" and not calibration:
            attacks.append(Attack("relearn", "relearning"))
        elif base in PRECISION_ATTACKS and not calibration:
            if parse_dtype(base) == parse_dtype(dtype):
                reason = f"the audit loads every model in {base} (--dtype {dtype}): the cast changes nothing"
                skipped.append(_unavailable(name, reason, explicit))
            else:
                attacks.append(Attack(base, "precision", dtype=base))
        elif base in QUANT_ATTACKS:
            quantizer = get_quantizer(base)
            reason = quantizer.unavailable_reason()
            if reason:
                skipped.append(_unavailable(name, reason, explicit))
                continue
            if calibration and (calibration not in CALIBRATE_ON or not quantizer.needs_calibration):
                raise ValueError(
                    f"attack {name}: calibration suffix must be @generic or @forget, "
                    f"and only for quantizers that calibrate (gptq4, awq4)"
                )
            if quantizer.needs_calibration:
                for calib in [calibration] if calibration else CALIBRATE_ON:
                    attacks.append(Attack(f"{base}@{calib}", "quantization", base, calib))
            else:
                attacks.append(Attack(base, "quantization", base))
        else:
            raise ValueError(
                f"unknown attack '{name}'; choose from {', '.join(ATTACK_NAMES)} (gptq4/awq4 take @generic or @forget)"
            )
    return attacks, skipped


def _unavailable(name: str, reason: str, explicit: bool) -> dict:
    """The skipped-attack record of an attack that cannot run; named explicitly, it is an error instead."""
    if explicit:
        raise ValueError(f"attack {name}: {reason}")
    return {"name": name.partition("@")[0], "reason": reason}


def relearn(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: list[str],
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 256,
    seed: int = 0,
) -> PreTrainedModel:
    """`steps` AdamW steps of plain next-token cross-entropy on `docs` (cycled, shuffled with `seed`), in place."""
    if not docs:
        raise ValueError("relearning has no forget documents to train on (see the split rule in `qunlearn audit -h`)")
    seqs = tokenize_documents(tokenizer, docs, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    done = 0
    while done < steps:
        for batch in iterate_batches(seqs, batch_size, pad_id, generator):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    model.eval()
    return model
