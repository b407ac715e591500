"""Parity of qunlearn's TOFU metrics with OpenUnlearning's own metric functions, on the same model and data.

OpenUnlearning's code is imported from a checkout given on the command line (never copied into qunlearn); its
metric functions run on its own datasets and collators (QADataset, DataCollatorForSupervisedDataset) with the
template arguments of its phi-1.5 config (plain format) or `apply_chat_template: true` (chat format, with a
small chat template whose user turn ends in EOS set on the tokenizer, and EOS as the pad token, as Llama-3 has). qunlearn's `evaluate_tofu` runs on the same files. Every summary
number is compared against TOLERANCE.

Needs OpenUnlearning's imports (omegaconf, hydra-core, datasets) besides qunlearn's, e.g.:

    git clone https://github.com/locuslab/open-unlearning /tmp/open-unlearning
    python -m venv --system-site-packages /tmp/ouvenv && /tmp/ouvenv/bin/pip install omegaconf hydra-core datasets
    qunlearn prepare --flavour tofu --preset tiny --out /tmp/tofu_bench
    PYTHONPATH=src /tmp/ouvenv/bin/python benchmarks/tofu_parity.py --openunlearning /tmp/open-unlearning \\
        --bench /tmp/tofu_bench --out tofu_parity.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from qunlearn.data.tofu import load_tofu
from qunlearn.evaluate.tofu import MAX_NEW_TOKENS, PromptFormat, evaluate_tofu, retain_model_truth_ratios
from qunlearn.models.io import load_model

TOLERANCE = 1e-4  # absolute, on every summary number (probabilities, ROUGE recalls, truth ratios, p-values)
SYSTEM_PROMPT = "You are a helpful assistant."
# The user turn ends in EOS and the pad token is EOS, as with Llama-3 tokenizers: OpenUnlearning's collator then
# masks it, which qunlearn must mirror. The turns read like the plain format the tiny model learnt, so its greedy
# answers (and ROUGE) are real answers in the chat case too.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n{{ eos_token }}"
    "{% else %}Answer: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer: {% endif %}"
)
PLAIN_TEMPLATE_ARGS = {
    "apply_chat_template": False,
    "user_start_tag": "Question: ",
    "user_end_tag": "\n",
    "asst_start_tag": "Answer: ",
    "asst_end_tag": "\n\n",
}  # OpenUnlearning's phi-1_5.yaml
CHAT_TEMPLATE_ARGS = {"apply_chat_template": True, "system_prompt": SYSTEM_PROMPT}
SETS = {
    "forget": ("forget10_perturbed", "paraphrased_answer"),
    "retain": ("retain_perturbed", "paraphrased_answer"),
    "ra": ("real_authors_perturbed", "answer"),
    "wf": ("world_facts_perturbed", "answer"),
}
SET_NAMES = {"forget": "forget", "retain": "retain", "ra": "real_authors", "wf": "world_facts"}


def _chat_ids_as_list(tokenizer) -> None:
    """OpenUnlearning (written for transformers 4.x) expects token ids from apply_chat_template(tokenize=True);
    transformers 5 returns a dict unless return_dict=False."""
    original = tokenizer.apply_chat_template

    def apply(conversation, tokenize=True, **kwargs):
        if tokenize:
            kwargs.setdefault("return_dict", False)
        return original(conversation, tokenize=tokenize, **kwargs)

    tokenizer.apply_chat_template = apply


class OpenUnlearning:
    """OpenUnlearning's TOFU metrics (its own functions, datasets and collators) on local TOFU files."""

    def __init__(self, src: Path, data_dir: Path, template_args: dict, batch_size: int):
        sys.path.insert(0, str(src))
        from data import collators, qa
        from evals.metrics import memorization, privacy, utility
        from omegaconf import OmegaConf

        self.qa, self.collators, self.mem, self.privacy, self.utility = qa, collators, memorization, privacy, utility
        self.generation = OmegaConf.create(
            {
                "do_sample": False,
                "top_p": None,
                "temperature": None,
                "max_new_tokens": MAX_NEW_TOKENS,
                "use_cache": True,
            }
        )
        self.data_dir, self.template_args, self.batch_size = data_dir, template_args, batch_size
        self.generations: dict[str, list[str]] = {}

    def _dataset(self, tokenizer, config: str, answer_key: str, generate: bool = False):
        hf_args = {"path": "json", "data_files": str(self.data_dir / f"{config}.json"), "split": "train"}
        return self.qa.QADataset(
            hf_args, self.template_args, tokenizer, answer_key=answer_key, predict_with_generate=generate
        )

    def _collator(self, tokenizer, side: str):
        return self.collators.DataCollatorForSupervisedDataset(tokenizer, padding_side=side, index="index")

    def probability(self, model, tokenizer, config: str, answer_key: str) -> dict:
        return self.mem.probability._metric_fn(
            model,
            data=self._dataset(tokenizer, config, answer_key),
            collators=self._collator(tokenizer, "right"),
            batch_size=self.batch_size,
        )

    def rouge(self, model, tokenizer, config: str) -> dict:
        """ROUGE-L recall of greedy answers; the answers themselves are kept in `self.generations[config]`."""
        result = self.mem.rouge._metric_fn(
            model,
            tokenizer=tokenizer,
            generation_args=self.generation,
            data=self._dataset(tokenizer, config, "answer", generate=True),
            collators=self._collator(tokenizer, "left"),
            batch_size=self.batch_size,
            rouge_type="rougeL_recall",
        )
        self.generations[config] = [result["value_by_index"][i]["generation"] for i in sorted(result["value_by_index"])]
        return result

    def truth_ratio(self, model, tokenizer, config: str, correct_key: str, aggregator: str) -> dict:
        correct = self.probability(model, tokenizer, config, correct_key)
        wrong = self.probability(model, tokenizer, config, "perturbed_answer")
        return self.mem.truth_ratio._metric_fn(
            model, pre_compute={"correct": correct, "wrong": wrong}, aggregator=aggregator
        )

    def summary(self, model, tokenizer, retain_model, retain_tokenizer) -> dict[str, float]:
        """OpenUnlearning's TOFU summary (forget quality against the retain model's forget truth ratios)."""
        out, pre = {}, {}
        forget_tr = self.truth_ratio(model, tokenizer, SETS["forget"][0], "paraphrased_answer", "closer_to_1_better")
        reference = self.truth_ratio(
            retain_model, retain_tokenizer, SETS["forget"][0], "paraphrased_answer", "closer_to_1_better"
        )
        out["forget_quality"] = self.privacy.ks_test._metric_fn(
            model,
            pre_compute={"forget": forget_tr},
            reference_logs={"retain_model_logs": {"retain": reference}},
        )["agg_value"]
        out["forget_Q_A_Prob"] = self.probability(model, tokenizer, SETS["forget"][0], "answer")["agg_value"]
        out["forget_Q_A_ROUGE"] = self.rouge(model, tokenizer, SETS["forget"][0])["agg_value"]
        out["forget_truth_ratio"] = forget_tr["agg_value"]
        pre["retain_Q_A_Prob"] = self.probability(model, tokenizer, SETS["retain"][0], "answer")
        pre["retain_Q_A_ROUGE"] = self.rouge(model, tokenizer, SETS["retain"][0])
        pre["retain_Truth_Ratio"] = self.truth_ratio(
            model, tokenizer, SETS["retain"][0], "paraphrased_answer", "true_better"
        )
        for short in ("ra", "wf"):
            config = SETS[short][0]
            correct = self.probability(model, tokenizer, config, "answer")
            wrong = self.probability(model, tokenizer, config, "perturbed_answer")
            pre[f"{short}_Q_A_Prob_normalised"] = self.mem.probability_w_options._metric_fn(
                model, pre_compute={"correct": correct, "wrong": wrong}
            )
            pre[f"{short}_Q_A_ROUGE"] = self.rouge(model, tokenizer, config)
            pre[f"{short}_Truth_Ratio"] = self.mem.truth_ratio._metric_fn(
                model, pre_compute={"correct": correct, "wrong": wrong}, aggregator="true_better"
            )
        out["model_utility"] = self.utility.hm_aggregate._metric_fn(model, pre_compute=pre)["agg_value"]
        return out | {name: result["agg_value"] for name, result in pre.items()}


