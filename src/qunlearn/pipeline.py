"""The grid: models (target, retrain, each method) × quantizers × metrics, every finished cell persisted at once.

A cell is (model, quantizer, metric). Each finished cell is appended to `<out>/results.jsonl` with the run's
config hash; a rerun skips every cell already there under the same hash, and reuses unlearned and
quantized checkpoints on disk, so a crash or Ctrl-C loses at most the cell in progress.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qunlearn.config import RunConfig
from qunlearn.data.muse import load_corpus
from qunlearn.errors import QuantizerUnavailableError
from qunlearn.evaluate import METRICS, evaluate_model
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.fileio import append_jsonl, atomic_write_json, atomic_write_yaml, read_text
from qunlearn.models.io import load_model, save_model
from qunlearn.prepare import prepare_benchmark
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.diagnostics import code_flips
from qunlearn.quant.registry import QUANTIZERS, get_quantizer
from qunlearn.unlearn.methods import METHODS
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

RESULTS_FILE = "results.jsonl"
FIXED_MODELS = ("target", "retrain")
# A grid metric may write several result lines; the first one marks the cell done.
RESULT_NAMES = {"utility": ("ppl_retain", "ppl_holdout")}


@dataclass(frozen=True)
class Inputs:
    """The resolved target, retrain and corpus of a run."""

    target: Path
    retrain: Path | None
    corpus_dir: Path


def validate(config: RunConfig) -> None:
    """Reject unknown names (listing the valid ones) and bad settings before any work starts."""
    for kind, names, valid in (("method", config.methods, METHODS), ("quantizer", config.quantizers, QUANTIZERS),
                               ("metric", config.metrics, METRICS),
                               ("codeflip scheme", config.codeflip_schemes, QUANTIZERS)):
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    if config.calibration not in ("generic", "forget"):
        raise ValueError(f"calibration must be 'generic' or 'forget', got '{config.calibration}'")
    if config.target is not None and config.corpus is None:
        raise ValueError("a run with 'target' also needs 'corpus' (a MUSE-layout directory)")
    if "privleak" in config.metrics and config.target is not None and config.retrain is None:
        raise ValueError("metric 'privleak' needs 'retrain' (AUC_retrain comes from the retrain model)")
    UnlearnSettings(**config.unlearn)  # unknown override names fail here, naming the field
    for name in config.quantizers:
        get_quantizer(name, **config.quantize)


def config_hash(config: RunConfig) -> str:
    """Hash of what decides a cell's value (not the lists of cells, the output folder or the batch size)."""
    keep = {k: v for k, v in asdict(config).items()
            if k not in ("out", "methods", "quantizers", "metrics", "codeflip_schemes", "batch_size",
                         "keep_quantized", "device", "tokenizer")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def finished_cells(results: Path, run_hash: str) -> set[tuple[str, str, str]]:
    """(model, quantizer, metric) of every line in results.jsonl written under `run_hash`."""
    if not results.is_file():
        return set()
    done = set()
    for number, line in enumerate(read_text(results).splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            warnings.warn(f"{results}: line {number} is cut or corrupt (a crash mid-write?); its cell is redone",
                          stacklevel=2)
            continue
        if record is None:
            continue
        if record.get("config_hash") == run_hash:
            done.add((record["model"], record["quantizer"], record["metric"]))
    return done


def resolve_inputs(config: RunConfig, progress: bool) -> Inputs:
    """Prepare (or reuse) the embedded benchmark when no target is given; check the given paths otherwise."""
    if config.target is None:
        bench = prepare_benchmark(Path(config.out) / "benchmark", progress=progress, **asdict(config.benchmark))
        return Inputs(bench.target_dir, bench.retrain_dir, bench.corpus_dir)
    for field_name in ("target", "retrain", "corpus"):
        value = getattr(config, field_name)
        if value is not None and _looks_local(value) and not Path(value).is_dir():
            raise FileNotFoundError(f"{field_name}: {value}: directory not found")
    return Inputs(Path(config.target), Path(config.retrain) if config.retrain else None, Path(config.corpus))


def _looks_local(path: str) -> bool:
    """A path that exists or is written as one (an HF hub id like 'org/name' is not)."""
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") != 1


def result_lines(model: str, quantizer: str, metric: str, result: dict, run_hash: str) -> list[dict]:
    """The results.jsonl records of one evaluated metric (per-item values go to the cell file instead)."""
    base = {"model": model, "quantizer": quantizer, "config_hash": run_hash}
    if metric == "utility":
        return [base | {"metric": "ppl_retain", "value": result["retain_ppl"]},
                base | {"metric": "ppl_holdout", "value": result["holdout_ppl"]}]
    extra = {k: v for k, v in result.items() if k not in ("value", "items", "seconds")}
    return [base | {"metric": metric, "value": result["value"], "extra": extra}]


class Grid:
    """Runs one RunConfig; `run()` fills every missing cell and returns the results path."""

    def __init__(self, config: RunConfig, progress: bool = True):
        validate(config)
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.results = self.out / RESULTS_FILE
        self.run_hash = config_hash(config)

    def models(self) -> list[str]:
        return [m for m in FIXED_MODELS if m != "retrain" or self.inputs.retrain is not None] + self.config.methods

    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.out / "config.yaml", asdict(self.config) | {"config_hash": self.run_hash})
        self.inputs = resolve_inputs(self.config, self.progress)
        self.corpus = load_corpus(self.inputs.corpus_dir)
        done = finished_cells(self.results, self.run_hash)
        todo = self.todo(done)
        start = time.perf_counter()
        with tqdm(total=len(todo), desc="grid", unit="cell", disable=not self.progress) as bar:
            for model_name in self.models():
                cells = [c for c in todo if c[0] == model_name]
                if not cells:
                    continue
                path = self.checkpoint(model_name, bar)
                for quantizer in self.config.quantizers:
                    metrics = [c[2] for c in cells if c[1] == quantizer and c[2] != "codeflip"]
                    if metrics:
                        self.evaluate_cell(model_name, path, quantizer, metrics, bar)
                schemes = [c[1] for c in cells if c[2] == "codeflip"]
                if schemes:
                    self.code_flip_cells(model_name, path, schemes, bar)
        if self.progress:
            print(f"grid: {len(todo)} cells computed in {time.perf_counter() - start:.0f} s, "
                  f"{len(done)} reused; results in {self.results}")
        return self.results

    def todo(self, done: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Every cell of the grid not yet in results.jsonl, in run order."""
        cells = []
        for model in self.models():
            for quantizer in self.config.quantizers:
                for metric in self.config.metrics:
                    if (model, quantizer, RESULT_NAMES.get(metric, (metric,))[0]) not in done:
                        cells.append((model, quantizer, metric))
            if model in self.config.methods:
                cells += [(model, s, "codeflip") for s in self.config.codeflip_schemes
                          if (model, s, "codeflip") not in done]
        return cells

    def checkpoint(self, model_name: str, bar: tqdm) -> Path:
        """The model's checkpoint: target/retrain as given, methods unlearned once (resumed if interrupted)."""
        if model_name == "target":
            return self.inputs.target
        if model_name == "retrain":
            return self.inputs.retrain
        bar.set_postfix_str(f"unlearn {model_name}")
        out_dir = self.out / "models" / model_name
        return unlearn(self.inputs.target, self.corpus, model_name, out_dir, UnlearnSettings(**self.config.unlearn),
                       progress=False,
                       resume=out_dir.exists(), tokenizer=self.config.tokenizer)

    @cached_property
    def calibration(self) -> list[str]:
        """Calibration text for GPTQ/AWQ, read once per run."""
        return calibration_texts(corpus_dir=self.inputs.corpus_dir, calibrate_on=self.config.calibration)

    def quantized(self, model_name: str, path: Path, quantizer_name: str):
        """Load the model and quantize it, reusing a saved quantized checkpoint when there is one."""
        saved = self.out / "models" / "quantized" / f"{model_name}@{quantizer_name}"
        if quantizer_name != "fp" and (saved / "config.json").is_file():
            return load_model(saved, dtype=self.config.dtype, device=self.config.device)
        model, tokenizer = load_model(path, dtype=self.config.dtype, device=self.config.device,
                                      tokenizer=self.config.tokenizer)
        quantizer = get_quantizer(quantizer_name, **self.config.quantize)
        if not quantizer.available():
            raise QuantizerUnavailableError(f"{quantizer_name} not available: {quantizer.unavailable_reason()}")
        texts = self.calibration if quantizer.needs_calibration else None
        quantizer.quantize(model, tokenizer, texts)
        if quantizer_name != "fp" and self.config.keep_quantized:
            save_model(model, tokenizer, saved)
        return model, tokenizer

    @cached_property
    def auc_retrain(self) -> float | None:
        """AUC_retrain for PrivLeak, computed (or read from its cache) once per run."""
        if "privleak" not in self.config.metrics or self.inputs.retrain is None:
            return None
        return retrain_auc(self.inputs.retrain, self.corpus, dtype=self.config.dtype, device=self.config.device,
                           tokenizer=self.config.tokenizer,
                           batch_size=self.config.batch_size, progress=False)

    def evaluate_cell(self, model_name: str, path: Path, quantizer: str, metrics: list[str], bar: tqdm) -> None:
        """Quantize once, evaluate each missing metric, append each result as soon as it exists."""
        bar.set_postfix_str(f"{model_name} × {quantizer}: quantize")
        try:
            model, tokenizer = self.quantized(model_name, path, quantizer)
        except RuntimeError as err:
            tqdm.write(f"{quantizer}: not available here ({err}); skipping its cells")
            bar.update(len(metrics))
            return
        cell_file = self.out / "cells" / model_name / f"{quantizer}.json"
        for metric in metrics:
            bar.set_postfix_str(f"{model_name} × {quantizer}: {metric}")
            result = evaluate_model(model, tokenizer, self.corpus, [metric], retrain_auc=self.auc_retrain,
                                    batch_size=self.config.batch_size, progress=False)[metric]
            details = _read_cell(cell_file) | {metric: result}
            atomic_write_json(cell_file, details)
            for line in result_lines(model_name, quantizer, metric, result, self.run_hash):
                append_jsonl(self.results, line)
            bar.update(1)

    def code_flip_cells(self, model_name: str, path: Path, schemes: list[str], bar: tqdm) -> None:
        """Share of quantized codes that differ between the target and this model, per scheme."""
        target, tokenizer = load_model(self.inputs.target, dtype=self.config.dtype, device="cpu",
                                       tokenizer=self.config.tokenizer)
        model, _ = load_model(path, dtype=self.config.dtype, device="cpu", tokenizer=self.config.tokenizer)
        for scheme in schemes:
            bar.set_postfix_str(f"{model_name}: code flips {scheme}")
            quantizer = get_quantizer(scheme, **self.config.quantize)
            texts = self.calibration if quantizer.needs_calibration else None
            flips = code_flips(target, model, quantizer, tokenizer, texts)
            overall = flips["overall"]
            extra = {"below_half_step": overall.get("below_half_step_fraction"), "weights": overall["weights"]}
            append_jsonl(self.results, {"model": model_name, "quantizer": scheme, "metric": "codeflip",
                                        "value": overall["flip_fraction"], "extra": extra,
                                        "config_hash": self.run_hash})
            atomic_write_json(self.out / "cells" / model_name / f"codeflips_{scheme}.json", flips)
            bar.update(1)


def _read_cell(path: Path) -> dict[str, Any]:
    return json.loads(read_text(path)) if path.is_file() else {}


def run_grid(config: RunConfig, progress: bool = True) -> Path:
    """Fill every missing cell of `config`'s grid; returns the results.jsonl path."""
    torch.manual_seed(0)
    return Grid(config, progress).run()

