"""AWQ's scaling pairs per model family: which op's output is scaled down and which layers' inputs scaled up.

One table, `LAYOUTS`, keyed by the decoder block's class name (as llm-compressor keeps its AWQ mappings); a new
family is one line here. `block_mappings` resolves a block's pairs to its modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qunlearn.errors import UserInputError
from qunlearn.quant.layers import in_features, out_features


@dataclass
class Mapping:
    """A smooth op whose output feeds the balance layers, and the parent module whose output error is measured.

    `offset` is what the smooth op adds to its weight before multiplying (Gemma's RMSNorm scales by 1 + w). A fused
    smooth layer (qkv, gate_up) feeds the balance layers with its last rows only (v, up): those are the ones scaled.
    """

    smooth: nn.Module
    balances: list[nn.Module]
    parent: nn.Module
    offset: float = 0.0


@dataclass(frozen=True)
class Pair:
    """One scaling pair of a family, as module paths inside its decoder block ("" is the block itself).

    `parts` > 1: the smooth layer is fused, its output `parts` equal slices (q/k/v: 3, gate/up: 2) of which the last
    feeds the balance layers; the pair holds only when the slices are equal (not under grouped-query attention).
    """

    smooth: str
    balances: tuple[str, ...]
    parent: str
    parts: int = 1


LLAMA = (
    Pair("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    Pair("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    Pair("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    Pair("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)
# Gemma-2/3 put a pre_feedforward_layernorm between the attention's output norm and the MLP.
GEMMA = (*LLAMA[:2], Pair("pre_feedforward_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"), LLAMA[3])
# Phi-3 fuses q/k/v (v = the last rows) and gate/up (up = the second half).
PHI3 = (
    Pair("input_layernorm", ("self_attn.qkv_proj",), "self_attn"),
    Pair("self_attn.qkv_proj", ("self_attn.o_proj",), "self_attn.o_proj", parts=3),
    Pair("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
    Pair("mlp.gate_up_proj", ("mlp.down_proj",), "mlp.down_proj", parts=2),
)
# GPT-NeoX interleaves q/k/v per head and has GELU before its down projection: only the norms smooth.
# Each norm feeds one branch, so the pairs hold with and without use_parallel_residual.
NEOX = (
    Pair("input_layernorm", ("attention.query_key_value",), "attention"),
    Pair("post_attention_layernorm", ("mlp.dense_h_to_4h",), "mlp"),
)
# OPT (pre-norm variants): ReLU commutes with positive scales, so fc1 → fc2 folds.
OPT = (
    Pair("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    Pair("self_attn.v_proj", ("self_attn.out_proj",), "self_attn.out_proj"),
    Pair("final_layer_norm", ("fc1",), "fc1"),
    Pair("fc1", ("fc2",), "fc2"),
)
# Phi-1.5/Phi-2: attention and MLP read one norm's output in parallel (llm-compressor's Cohere layout), so that
# pair's parent is the whole block; GELU sits between fc1 and fc2.
PHI = (
    Pair("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1"), ""),
    Pair("self_attn.v_proj", ("self_attn.dense",), "self_attn.dense"),
)
# GPT-2 (Conv1D): c_attn's last third is v; GELU sits between c_fc and the MLP's c_proj.
GPT2 = (
    Pair("ln_1", ("attn.c_attn",), "attn"),
    Pair("attn.c_attn", ("attn.c_proj",), "attn.c_proj", parts=3),
    Pair("ln_2", ("mlp.c_fc",), "mlp"),
)

LAYOUTS: dict[str, tuple[tuple[Pair, ...], float]] = {  # decoder block class → (pairs, norm weight offset)
    **{
        name: (LLAMA, 0.0)
        for name in ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
    },
    "GemmaDecoderLayer": (LLAMA, 1.0),
    "Gemma2DecoderLayer": (GEMMA, 1.0),
    "Gemma3DecoderLayer": (GEMMA, 1.0),
    "PhiDecoderLayer": (PHI, 0.0),
    "Phi3DecoderLayer": (PHI3, 0.0),
    "GPTNeoXLayer": (NEOX, 0.0),
    "OPTDecoderLayer": (OPT, 0.0),
    "GPT2Block": (GPT2, 0.0),
}


def block_mappings(block: nn.Module, linears: dict[str, nn.Module]) -> list[Mapping] | None:
    """The scaling pairs of a decoder block from `LAYOUTS`, or None for a layout not in the table.

    A pair is kept when all its balance layers are selected and the smooth op's output (or, fused, each of its
    slices) is as wide as their input: v → o drops out under grouped-query attention, as in AutoAWQ and llm-compressor.
    """
    kind = type(block).__name__
    if kind not in LAYOUTS or (kind == "OPTDecoderLayer" and not _opt_pre_norm(block)):
        return None
    pairs, offset = LAYOUTS[kind]
    chosen = {id(m) for m in linears.values()}
    mappings = []
    for pair in pairs:
        try:
            smooth, parent = block.get_submodule(pair.smooth), block.get_submodule(pair.parent)
            balances = [block.get_submodule(path) for path in pair.balances]
        except AttributeError as exc:
            raise UserInputError(f"AWQ: {kind} lacks a module of its layout ({exc})") from None
        width = in_features(balances[0])
        fits = (
            width == smooth.weight.shape[0] if smooth.weight.dim() == 1 else out_features(smooth) == pair.parts * width
        )
        if fits and all(id(b) in chosen for b in balances):
            norm_offset = offset if smooth.weight.dim() == 1 else 0.0
            mappings.append(Mapping(smooth, balances, parent, norm_offset))
    return mappings


def _opt_pre_norm(block: nn.Module) -> bool:
    """OPT applies its layer norms before attention/MLP except in opt-350m (do_layer_norm_before=False)."""
    return bool(getattr(block, "do_layer_norm_before", True))


# Layers that compute queries or keys (alone or fused): AWQ's clip search leaves them alone.
QUERY_KEY_LAYERS = ("q_proj", "k_proj", "qkv_proj", "query_key_value", "c_attn")
