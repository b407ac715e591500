"""Cheaper one-token decode steps for transformers' `LlamaForCausalLM`, bit-identical to its forward.

The step calls the model's own modules and transformers' own rotary and SDPA functions, in the order
`LlamaForCausalLM.forward` runs them, so every logit is the same (tested with torch.equal). It saves the generic
forward's per-call overhead (decorators, mask and cache bookkeeping) and its KV cache concatenation: the cache here
is preallocated once and each step writes one position in place, where `DynamicCache` copies the whole cache per
layer per step.
Models it is not verified for (see `unsupported_reason`) keep the HF forward.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Cache, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    apply_rotary_pos_emb,
)


def _runs_plain_forward(module: nn.Module) -> bool:
    """No hooks and no per-instance `forward`: the lean step, which bypasses this module's forward, skips nothing."""
    return not (module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module))


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why `LlamaDecoder` may not stand in for `model`'s forward, or None when it may.

    It mirrors exactly transformers' Llama classes under SDPA, in eval mode, on CPU (the only device its equality
    with the HF forward is tested on); modules it calls (norms, projections, MLP, rotary) may be anything.
    """
    if type(model) is not LlamaForCausalLM or type(model.model) is not LlamaModel:
        return f"{type(model).__name__} is not transformers' LlamaForCausalLM"
    if model.config._attn_implementation != "sdpa":
        return f"attention implementation {model.config._attn_implementation!r} (only 'sdpa' is mirrored)"
    if model.training:
        return "model in training mode"
    if model.device.type != "cpu":
        return f"device {model.device.type} (equality with the HF forward is tested on CPU only)"
    layers = model.model.layers[: model.config.num_hidden_layers]
    if any(type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention for layer in layers):
        return "decoder layers are not transformers' Llama layers"
    bypassed = [model, model.model, *layers, *(layer.self_attn for layer in layers)]
    if not all(_runs_plain_forward(module) for module in bypassed):
        return "hooks or a replaced forward on the model, its decoder layers or their attention"
    return None


class LlamaDecoder:
    """Decode steps after an HF prefill: keys and values live in one preallocated buffer, written in place.

    The buffer is (layer, key/value, row, kv head, position, head dim) with room for `steps` more positions; steps
    attend to a view of its filled part, which SDPA reads as it reads the concatenated cache (same values, same
    kernel).
    """

    def __init__(self, model: LlamaForCausalLM, cache: Cache, steps: int) -> None:
        self.model = model
        self.layers = model.model.layers[: model.config.num_hidden_layers]
        first = cache.layers[0].keys
        rows, heads, self.length, dim = first.shape
        self.kv = first.new_empty(len(self.layers), 2, rows, heads, self.length + steps, dim)
        for i, layer in enumerate(cache.layers):
            self.kv[i, 0, :, :, : self.length] = layer.keys
            self.kv[i, 1, :, :, : self.length] = layer.values

    def select(self, index: torch.Tensor) -> None:
        """Keep only the cache rows in `index` (ascending; rows that finished leave the batch).

        Kept rows move down in place, filled positions only: a fresh buffer costs a page fault per 4 KiB written.
        """
        for row, old in enumerate(index.tolist()):
            if row != old:  # row < old, and every row below old has already been moved or dropped
                self.kv[:, :, row, :, : self.length] = self.kv[:, :, old, :, : self.length]
        self.kv = self.kv[:, :, : len(index)]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (rows, 1, vocab) for one new token per row, as `model(input_ids=tokens, attention_mask=mask,
        position_ids=positions, cache=..., logits_to_keep=1).logits` gives them; `mask` is SDPA's 4-D boolean mask
        over all cached positions plus this one, or None when no row is padded."""
        new, self.length = self.length, self.length + 1
        hidden = self.model.model.embed_tokens(tokens)
        cos, sin = self.model.model.rotary_emb(hidden, position_ids=positions)
        shape = (*tokens.shape, -1)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            heads = (*tokens.shape, -1, attn.head_dim)
            query = attn.q_proj(x).view(heads).transpose(1, 2)
            key = attn.k_proj(x).view(heads).transpose(1, 2)
            value = attn.v_proj(x).view(heads).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            self.kv[i, 0, :, :, new : self.length] = key
            self.kv[i, 1, :, :, new : self.length] = value
            out, _ = sdpa_attention_forward(
                attn,
                query,
                self.kv[i, 0, :, :, : self.length],
                self.kv[i, 1, :, :, : self.length],
                mask,
                dropout=0.0,
                scaling=attn.scaling,
            )
            hidden = hidden + attn.o_proj(out.reshape(shape).contiguous())
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(self.model.model.norm(hidden))
