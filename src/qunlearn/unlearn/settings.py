"""Every setting of one unlearning run, with the method's profile defaults filled in and validated."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields, replace

from transformers import PreTrainedModel

from qunlearn.errors import UserInputError
from qunlearn.models.io import parse_dtype
from qunlearn.models.utils import context_length
from qunlearn.unlearn.memory import OPTIMIZERS, REFERENCES
from qunlearn.unlearn.methods import PROFILES, Method, get_method


@dataclass(frozen=True)
class UnlearnSettings:
    """Every setting of one run; fields left None take the method's defaults for `profile` (see methods.py).

    `storage` (e.g. "bf16") rounds the weights to that dtype at the start and after every optimizer step while
    computing in `dtype`: the update-loss of bf16 weight storage without bf16 matmuls (slow on most CPUs).
    `reference`, `optim` and `gradient_checkpointing` trade memory for time (see unlearn/memory.py).
    `batch_size` is the per-device micro-batch; the effective batch is batch_size × grad_accum × processes
    (when batch_size is None it is derived from the profile's effective batch).
    """

    profile: str = "embedded"
    lr: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    max_length: int | None = None
    dtype: str | None = None
    storage: str | None = None
    seed: int = 0
    beta: float | None = None
    retain_weight: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    saliency_gamma: float | None = None
    saliency_percentile: float | None = None
    saliency_batches: int | None = None
    keep_checkpoints: bool = False
    reference: str = "model"
    optim: str = "adamw"
    gradient_checkpointing: bool = False

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> UnlearnSettings:
        """The settings `qunlearn unlearn`'s flags give (one flag per field), validated for its --method."""
        settings = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
        method = get_method(args.method)
        settings.resolve(method).validate(method)  # the trainer resolves again, for its number of processes
        return settings

    def resolve(self, method: Method, num_processes: int = 1) -> UnlearnSettings:
        """Fill every None with the method's default for `profile` (the per-device batch from the profile's
        effective batch); `validate` the result before use."""
        if self.profile not in PROFILES:
            raise ValueError(f"--profile: unknown profile '{self.profile}'; choose one of {', '.join(PROFILES)}")
        defaults = method.defaults(self.profile)
        filled = {
            f.name: getattr(defaults, f.name)
            for f in fields(defaults)
            if f.name in {g.name for g in fields(self)} and getattr(self, f.name) is None
        }
        if self.batch_size is None:
            filled["batch_size"] = max(1, defaults.batch_size // (self.grad_accum * num_processes))
        if self.saliency_gamma is not None:  # a γ given as a value replaces the default percentile
            filled.pop("saliency_percentile", None)
        return replace(self, **filled)

    def validate(self, method: Method) -> None:
        """Reject impossible values of resolved settings with the option's name."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserInputError(f"--{spec.name.replace('_', '-')} must be a finite number, got {value}")
        parse_dtype(self.dtype)
        if self.storage is not None and parse_dtype(self.storage).itemsize >= parse_dtype(self.dtype).itemsize:
            raise ValueError(f"--storage {self.storage} must be a narrower dtype than --dtype {self.dtype}")
        positive = {
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "beta": self.beta,
        }
        for name, value in positive.items():
            if value is None or not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        if self.retain_weight < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("--retain-weight, --weight-decay and --grad-clip must not be negative")
        saliency = (self.saliency_gamma, self.saliency_percentile, self.saliency_batches)
        if not method.sure and any(v is not None for v in saliency):
            raise ValueError(f"saliency options apply to SURE methods only, not '{method.name}'")
        if method.sure and (self.saliency_gamma is None) == (self.saliency_percentile is None):
            raise ValueError("SURE needs exactly one of --saliency-gamma or --saliency-percentile")
        if self.reference not in REFERENCES:
            raise ValueError(f"--reference: unknown '{self.reference}'; choose one of {', '.join(REFERENCES)}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"--optim: unknown '{self.optim}'; choose one of {', '.join(OPTIMIZERS)}")
        if self.reference != "model" and not method.needs_reference:
            raise ValueError(f"--reference {self.reference}: method '{method.name}' uses no reference model")
        if self.reference == "cached" and method.retain == "klr":
            raise ValueError(
                f"--reference cached holds NPO's log-likelihoods only, and method '{method.name}' has KLR, "
                "which needs the reference's distributions: use --reference bf16 or model"
            )
        if self.saliency_batches is not None and self.saliency_batches < 1:
            raise ValueError(f"--saliency-batches must be at least 1, got {self.saliency_batches}")


def check_context(max_length: int, model: PreTrainedModel) -> None:
    """--max-length must fit the model's context (`max_position_embeddings` in its config.json, in a multimodal
    model's text config)."""
    context = context_length(model)
    if context is not None and max_length > context:
        raise UserInputError(
            f"--max-length {max_length} exceeds the model's context of {context} tokens "
            "(max_position_embeddings in its config.json)"
        )
