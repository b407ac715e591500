"""TOFU evaluation of an in-memory model, as OpenUnlearning runs it: forget quality, model utility, per-set numbers.

Prompts follow OpenUnlearning: with a chat template, a system message ("You are a helpful assistant." by
default), the question as the user turn, the answer as the assistant turn; without one, the plain
"Question: {q}\\nAnswer: {a}" format of its phi-1.5 config. The answer's tokens are everything the full
conversation adds to the prompt, plus EOS when the conversation does not already end in it. Like OpenUnlearning's
collator (attention mask = `input_ids != pad_token_id`), tokens equal to the pad token are hidden from attention:
with Llama-3 tokenizers, whose pad token is EOS (<|eot_id|>), that masks the end of the system and user turns,
as it was when OpenUnlearning fine-tuned and evaluated its TOFU checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from jinja2 import TemplateError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qunlearn.data.tofu import TofuData, TofuItem, plain_prompt
from qunlearn.errors import UserInputError
from qunlearn.evaluate import tofu_metrics as tm
from qunlearn.evaluate.generate import decode, greedy_from_ids
from qunlearn.evaluate.logprobs import token_stats
from qunlearn.fileio import read_json

PROMPT_FORMATS = ("auto", "chat", "plain")
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # OpenUnlearning's model configs
DEFAULT_DATE_STRING = "10 Apr 2025"  # OpenUnlearning's Llama-3 configs; templates without a date ignore it
MAX_NEW_TOKENS = 200  # OpenUnlearning's generation config (greedy)
FORGET_SCORE = "forget_Q_A_Prob"
UTILITY_KEYS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt: 'chat' (the tokenizer's template) or 'plain' (Question: … Answer:)."""

    kind: str
    system_prompt: str | None = None
    date_string: str | None = None


def resolve_prompt_format(
    tokenizer: PreTrainedTokenizerBase,
    choice: str = "auto",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    date_string: str | None = DEFAULT_DATE_STRING,
) -> PromptFormat:
    """'auto' picks chat when the tokenizer has a chat template; asking for chat without one is an input error."""
    if choice not in PROMPT_FORMATS:
        raise UserInputError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)} (got '{choice}')")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if choice == "chat" and not has_template:
        raise UserInputError(
            "--prompt-format chat: the tokenizer has no chat template; use --prompt-format plain "
            "for 'Question: ... Answer: ...' prompts (base models, phi-1.5)"
        )
    if choice == "plain" or not has_template:
        return PromptFormat("plain")
    return PromptFormat("chat", system_prompt or None, date_string or None)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, answer: str | None) -> list[int]:
    messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    extra = {"date_string": fmt.date_string} if fmt.date_string else {}
    try:
        return list(
            tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=False, add_generation_prompt=answer is None, **extra
            )
        )
    except TemplateError as err:  # e.g. a template that refuses the system role
        raise UserInputError(
            f"the tokenizer's chat template failed ({err}); try --system-prompt '' or --prompt-format plain"
        ) from None


def encode_prompt(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str) -> list[int]:
    """Token ids the model sees before it answers (generation prompt included)."""
    if fmt.kind == "chat":
        return _chat_ids(tokenizer, fmt, question, None)
    return tokenizer(plain_prompt(question), add_special_tokens=True)["input_ids"]


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, answer: str
) -> tuple[list[int], int]:
    """(ids of prompt + answer + EOS, number of prompt tokens): OpenUnlearning's `preprocess_chat_instance`."""
    if fmt.kind == "chat":
        ids = _chat_ids(tokenizer, fmt, question, answer)
    else:
        ids = tokenizer(plain_prompt(question) + answer, add_special_tokens=True)["input_ids"]
    if ids[-1] != tokenizer.eos_token_id:
        ids = ids + [tokenizer.eos_token_id]
    return ids, len(encode_prompt(tokenizer, fmt, question))


@dataclass(frozen=True)
class _Run:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fmt: PromptFormat
    batch_size: int
    progress: bool
    max_new_tokens: int


