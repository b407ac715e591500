"""Model shapes of real checkpoints, for memory and speed measurements on random weights (no downloads)."""

from __future__ import annotations

from transformers import LlamaConfig

# Llama-2-7B's layer shapes (meta-llama/Llama-2-7b-hf config.json).
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
LLAMA2_7B_BLOCKS = 32


def llama2_7b_config(num_layers: int = 2) -> LlamaConfig:
    """A LlamaConfig with Llama-2-7B's layer shapes and `num_layers` decoder blocks (2 blocks: 667M parameters)."""
    return LlamaConfig(num_hidden_layers=num_layers, **LLAMA2_7B)
