"""Calibrate the embedded default learning rates: per baseline method and LR, greedy memorisation after unlearning.

For each method and LR it unlearns the embedded target with the method's embedded defaults (only the LR
changed) and prints the greedy token match on forget prompts (VerbMem-like, should fall towards the
retrain model's level) and on retain continuations (utility, should stay high). The embedded default LR
of a method is the smallest LR in the grid at which forget match falls to at most `--goal` × the
target's. Usage: python benchmarks/unlearn_calibrate.py --bench DIR [--lrs 1e-4,3e-4,1e-3] [--methods ga,npo]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qunlearn.data.muse import VerbMemItem, load_corpus
from qunlearn.evaluate.memorisation import greedy_token_match
from qunlearn.models.io import load_model
from qunlearn.prepare import PreparedBenchmark
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn


def greedy_match(model, tokenizer, items: list[VerbMemItem], n_tokens: int = 32) -> float:
    """Share of the first `n_tokens` reference tokens that greedy decoding reproduces from each prompt."""
    return greedy_token_match(model, tokenizer, [(item.prompt, item.gt) for item in items], n_tokens)


def halves(docs: list[str], n: int) -> list[VerbMemItem]:
    """Retain probes: first half of a document (cut at a space) as prompt, the rest as reference."""
    cuts = [d.rfind(" ", 0, len(d) // 2) for d in docs[:n]]
    return [VerbMemItem(d[:cut], d[cut:]) for d, cut in zip(docs, cuts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", required=True, help="prepared benchmark directory (qunlearn prepare --out)")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    parser.add_argument("--methods", default="ga,ga_gdr,ga_klr,npo,npo_gdr,npo_klr")
    parser.add_argument("--epochs", type=int, default=None, help="override the embedded default epochs")
    parser.add_argument("--probes", type=int, default=8, help="forget / retain items probed")
    args = parser.parse_args()
    bench = PreparedBenchmark(Path(args.bench))
    corpus = load_corpus(bench.corpus_dir)
    forget_items, retain_items = corpus.verbmem_forget[: args.probes], halves(corpus.retain, args.probes)

    def score(path) -> tuple[float, float]:
        model, tok = load_model(path)
        return greedy_match(model, tok, forget_items), greedy_match(model, tok, retain_items)

    for name, path in (("target", bench.target_dir), ("retrain", bench.retrain_dir)):
        if not (path / "config.json").is_file():
            print(f"{name:<10} (not found: {path})")
            continue
        f, r = score(path)
        print(f"{name:<10} {'':>8} forget {f:.2f}  retain {r:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for lr in (float(x) for x in args.lrs.split(",")):
                start = time.perf_counter()
                out = unlearn(
                    bench.target_dir,
                    corpus,
                    method,
                    f"{tmp}/{method}-{lr}",
                    UnlearnSettings(lr=lr, epochs=args.epochs),
                    progress=False,
                )
                f, r = score(out)
                print(
                    f"{method:<10} lr {lr:<7g} forget {f:.2f}  retain {r:.2f}  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
