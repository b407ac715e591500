"""`qunlearn prepare`: write the embedded benchmark (corpus, tokenizer, target and retrain models)."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from qunlearn import __version__
from qunlearn.config import BenchmarkSettings, Preset, get_preset, to_dict
from qunlearn.data.muse import load_corpus
from qunlearn.data.synthetic import SyntheticSizes, generate_corpus
from qunlearn.data.tofu import load_training_split, plain_prompt
from qunlearn.data.tofu_synthetic import generate_tofu, training_texts
from qunlearn.errors import OutputConflictError
from qunlearn.evaluate.memorisation import greedy_token_match
from qunlearn.fileio import atomic_write_yaml, read_yaml
from qunlearn.models.io import load_model, parse_dtype, save_model
from qunlearn.models.tiny import build_model, train_from_scratch
from qunlearn.models.tokenizer import train_tokenizer
from qunlearn.outputs import check_output_dir, output_lock, staged_dir

SETTINGS_FILE = "prepare.yaml"


@dataclass(frozen=True)
class PreparedBenchmark:
    """Paths of a prepared benchmark directory."""

    root: Path

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def target_dir(self) -> Path:
        return self.root / "models" / "target"

    @property
    def retrain_dir(self) -> Path:
        return self.root / "models" / "retrain"

    @property
    def settings_file(self) -> Path:
        return self.root / SETTINGS_FILE


def _settings(preset: Preset, flavour: str, seed: int, dtype: str) -> dict:
    return {"preset": to_dict(preset), "flavour": flavour, "seed": seed, "dtype": dtype}


TOFU_MODEL_SPLIT = "forget10"  # the retrain model of `--flavour tofu` never saw this split (OpenUnlearning's default)


@dataclass(frozen=True)
class _Texts:
    """What training needs from a generated corpus, and forget prompts with their truth for the greedy check."""

    target: list[str]
    retrain: list[str]
    tokenizer: list[str]
    probes: list[tuple[str, str]]
    summary: dict[str, int]


def _generate(corpus_dir: Path, flavour: str, seed: int, sizes: SyntheticSizes) -> None:
    if flavour == "tofu":
        generate_tofu(corpus_dir, seed=seed, sizes=sizes)
    else:
        generate_corpus(corpus_dir, flavour=flavour, seed=seed, sizes=sizes)


def _read_texts(corpus_dir: Path, flavour: str) -> _Texts:
    """MUSE: target = forget + retain documents. TOFU: target = all QA pairs, retrain = retain90; both models
    also learn the real-authors and world-facts sets."""
    if flavour != "tofu":
        corpus = load_corpus(corpus_dir)
        return _Texts(
            corpus.forget + corpus.retain,
            corpus.retain,
            corpus.forget + corpus.retain + corpus.holdout,
            [(i.prompt, i.gt) for i in corpus.verbmem_forget],
            corpus.summary(),
        )
    splits = {
        name: load_training_split(corpus_dir, name)
        for name in ("full", "retain90", TOFU_MODEL_SPLIT, "real_authors", "world_facts")
    }
    utility = training_texts(splits["real_authors"] + splits["world_facts"])
    paraphrases = [i.paraphrased_answer or "" for i in load_training_split(corpus_dir, "retain_perturbed")]
    target = training_texts(splits["full"]) + utility
    return _Texts(
        target,
        training_texts(splits["retain90"]) + utility,
        target + paraphrases,
        [(plain_prompt(i.question), i.answer) for i in splits[TOFU_MODEL_SPLIT]],
        {name: len(items) for name, items in splits.items()},
    )


def _marker(bench: PreparedBenchmark, flavour: str) -> Path:
    return bench.corpus_dir / ("full.json" if flavour == "tofu" else "raw")


def is_prepared(bench: PreparedBenchmark, settings: dict) -> bool:
    """True when `bench` holds every output and was prepared with exactly these settings."""
    if not bench.settings_file.is_file():
        return False
    done = read_yaml(bench.settings_file) or {}
    outputs = (bench.target_dir / "config.json", bench.retrain_dir / "config.json", _marker(bench, settings["flavour"]))
    return {k: done.get(k) for k in settings} == settings and all(p.exists() for p in outputs)


def prepare_benchmark(
    out_dir: str | Path,
    preset: str = "small",
    flavour: str = "news",
    seed: int = 0,
    dtype: str = "fp32",
    force: bool = False,
    progress: bool = True,
) -> PreparedBenchmark:
    """Generate the corpus, train the tokenizer, train target (forget+retain) and retrain (retain only).

    Reuses a directory prepared with identical settings; refuses one prepared with other settings unless
    `force` is set (then it is rebuilt).
    """
    BenchmarkSettings(preset, flavour, seed, dtype).validate()
    spec = get_preset(preset)
    bench = PreparedBenchmark(Path(out_dir))
    settings = _settings(spec, flavour, seed, dtype)
    check_output_dir(bench.root, SETTINGS_FILE, "a prepared benchmark", {})
    with output_lock(bench.root):
        if not force and is_prepared(bench, settings):
            return bench
        if not force and bench.settings_file.is_file():
            raise OutputConflictError(
                f"{bench.root}: holds a benchmark prepared with other settings (see {bench.settings_file}); "
                "use --force to replace it, or another output directory"
            )
        with staged_dir(bench.root) as staging:
            _build(PreparedBenchmark(staging), spec, settings, progress)
    return bench


def _build(bench: PreparedBenchmark, spec: Preset, settings: dict, progress: bool) -> None:
    """Write corpus, tokenizer, target and retrain models and prepare.yaml into `bench.root`."""
    flavour, seed, dtype = settings["flavour"], settings["seed"], settings["dtype"]
    _generate(bench.corpus_dir, flavour, seed, spec.sizes)
    texts = _read_texts(bench.corpus_dir, flavour)
    tokenizer = train_tokenizer(texts.tokenizer, spec.model.vocab_size)
    tokenizer.save_pretrained(bench.tokenizer_dir)
    report = {}
    for name, docs, out in (("target", texts.target, bench.target_dir), ("retrain", texts.retrain, bench.retrain_dir)):
        model = build_model(spec.model, tokenizer, seed)
        start = time.perf_counter()
        losses = train_from_scratch(model, tokenizer, docs, spec.train, seed, desc=f"train {name}", progress=progress)
        seconds = time.perf_counter() - start
        report[name] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1),
            "final_train_loss": round(losses[-1], 4),
            "epoch_losses": [round(x, 4) for x in losses],
            "greedy_forget_token_match": round(greedy_token_match(model, tokenizer, texts.probes[:5]), 4),
        }
        save_model(model.to(parse_dtype(dtype)), tokenizer, out)
    atomic_write_yaml(
        bench.settings_file,
        settings
        | {
            "results": report,
            "corpus": texts.summary,
            "versions": {
                "qunlearn": __version__,
                "torch": str(torch.__version__),
                "transformers": transformers.__version__,
                "python": platform.python_version(),
            },
            "torch_threads": torch.get_num_threads(),
        },
    )


def summary_lines(bench: PreparedBenchmark) -> list[str]:
    """Human-readable summary of a prepared benchmark, with a greedy continuation of one forget prompt."""
    info = read_yaml(bench.settings_file)
    texts = _read_texts(bench.corpus_dir, info["flavour"])
    lines = [
        (
            f"benchmark: {bench.root}  (preset {info['preset']['name']}, flavour {info['flavour']}, "
            f"seed {info['seed']}, dtype {info['dtype']})"
        ),
        "corpus:",
    ]
    lines += [f"  {k:<20} {v}" for k, v in texts.summary.items()]
    for name, res in info["results"].items():
        lines.append(
            f"{name}: {res['parameters']:,} parameters, trained in {res['train_seconds']} s, "
            f"final train loss {res['final_train_loss']}, greedy token match on forget prompts "
            f"{100 * res['greedy_forget_token_match']:.1f}%"
        )
    model, tokenizer = load_model(bench.target_dir)
    prompt_text, truth = texts.probes[0]
    prompt = tokenizer(prompt_text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    continuation = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    lines += [
        "greedy check (target, first forget prompt):",
        f"  prompt: ...{prompt_text[-60:]!r}",
        f"  model:  {continuation!r}",
        f"  truth:  {truth[: len(continuation) + 10]!r}",
    ]
    return lines
