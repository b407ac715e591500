"""Evaluation speed: qunlearn's batched metrics vs a one-prompt-at-a-time loop (how MUSE's reference code runs).

Both run side by side in one process on the embedded target (same threads, same load, both after one untimed
warm-up of every code path); the script checks the scores are identical and prints the speed ratio. Usage: python benchmarks/eval_speed.py [--bench DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from qunlearn.data.muse import load_corpus
from qunlearn.evaluate import evaluate_model
from qunlearn.evaluate.generate import cut_at_stop, decode, generate_greedy
from qunlearn.evaluate.knowmem import STOP_STRINGS, knowmem_prompt
from qunlearn.evaluate.logprobs import token_stats
from qunlearn.evaluate.mia import mia_auc, min_k
from qunlearn.evaluate.privleak import privleak_value
from qunlearn.evaluate.rouge import mean, rouge_l_f1
from qunlearn.evaluate.verbmem import reference_text
from qunlearn.models.io import load_model
from qunlearn.prepare import prepare_benchmark

METRICS = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak"]


@torch.no_grad()
def one_at_a_time(model, tokenizer, corpus, auc_retrain: float) -> dict[str, float]:
    """The reference loop: `model.generate` per prompt, one forward per PrivLeak text (MUSE's decoding via `decode`)."""

    def generate(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return decode(tokenizer, out[0, ids.shape[1] :])

    def knowmem(qa, icl) -> float:
        return mean(
            [
                100 * rouge_l_f1(q.answer, cut_at_stop(generate(knowmem_prompt(icl, q.question), 32), STOP_STRINGS))
                for q in qa
            ]
        )

    def min40(text: str) -> float:
        ids = torch.tensor([tokenizer.encode(text)])
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        return min_k(logp.gather(-1, ids[0, 1:, None]).squeeze(-1).numpy())

    auc = mia_auc([min40(t) for t in corpus.privleak_forget], [min40(t) for t in corpus.privleak_holdout])
    return {
        "verbmem_f": mean(
            [
                100 * rouge_l_f1(reference_text(tokenizer, it.gt), generate(it.prompt, 128))
                for it in corpus.verbmem_forget
            ]
        ),
        "knowmem_f": knowmem(corpus.knowmem_forget, corpus.knowmem_forget_icl),
        "knowmem_r": knowmem(corpus.knowmem_retain, corpus.knowmem_retain_icl),
        "privleak": privleak_value(auc, auc_retrain),
    }


@torch.no_grad()
def warm_up(model, tokenizer, corpus) -> None:
    """Untimed first calls of every code path both sides use (first torch ops, allocator, tokenizer), so neither
    side pays the process's one-time start-up costs; without this the side timed first (qunlearn) pays them."""
    prompts = [it.prompt for it in corpus.verbmem_forget[:2]]
    generate_greedy(
        model, tokenizer, [prompts[0], prompts[-1][: len(prompts[-1]) // 2]], 4, STOP_STRINGS, progress=False
    )
    ids = tokenizer(prompts[0], return_tensors="pt", add_special_tokens=True).input_ids
    model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    token_stats(model, [tokenizer.encode(t) for t in corpus.privleak_forget[:2]], progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bench",
        default=str(Path(tempfile.gettempdir()) / "qunlearn-bench-tiny"),
        help="benchmark dir, prepared there if missing (default: in the temp dir)",
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    bench = prepare_benchmark(args.bench, preset=args.preset, progress=False)
    corpus = load_corpus(bench.corpus_dir)
    model, tokenizer = load_model(bench.target_dir)
    auc_retrain = 0.5  # any fixed value: both sides use it, and speed does not depend on it
    print(
        f"torch threads {torch.get_num_threads()}; items: verbmem {len(corpus.verbmem_forget)}, knowmem_f "
        f"{len(corpus.knowmem_forget)}, knowmem_r {len(corpus.knowmem_retain)}, privleak "
        f"{len(corpus.privleak_forget) + len(corpus.privleak_holdout)}"
    )
    warm_up(model, tokenizer, corpus)
    start = time.perf_counter()
    ours = evaluate_model(model, tokenizer, corpus, METRICS, auc_retrain, args.batch_size, progress=False)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = one_at_a_time(model, tokenizer, corpus, auc_retrain)
    ref_s = time.perf_counter() - start
    print(f"{'metric':<10} {'qunlearn':>10} {'seconds':>8} {'one-by-one':>11}")
    for name in METRICS:
        print(f"{name:<10} {ours[name]['value']:10.4f} {ours[name]['seconds']:8.2f} {reference[name]:11.4f}")
    identical = all(ours[name]["value"] == reference[name] for name in METRICS)
    print(f"scores identical: {identical}")
    print(
        f"qunlearn {ours_s:.1f} s vs one-at-a-time {ref_s:.1f} s: {ref_s / ours_s:.1f}x faster "
        f"(batch size {args.batch_size}, measured side by side in one process)"
    )
    if not identical:
        raise SystemExit("scores differ")


if __name__ == "__main__":
    main()