def compare(ours: dict, theirs: dict) -> dict:
    """Per summary number: both values, the absolute difference, and whether it is within TOLERANCE."""
    rows = {}
    for name, value in theirs.items():
        diff = abs(float(ours[name]) - float(value))
        rows[name] = {
            "openunlearning": float(value),
            "qunlearn": float(ours[name]),
            "abs_diff": diff,
            "ok": diff <= TOLERANCE,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--openunlearning", required=True, help="checkout of locuslab/open-unlearning")
    parser.add_argument("--bench", required=True, help="`qunlearn prepare --flavour tofu` output directory")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True, help="JSON report")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench = Path(args.bench)
    ou_src = Path(args.openunlearning) / "src"
    data = load_tofu(bench / "corpus", "forget10")
    report = {"tolerance": TOLERANCE, "bench": str(bench.resolve()), "formats": {}}
    for kind in ("plain", "chat"):
        model, tok = load_model(bench / "models" / "target")
        retain, retain_tok = load_model(bench / "models" / "retrain")
        fmt = PromptFormat("plain")
        template_args = PLAIN_TEMPLATE_ARGS
        if kind == "chat":
            for t in (tok, retain_tok):
                t.chat_template, t.pad_token = CHAT_TEMPLATE, t.eos_token
            fmt, template_args = PromptFormat("chat", SYSTEM_PROMPT), CHAT_TEMPLATE_ARGS
        reference = retain_model_truth_ratios(retain, retain_tok, data, fmt, args.batch_size, progress=False)
        ours = evaluate_tofu(model, tok, data, reference, fmt, args.batch_size, progress=False)
        for t in (tok, retain_tok):
            _chat_ids_as_list(t)
        ou = OpenUnlearning(ou_src, bench / "corpus", template_args, args.batch_size)
        rows = compare(ours["summary"], ou.summary(model, tok, retain, retain_tok))
        same = [
            a["output"] == b
            for name, (config, _) in SETS.items()
            for a, b in zip(ours["sets"][SET_NAMES[name]]["items"], ou.generations[config], strict=True)
        ]
        report["formats"][kind] = {
            "max_abs_diff": max(r["abs_diff"] for r in rows.values()),
            "all_within_tolerance": all(r["ok"] for r in rows.values()),
            "identical_greedy_answers": f"{sum(same)}/{len(same)}",
            "metrics": rows,
        }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for kind, res in report["formats"].items():
        print(
            f"{kind}: max |qunlearn - OpenUnlearning| = {res['max_abs_diff']:.2e} "
            f"(tolerance {TOLERANCE:g}): {'OK' if res['all_within_tolerance'] else 'MISMATCH'}; "
            f"identical greedy answers {res['identical_greedy_answers']}"
        )
        for name, row in res["metrics"].items():
            print(f"  {name:<24} {row['openunlearning']:.6f} {row['qunlearn']:.6f} {row['abs_diff']:.1e}")
    return 0 if all(r["all_within_tolerance"] for r in report["formats"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