def mean_logprobs(run: _Run, pairs: Sequence[tuple[str, str]], desc: str) -> list[float]:
    """Mean log-probability of each answer's tokens (and the closing EOS) given its question's prompt."""
    encoded = [encode_qa(run.tokenizer, run.fmt, q, a) for q, a in pairs]
    stats = token_stats(
        run.model, [ids for ids, _ in encoded], run.batch_size, run.progress, desc, masked_id=run.tokenizer.pad_token_id
    )
    means = []
    for (ids, n_prompt), st, (question, _) in zip(encoded, stats, pairs):
        answer_logprobs = st.logprobs[n_prompt - 1 :]  # logprobs[i] scores token i + 1
        if answer_logprobs.size == 0:
            raise UserInputError(f"question {question!r}: its answer adds no tokens to the prompt")
        means.append(float(answer_logprobs.mean()))
    return means


def _perturbed_logprobs(run: _Run, items: Sequence[TofuItem], desc: str) -> list[list[float]]:
    flat = [(item.question, wrong) for item in items for wrong in item.perturbed_answers]
    values = iter(mean_logprobs(run, flat, desc))
    return [[next(values) for _ in item.perturbed_answers] for item in items]


def greedy_answers(run: _Run, questions: Sequence[str], desc: str) -> list[str]:
    """Greedy answers, decoded without special tokens and stripped (OpenUnlearning's ROUGE inputs)."""
    encoded = [encode_prompt(run.tokenizer, run.fmt, q) for q in questions]
    rows = greedy_from_ids(
        run.model,
        run.tokenizer,
        encoded,
        run.max_new_tokens,
        None,
        run.batch_size,
        run.progress,
        desc,
        masked_id=run.tokenizer.pad_token_id,
    )
    return [decode(run.tokenizer, row).strip() for row in rows]


def _truth_ratios(
    run: _Run, items: Sequence[TofuItem], name: str, correct: list[float] | None = None
) -> tuple[np.ndarray, list[list[float]]]:
    """Per-question truth ratios, and the perturbed answers' mean log-probs they used; the true side is the
    paraphrased answer (forget, retain) unless `correct` gives the answers' own (real authors, world facts)."""
    wrong = _perturbed_logprobs(run, items, f"{name} perturbed")
    if correct is None:
        correct = mean_logprobs(run, [(i.question, i.paraphrased_answer) for i in items], f"{name} paraphrased")
    return tm.truth_ratios(correct, wrong), wrong


def _score_set(run: _Run, items: Sequence[TofuItem], name: str, versus_paraphrase: bool) -> dict:
    """Probability, ROUGE-L recall and truth ratios of one set, with per-question rows."""
    answer = mean_logprobs(run, [(i.question, i.answer) for i in items], f"{name} answer")
    ratios, wrong = _truth_ratios(run, items, name, None if versus_paraphrase else answer)
    outputs = greedy_answers(run, [i.question for i in items], f"{name} generate")
    rouge = [tm.rouge_l_recall(i.answer, out) for i, out in zip(items, outputs)]
    probs = [tm.answer_probability(lp) for lp in answer]
    result = {
        "probability": float(np.mean(probs)),
        "rouge_l_recall": float(np.mean(rouge)),
        "truth_ratio_closer_to_1": tm.truth_ratio_closer_to_1(ratios),
        "truth_ratio_true_better": tm.truth_ratio_true_better(ratios),
        "items": [
            {
                "question": i.question,
                "answer": i.answer,
                "output": out,
                "probability": p,
                "rouge_l_recall": r,
                "truth_ratio": float(t),
            }
            for i, out, p, r, t in zip(items, outputs, probs, rouge, ratios)
        ],
    }
    if not versus_paraphrase:
        result["probability_normalised"] = tm.probability_over_options(answer, wrong)
    return result


