"""The lean Llama decode step: logits bit-identical to the HF forward, and the HF forward wherever it does not apply."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from qunlearn.evaluate.fast_llama import LlamaDecoder, unsupported_reason
from qunlearn.evaluate.generate import _decoder, _HFDecoder, greedy_token_ids
from qunlearn.models.io import load_model


@pytest.fixture(scope="module")
def target(tiny_benchmark):
    return load_model(tiny_benchmark.target_dir)


def random_llama(**overrides) -> LlamaForCausalLM:
    """A tiny random Llama with grouped-query attention and linear RoPE scaling (features the target lacks)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=2048,
        max_position_embeddings=128,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
def assert_steps_equal_hf_forward(model: LlamaForCausalLM, prompts: list[list[int]]) -> None:
    """Left-padded prefill, then 6 greedy steps through both decoders; after step 2 the padded rows leave the batch
    (so the step mask goes from 4-D boolean to None) and after step 4 the first remaining row does."""
    width = max(len(p) for p in prompts)
    unpadded = sum(len(p) == width for p in prompts)
    assert 2 <= unpadded < len(prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]).bool()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=True, logits_to_keep=1)
    lean = LlamaDecoder(model, out.cache, 6)  # copies the prefill cache, which the HF decoder then extends
    hf = _HFDecoder(model, out.cache)
    tokens = out.logits[:, -1].argmax(-1)
    for step in range(6):
        if step in (2, 4):
            keep = torch.tensor([i for i in range(len(tokens)) if (mask[i].all() if step == 2 else i > 0)])
            tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
            lean.select(keep)
            hf.select(keep)
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_mask = None if mask.all() else mask[:, None, None, :]
        got, want = lean(tokens[:, None], positions, step_mask), hf(tokens[:, None], positions, step_mask)
        assert torch.equal(got, want), f"step {step}"
        tokens = want[:, -1].argmax(-1)
    assert step_mask is None and len(tokens) == unpadded - 1


def test_lean_steps_give_the_hf_forward_logits_bit_for_bit_on_the_target(target):
    model, tokenizer = target
    assert unsupported_reason(model) is None
    texts = ["Leisburcrest", "Question: who founded the", "The city council of", "In the spring of that year, the"]
    prompts = [tokenizer(t).input_ids for t in texts]
    longest = max(prompts, key=len)
    prompts.append(longest[:1] + longest[:0:-1])  # a second unpadded row: the longest prompt reversed after BOS
    assert_steps_equal_hf_forward(model, prompts)


def test_lean_steps_are_exact_with_grouped_query_attention_and_scaled_rope():
    prompts = [[1, 5, 9], [1, 7, 3, 8, 2, 6], [1, 4, 4, 4, 4, 4, 4], [1, 2, 3, 4, 5, 6, 7]]
    assert_steps_equal_hf_forward(random_llama(), prompts)


def test_generation_uses_the_lean_step_only_where_it_is_exact(target):
    model, _ = target
    cache = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=True).cache
    assert isinstance(_decoder(model, cache, 4), LlamaDecoder)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).eval()
    assert "GPT2LMHeadModel" in unsupported_reason(gpt2)
    assert "'eager'" in unsupported_reason(random_llama(attn_implementation="eager"))
    assert "training" in unsupported_reason(random_llama().train())
    hooked = random_llama()
    hooked.model.layers[1].register_forward_hook(lambda *_: None)
    assert "hooks" in unsupported_reason(hooked)
    assert isinstance(_decoder(gpt2, cache, 4), _HFDecoder)


def test_fallback_generation_still_equals_one_at_a_time(target):
    """An eager-attention Llama takes the HF forward, with the 2-D mask, and stays exact."""
    _, tokenizer = target
    model = random_llama(attn_implementation="eager")
    prompts = ["Leisburcrest", "Question: who founded the city council of"]
    batched = greedy_token_ids(model, tokenizer, prompts, max_new_tokens=5, batch_size=2, progress=False)
    for prompt, ids in zip(prompts, batched):
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(prompt_ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert ids == out[0, prompt_ids.shape[1] :].tolist()
