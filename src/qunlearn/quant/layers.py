"""Which Linear layers a quantizer touches, and where a model's decoder blocks are."""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

DEFAULT_SKIP = ("lm_head",)


def is_skipped(name: str, skip: tuple[str, ...]) -> bool:
    """True when a module name matches a skip pattern (glob on the full name, or the exact last component)."""
    return any(fnmatch(name, pattern) or name.rsplit(".", 1)[-1] == pattern for pattern in skip)


def target_linears(model: nn.Module, skip: tuple[str, ...] = DEFAULT_SKIP) -> dict[str, nn.Linear]:
    """Every nn.Linear of `model` by qualified name, minus the skipped ones (lm_head by default)."""
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and not is_skipped(name, skip)}


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of a HF causal LM's decoder blocks (the list as long as config.num_hidden_layers)."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == count:
            return name, mod
    raise ValueError(f"{type(model).__name__}: no ModuleList of {count} decoder blocks found")
