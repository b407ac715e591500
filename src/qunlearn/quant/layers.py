"""Which projection layers a quantizer touches, how their weights are oriented, and where the decoder blocks are.

A projection layer is an `nn.Linear` (weight out × in) or a transformers `Conv1D` (GPT-2 family: weight
in × out). Quantizers group weights along the input dimension, so they read and write every projection weight
through `weight_matrix`, the one place that knows the orientation. The audit is on text: in a multimodal model
(Gemma-3 4B+, Llava-style `...ForConditionalGeneration`) only the language model and the output head count, and
its other parts (vision tower, projector) are left as they are (`outside_language_model`).
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from qunlearn.errors import UserInputError

DEFAULT_SKIP = ("lm_head",)
PROJECTION_TYPES = (nn.Linear, Conv1D)


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    """True when a module name matches a skip pattern (glob on the full name, or the exact last component)."""
    return any(fnmatch(name, pattern) or name.rsplit(".", 1)[-1] == pattern for pattern in skip)


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output projection (`lm_head`, GPT-NeoX's `embed_out`, ...), or None."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def architecture(model: nn.Module) -> str:
    """The model's architecture name for messages (config.architectures[0], else its class name)."""
    names = getattr(getattr(model, "config", None), "architectures", None)
    return names[0] if names else type(model).__name__


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) view: writing into it (copy_, mul_) writes the layer's weight."""
    if isinstance(layer, Conv1D):
        return layer.weight.T
    if isinstance(layer, nn.Linear):
        return layer.weight
    raise TypeError(f"{type(layer).__name__} is not a projection layer (nn.Linear or Conv1D)")


def in_features(layer: nn.Module) -> int:
    """Input width of a projection layer."""
    return weight_matrix(layer).shape[1]


def out_features(layer: nn.Module) -> int:
    """Output width of a projection layer."""
    return weight_matrix(layer).shape[0]


def language_model(model: nn.Module) -> tuple[str, nn.Module]:
    """The name and module of the part that reads text: a multimodal model's language model (its config has a text
    config of its own, `get_text_config()`), else the whole model (name "")."""
    config = getattr(model, "config", None)
    if config is None or config.get_text_config() is config:
        return "", model
    decoder = model.get_decoder()
    return next((name, module) for name, module in model.named_modules() if module is decoder)


def outside_language_model(model: nn.Module) -> dict[str, list[str]]:
    """A multimodal model's parts beside its language model and output head (e.g. "model.vision_tower",
    "model.multi_modal_projector"), each with its projection layers: a text-only audit leaves them in full precision.
    Empty for a text-only model."""
    lm_name, lm = language_model(model)
    if lm is model:
        return {}
    inside = {id(m) for m in lm.modules()} | {id(output_head(model))}
    lm_path = lm_name.split(".")
    parts: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if id(module) in inside or next(module.parameters(recurse=False), None) is None:
            continue
        path = name.split(".")
        shared = next((i for i, (a, b) in enumerate(zip(path, lm_path)) if a != b), len(lm_path))
        part = parts.setdefault(".".join(path[: shared + 1]), [])
        if isinstance(module, PROJECTION_TYPES):
            part.append(name)
    return parts


def unsupported_weights(model: nn.Module) -> list[str]:
    """Modules inside the decoder blocks holding a matrix weight that no quantizer here handles (e.g. fused MoE
    experts, custom remote-code layers): quantizing around them would silently leave them in full precision."""
    try:
        name, layers = decoder_layers(model)
    except UserInputError:
        return []
    found = []
    for index, block in enumerate(layers):
        for sub, module in block.named_modules():
            if isinstance(module, (*PROJECTION_TYPES, nn.Embedding)):
                continue
            if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
                found.append(f"{name}.{index}.{sub} ({type(module).__name__})")
    return found


def target_linears(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> dict[str, nn.Module]:
    """Every projection layer (nn.Linear, Conv1D) of `model` by qualified name, minus the skipped ones and those
    outside a multimodal model's language model (`outside_language_model`: the quantizer records them).

    The skip pattern "lm_head" also matches the output head under any other name (GPT-NeoX's `embed_out`). Raises
    UserInputError when a decoder block holds a matrix weight of another kind, or when nothing is left to quantize:
    a quantizer must never return a model it did not change without saying so.
    """
    unsupported = unsupported_weights(model)
    if unsupported:
        raise UserInputError(
            f"{architecture(model)}: no quantizer handles {unsupported[0]}"
            f"{f' and {len(unsupported) - 1} more' if len(unsupported) > 1 else ''}; "
            f"supported projection layers are nn.Linear and transformers Conv1D"
        )
    head = output_head(model) if is_skipped("lm_head", skip) else None
    outside = {name for names in outside_language_model(model).values() for name in names}
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, PROJECTION_TYPES) and not is_skipped(name, skip) and mod is not head and name not in outside
    }
    if not found:
        raise UserInputError(
            f"{architecture(model)}: no projection layer (nn.Linear, Conv1D) to quantize "
            f"outside the skipped ones ({', '.join(skip) or 'none'})"
        )
    return found


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of a HF causal LM's decoder blocks: the first list in its language model as long as
    the text config's num_hidden_layers."""
    lm_name, lm = language_model(model)
    config = getattr(model, "config", None)
    count = getattr(config.get_text_config() if config is not None else None, "num_hidden_layers", None)
    for name, mod in lm.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == count:
            return ".".join(filter(None, (lm_name, name))), mod
    raise UserInputError(
        f"{architecture(model)}: no ModuleList of {count} decoder blocks found (text config's num_hidden_layers)"
    )
