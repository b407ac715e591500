"""Plain helpers shared by several test files: tiny random models, the model families' configs and a check that
weights lie on a quantization grid."""

from __future__ import annotations

import torch
import transformers as tf
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from qunlearn.quant.activations import ActivationStore
from qunlearn.quant.base import capture_block_inputs


def random_llama(layers: int = 2) -> LlamaForCausalLM:
    """A random Llama (hidden 64, vocabulary 97) in eval mode, the same on every call (seed 0)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        vocab_size=97,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def one_block_with_inputs() -> tuple[nn.Module, dict[str, nn.Module], list]:
    """A random Llama's only decoder block, its Linear layers by full name, and its inputs for 4 random sequences."""
    model = random_llama(layers=1)
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    block = model.model.layers[0]
    linears = {f"model.layers.0.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    inputs = ActivationStore(device="cpu")
    capture_block_inputs(model, model.model.layers, list(ids.split(1)), inputs, ActivationStore(device="cpu"))
    return block, linears, inputs


# The model families' shared sizes (tests/test_architectures.py, tests/test_checkpoints.py).
SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}


def family_configs(vocab: int, ids: dict[str, int]) -> dict[str, tf.PretrainedConfig]:
    """One config per family; Llama with grouped-query attention and tied embeddings, Qwen2 with q/k/v bias."""
    common = SIZES | {"vocab_size": vocab} | ids
    return {
        "llama": tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True),
        "mistral": tf.MistralConfig(**common, num_key_value_heads=2),
        "qwen2": tf.Qwen2Config(**common, num_key_value_heads=2),
        "qwen3": tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=16),
        "phi": tf.PhiConfig(**common),
        "phi3": tf.Phi3Config(**common),
        "gemma": tf.GemmaConfig(**common, num_key_value_heads=2, head_dim=16),
        "gemma2": tf.Gemma2Config(**common, num_key_value_heads=2, head_dim=16),
        "gemma3": tf.Gemma3TextConfig(  # a sliding-window and a full-attention layer (own mask, rotary base)
            **common, num_key_value_heads=2, head_dim=16, layer_types=["sliding_attention", "full_attention"]
        ),
        "gpt_neox": tf.GPTNeoXConfig(**common),
        "opt": tf.OPTConfig(
            vocab_size=vocab,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
            **ids,
        ),
        "gpt2": tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids),
        "gemma3_vision": tf.Gemma3Config(  # Gemma-3 4B+: a SigLIP vision tower and projector beside the language model
            text_config=tf.Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=16),
            vision_config=tf.SiglipVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28
            ),
            mm_tokens_per_image=4,
        ),
    }


def on_grid(w: torch.Tensor, bits: int, group: int) -> bool:
    """True when every group of `group` input weights is a multiple of one step Δ = max|w| / c with an integer
    code c ≤ 2^(bits-1) at the maximum, all codes in [-2^(bits-1), 2^(bits-1) - 1]."""
    grouped = w.detach().double().reshape(w.shape[0], -1, group)
    amax = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30)
    found = torch.zeros(amax.shape, dtype=torch.bool)
    for c in range(1, 2 ** (bits - 1) + 1):
        codes = grouped * c / amax
        fits = ((codes - codes.round()).abs() < 1e-3).all(dim=-1, keepdim=True)
        fits &= (codes.round() >= -(2 ** (bits - 1))).all(-1, keepdim=True) & (codes.round() < 2 ** (bits - 1)).all(
            -1, keepdim=True
        )
        found |= fits
    return bool(found.all())
