"""SURE: module-level saliency of the forget loss at the original weights, the threshold γ, and the update mask.

A *module* is every submodule that owns parameters directly: each Linear, each embedding, each norm
(for Llama: q/k/v/o/gate/up/down projections, embed_tokens, lm_head, input/post-attention/final norms; in a
multimodal model only those of its language model and output head).
Score `s_i = ‖∇_{θ_i} L_forget(θ_o; D_f)‖_F` over all parameters the module owns; a module is salient when
`s_i ≥ γ`. The mask is enforced on the update: parameters of non-salient modules get
`requires_grad=False`, so they receive no gradient and are left out of the optimizer (no weight decay,
no momentum), and stay bit-identical to the target. The released SURE code masked output rows in a hook
the HF Trainer never calls; this is the paper's module-level version, enforced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from qunlearn.errors import NumericalError
from qunlearn.quant.layers import outside_language_model
from qunlearn.unlearn.losses import LossTerm


@dataclass(frozen=True)
class Saliency:
    """Scores per module, the threshold γ (and the percentile it came from, if any), and the selected modules."""

    scores: dict[str, float]
    gamma: float
    percentile: float | None
    selected: list[str]
    batches: int

    def to_json(self) -> dict:
        """Plain dict for saliency.json, with counts for a quick look."""
        return asdict(self) | {"n_modules": len(self.scores), "n_selected": len(self.selected)}


def module_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Every module that owns parameters directly, with those parameters (SURE's unit of selection); a multimodal
    model's parts beside its language model (vision tower, projector) are left out: text moves none of them, and their
    zero scores would shift a percentile's γ."""
    beside = tuple(f"{part}." for part in outside_language_model(model))
    owners = {}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and not f"{name}.".startswith(beside):
            owners[name] = own
    return owners


def module_scores(
    model: nn.Module, batches: Sequence[dict[str, torch.Tensor]], forget_term: LossTerm
) -> dict[str, float]:
    """Frobenius norm of the forget-loss gradient per module at the current weights, averaged over `batches`.

    At θ_o the model *is* the reference, so reference logits are the model's own detached logits: exact
    for NPO and one forward pass cheaper than running a second model.
    """
    owners = module_parameters(model)
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        (forget_term(logits, batch["labels"], logits.detach()) / len(batches)).backward()
    scores = {}
    for name, params in owners.items():
        squares = sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None)
        scores[name] = math.sqrt(squares)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


def threshold(scores: dict[str, float], gamma: float | None = None, percentile: float | None = None) -> float:
    """γ given directly, or the score at `percentile` (0–100, linear interpolation) of the module scores."""
    if (gamma is None) == (percentile is None):
        raise ValueError("SURE needs exactly one of gamma (a score) or percentile (0-100)")
    if gamma is not None:
        if gamma <= 0 or not math.isfinite(gamma):
            raise ValueError(f"SURE gamma must be a positive number, got {gamma}")
        return float(gamma)
    if not 0 <= percentile <= 100:
        raise ValueError(f"SURE percentile must lie in [0, 100], got {percentile}")
    return float(np.percentile(list(scores.values()), percentile))


def compute_saliency(
    model: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    forget_term: LossTerm,
    gamma: float | None = None,
    percentile: float | None = None,
) -> Saliency:
    """Score every module on the forget batches and select those with s_i ≥ γ (at least one must pass)."""
    scores = module_scores(model, batches, forget_term)
    bad = [name for name, s in scores.items() if not math.isfinite(s)]
    if bad:
        raise NumericalError(f"SURE saliency: gradient norm is not finite for module(s) {', '.join(bad[:5])}")
    gamma_value = threshold(scores, gamma, percentile)
    selected = [name for name, s in scores.items() if s >= gamma_value]
    if not selected:
        raise ValueError(f"SURE gamma {gamma_value:.4g} selects no module (largest score {max(scores.values()):.4g})")
    return Saliency(scores, gamma_value, percentile, selected, len(batches))


def apply_mask(model: nn.Module, selected: Sequence[str]) -> list[nn.Parameter]:
    """Freeze every parameter not owned by a selected module; returns the trainable parameters.

    A parameter shared by several modules (tied embeddings) stays trainable if any owner is selected.
    """
    owners = module_parameters(model)
    unknown = sorted(set(selected) - set(owners))
    if unknown:
        raise ValueError(f"saliency names module(s) the model does not have: {', '.join(unknown[:5])}")
    trainable = {id(p): p for name in selected for p in owners[name]}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    return list(trainable.values())