def evaluate_tofu(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TofuData,
    retain_truth_ratios: Sequence[float] | None = None,
    prompt_format: PromptFormat | None = None,
    batch_size: int = 16,
    progress: bool = True,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """TOFU metrics of `model`: {"summary": OpenUnlearning's names -> value, "sets": per-set rows, ...}.

    `retain_truth_ratios` are the retain model's forget-set truth ratios (`result["forget_truth_ratios"]` of
    its own evaluation); without them forget quality is None, as in OpenUnlearning.
    """
    fmt = prompt_format or resolve_prompt_format(tokenizer)
    run = _Run(model, tokenizer, fmt, batch_size, progress, max_new_tokens)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        sets = {
            "forget": _score_set(run, data.forget, "forget", versus_paraphrase=True),
            "retain": _score_set(run, data.retain, "retain", versus_paraphrase=True),
            "real_authors": _score_set(run, data.real_authors, "real_authors", versus_paraphrase=False),
            "world_facts": _score_set(run, data.world_facts, "world_facts", versus_paraphrase=False),
        }
    finally:
        model.train(was_training)
    ratios = [row["truth_ratio"] for row in sets["forget"]["items"]]
    utility = {
        "retain_Q_A_Prob": sets["retain"]["probability"],
        "retain_Q_A_ROUGE": sets["retain"]["rouge_l_recall"],
        "retain_Truth_Ratio": sets["retain"]["truth_ratio_true_better"],
    }
    for short, name in (("ra", "real_authors"), ("wf", "world_facts")):
        utility |= {
            f"{short}_Q_A_Prob_normalised": sets[name]["probability_normalised"],
            f"{short}_Q_A_ROUGE": sets[name]["rouge_l_recall"],
            f"{short}_Truth_Ratio": sets[name]["truth_ratio_true_better"],
        }
    quality = (
        None
        if retain_truth_ratios is None
        else tm.forget_quality(np.asarray(ratios), np.asarray(retain_truth_ratios, dtype=np.float64))
    )
    summary = {
        "forget_quality": quality,
        "model_utility": tm.model_utility([utility[k] for k in UTILITY_KEYS]),
        "forget_Q_A_Prob": sets["forget"]["probability"],
        "forget_Q_A_ROUGE": sets["forget"]["rouge_l_recall"],
        "forget_truth_ratio": sets["forget"]["truth_ratio_closer_to_1"],
    } | utility
    return {
        "benchmark": "tofu",
        "data": data.source,
        "forget_split": data.forget_split,
        "prompt_format": asdict(fmt),
        "max_new_tokens": max_new_tokens,
        "summary": summary,
        "forget_truth_ratios": ratios,
        "seconds": round(time.perf_counter() - start, 3),
        "sets": sets,
    }


def retain_model_truth_ratios(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TofuData,
    prompt_format: PromptFormat | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[float]:
    """The retain model's forget-set truth ratios: the reference sample of forget quality's KS test."""
    fmt = prompt_format or resolve_prompt_format(tokenizer)
    run = _Run(model, tokenizer, fmt, batch_size, progress, MAX_NEW_TOKENS)
    was_training = model.training
    model.eval()
    try:
        return [float(r) for r in _truth_ratios(run, data.forget, "forget")[0]]
    finally:
        model.train(was_training)


def read_retain_truth_ratios(path: str) -> list[float]:
    """Forget-set truth ratios of a retain model from an earlier result: qunlearn's `evaluate --benchmark tofu`
    JSON ("forget_truth_ratios") or OpenUnlearning's TOFU_EVAL.json ("forget_truth_ratio" -> "value_by_index")."""
    logs = read_json(path)
    if isinstance(logs, dict) and isinstance(logs.get("forget_truth_ratios"), list):
        values = logs["forget_truth_ratios"]
    elif isinstance(logs, dict) and isinstance(logs.get("forget_truth_ratio", {}).get("value_by_index"), dict):
        values = [row.get("score") for row in logs["forget_truth_ratio"]["value_by_index"].values()]
    else:
        raise UserInputError(
            f"{path}: holds neither 'forget_truth_ratios' (qunlearn) nor "
            "'forget_truth_ratio.value_by_index' (OpenUnlearning's TOFU_EVAL.json)"
        )
    if not values or not all(isinstance(v, (int, float)) for v in values):
        raise UserInputError(f"{path}: the retain model's forget truth ratios must be a non-empty list of numbers")
    return [float(v) for v in values]


def forget_score(result: dict, key: str = FORGET_SCORE) -> float:
    """The headline forget number of a TOFU result for recovery fractions: forget-set answer probability
    (higher = more remembered; `key="forget_Q_A_ROUGE"` for the greedy-answer ROUGE-L recall instead)."""
    return float(result["summary"][key])
