"""The grid: models (target, retrain, each method) × quantizers × metrics, every finished cell persisted at once.

A cell is (model, quantizer, metric). Each finished cell is appended to `<out>/results.jsonl` with the run's
config hash; a rerun skips every cell already there under the same hash, and reuses unlearned and
quantized checkpoints on disk, so a crash or Ctrl-C loses at most the cell in progress. What each quantizer did
instead of its settings is kept per (model, quantizer) in `<out>/quantizer_fallbacks.json` as soon as the model
is quantized.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from qunlearn.config import RunConfig
from qunlearn.data.muse import load_corpus
from qunlearn.errors import OutputConflictError, QuantizerUnavailableError
from qunlearn.evaluate import evaluate_model
from qunlearn.evaluate.privleak import retrain_auc
from qunlearn.fileio import append_jsonl, atomic_write_json, atomic_write_text, atomic_write_yaml, read_text, read_yaml
from qunlearn.models.integrity import check_finite
from qunlearn.models.io import load_model, save_model
from qunlearn.models.locate import locate_dir, locate_model
from qunlearn.outputs import check_output_dir, output_lock
from qunlearn.prepare import prepare_benchmark
from qunlearn.quant.base import GridQuantizer, Quantizer
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.diagnostics import code_flips, update_size, update_size_fields
from qunlearn.quant.registry import get_quantizer, quantizer_fields
from qunlearn.report import write_report
from qunlearn.report.fallbacks import FALLBACKS_FILE, cell_key, load_fallbacks, record_fallbacks
from qunlearn.results import CODE_FLIPS, RESULTS_FILE, cell_marker, finished_cells, metric_records, record
from qunlearn.unlearn.methods import get_method
from qunlearn.unlearn.rundir import SETTINGS_FILE
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

RUN_FILE = "config.yaml"  # written first: marks a run directory
FIXED_MODELS = ("target", "retrain")


@dataclass(frozen=True)
class Inputs:
    """The resolved target, retrain and corpus of a run."""

    target: Path
    retrain: Path | None
    corpus_dir: Path


def make_quantizer(name: str, options: dict[str, Any]) -> Quantizer:
    """The grid's quantizer `name` with those `quantize:` options it takes (the others are for other quantizers)."""
    takes = quantizer_fields(name)
    return get_quantizer(name, **{k: v for k, v in options.items() if k in takes})


def config_hash(config: RunConfig) -> str:
    """Hash of what decides a cell's value (not the lists of cells, the output folder or the batch size)."""
    keep = {
        k: v
        for k, v in asdict(config).items()
        if k
        not in (
            "out",
            "methods",
            "quantizers",
            "metrics",
            "codeflip_schemes",
            "batch_size",
            "keep_quantized",
            "device",
            "device_map",
            "tokenizer",
            "trust_remote_code",
        )
    }
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def check_inputs(config: RunConfig) -> None:
    """The run's local paths exist (a missing one is 'not found' at once, never taken for a hub id)."""
    for field_name in ("target", "retrain"):
        if getattr(config, field_name) is not None:
            locate_model(getattr(config, field_name), field_name)
    if config.corpus is not None:
        locate_dir(config.corpus, "corpus")


def resolve_inputs(config: RunConfig, progress: bool) -> Inputs:
    """Prepare (or reuse) the embedded benchmark when no target is given; the given paths otherwise."""
    if config.target is None:
        bench = prepare_benchmark(Path(config.out) / "benchmark", progress=progress, **asdict(config.benchmark))
        return Inputs(bench.target_dir, bench.retrain_dir, bench.corpus_dir)
    return Inputs(Path(config.target), Path(config.retrain) if config.retrain else None, Path(config.corpus))


QUANTIZED_STAMP = "qunlearn_config_hash.txt"  # the run hash a saved quantized checkpoint was made under


def same_unlearning(out_dir: Path, method: str, settings: UnlearnSettings) -> bool:
    """Whether `out_dir` holds (a finished or interrupted) unlearning run of `method` with these settings, so that
    it can be resumed or reused; a run with other settings is unlearned again (and says which setting changed)."""
    record = out_dir / SETTINGS_FILE
    if not record.is_file():
        return False
    previous = read_yaml(record) or {}
    wanted = asdict(settings.resolve(get_method(method), 1))
    old = previous.get("settings") or {}
    changed = [f"{k}: {old.get(k)!r} → {v!r}" for k, v in wanted.items() if old.get(k) != v]
    if previous.get("method") == method and not changed:
        return True
    print(
        f"{method}: unlearning settings changed since {record} was written ({'; '.join(changed) or 'method'}); "
        "unlearning again"
    )
    return False


class RunDriver:
    """Runs one RunConfig; `run()` fills every missing cell and returns the results path."""

    def __init__(self, config: RunConfig, progress: bool = True):
        config.validate()
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.results = self.out / RESULTS_FILE
        self.run_hash = config_hash(config)

    def models(self) -> list[str]:
        return [m for m in FIXED_MODELS if m != "retrain" or self.inputs.retrain is not None] + self.config.methods

    def run(self) -> Path:
        check_inputs(self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(self.out / RUN_FILE, asdict(self.config) | {"config_hash": self.run_hash})
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
                    metrics = [c[2] for c in cells if c[1] == quantizer and c[2] != CODE_FLIPS]
                    if metrics:
                        self.evaluate_cell(model_name, path, quantizer, metrics, bar)
                schemes = [c[1] for c in cells if c[2] == CODE_FLIPS]
                if schemes:
                    self.code_flips_cells(model_name, path, schemes, bar)
        if self.progress:
            print(
                f"grid: {len(todo)} cells computed in {time.perf_counter() - start:.0f} s, "
                f"{len(done)} reused; results in {self.results}"
            )
        return self.results

    def todo(self, done: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Every cell of the grid not yet in results.jsonl, in run order."""
        cells = []
        for model in self.models():
            for quantizer in self.config.quantizers:
                for metric in self.config.metrics:
                    if (model, quantizer, cell_marker(metric)) not in done:
                        cells.append((model, quantizer, metric))
            if model in self.config.methods:
                cells += [
                    (model, s, CODE_FLIPS) for s in self.config.codeflip_schemes if (model, s, CODE_FLIPS) not in done
                ]
        return cells

    def checkpoint(self, model_name: str, bar: tqdm) -> Path:
        """The model's checkpoint: target/retrain as given, methods unlearned once (resumed if interrupted)."""
        if model_name == "target":
            return self.inputs.target
        if model_name == "retrain":
            return self.inputs.retrain
        bar.set_postfix_str(f"unlearn {model_name}")
        out_dir = self.out / "models" / model_name
        settings = UnlearnSettings(**self.config.unlearn)
        return unlearn(
            self.inputs.target,
            self.corpus,
            model_name,
            out_dir,
            settings,
            progress=False,
            resume=same_unlearning(out_dir, model_name, settings),
            tokenizer=self.config.tokenizer,
            trust_remote_code=self.config.trust_remote_code,
        )

    @property
    def loading(self) -> dict[str, Any]:
        """`load_model`'s options for the run's models (target, retrain, unlearned, quantized): the config's."""
        return {
            "dtype": self.config.dtype,
            "device": self.config.device,
            "device_map": self.config.device_map,
            "tokenizer": self.config.tokenizer,
            "trust_remote_code": self.config.trust_remote_code,
        }

    @cached_property
    def calibration(self) -> list[str]:
        """Calibration text for GPTQ/AWQ, read once per run."""
        return calibration_texts(corpus_dir=self.inputs.corpus_dir, calibrate_on=self.config.calibration)

    def quantized(self, model_name: str, path: Path, quantizer_name: str):
        """Load the model and quantize it, recording the quantizer's fallbacks in the run's `quantizer_fallbacks.json`
        at once; a quantized checkpoint saved by a run with the same settings is reused when its fallbacks are on
        record (so a rerun never loses them)."""
        saved = self.out / "models" / "quantized" / f"{model_name}@{quantizer_name}"
        stamp = saved / QUANTIZED_STAMP
        fallbacks_file = self.out / FALLBACKS_FILE
        if (
            quantizer_name != "fp"
            and stamp.is_file()
            and read_text(stamp).strip() == self.run_hash
            and cell_key(model_name, quantizer_name) in load_fallbacks(fallbacks_file, self.run_hash)
        ):
            return load_model(saved, **self.loading | {"tokenizer": None})  # saved with its tokenizer
        model, tokenizer = load_model(path, **self.loading)
        quantizer = make_quantizer(quantizer_name, self.config.quantize)
        if not quantizer.available():
            raise QuantizerUnavailableError(f"{quantizer_name} not available: {quantizer.unavailable_reason()}")
        texts = self.calibration if quantizer.needs_calibration else None
        quantizer.quantize(model, tokenizer, texts)
        record_fallbacks(fallbacks_file, model_name, quantizer_name, self.run_hash, quantizer.fallbacks)
        check_finite(model, f"{model_name} quantized with {quantizer_name}")  # no score for a broken result
        if quantizer_name != "fp" and self.config.keep_quantized:
            save_model(model, tokenizer, saved)
            atomic_write_text(stamp, self.run_hash + "\n")
        return model, tokenizer

    @cached_property
    def auc_retrain(self) -> float | None:
        """AUC_retrain for PrivLeak, computed (or read from its cache) once per run."""
        if "privleak" not in self.config.metrics or self.inputs.retrain is None:
            return None
        return retrain_auc(
            self.inputs.retrain,
            self.corpus,
            batch_size=self.config.batch_size,
            progress=False,
            cache_dir=self.out,
            **self.loading,
        )

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
            result = evaluate_model(
                model,
                tokenizer,
                self.corpus,
                [metric],
                retrain_auc=self.auc_retrain,
                batch_size=self.config.batch_size,
                progress=False,
            )[metric]
            details = _read_cell(cell_file) | {metric: result}
            atomic_write_json(cell_file, details)
            for line in metric_records(model_name, quantizer, metric, result, self.run_hash):
                append_jsonl(self.results, line)
            bar.update(1)

    def code_flips_cells(self, model_name: str, path: Path, schemes: list[str], bar: tqdm) -> None:
        """Share of quantized codes that differ between the target and this model, per scheme, and for grid schemes
        the update size against the scheme's step (`quant.diagnostics.update_size`)."""
        on_cpu = self.loading | {"device": "cpu", "device_map": None}
        target, tokenizer = load_model(self.inputs.target, **on_cpu)
        model, _ = load_model(path, **on_cpu)
        for scheme in schemes:
            bar.set_postfix_str(f"{model_name}: code flips {scheme}")
            quantizer = make_quantizer(scheme, self.config.quantize)
            texts = self.calibration if quantizer.needs_calibration else None
            flips = code_flips(target, model, quantizer, tokenizer, texts)
            overall = flips["overall"]
            extra = {"below_half_step": overall.get("below_half_step_fraction"), "weights": overall["weights"]}
            if isinstance(quantizer, GridQuantizer):  # update sizes against the scheme's RTN step
                extra |= update_size_fields(update_size(target, model, quantizer.bits, quantizer.group_size))
            append_jsonl(
                self.results, record(model_name, scheme, CODE_FLIPS, overall["flip_fraction"], self.run_hash, extra)
            )
            atomic_write_json(self.out / "cells" / model_name / f"codeflips_{scheme}.json", flips)
            bar.update(1)


def _read_cell(path: Path) -> dict[str, Any]:
    return json.loads(read_text(path)) if path.is_file() else {}


def run_grid(config: RunConfig, progress: bool = True) -> Path:
    """Fill every missing cell of `config`'s grid; returns the results.jsonl path."""
    torch.manual_seed(0)
    return RunDriver(config, progress).run()


def run_and_report(config: RunConfig, resume: bool, progress: bool = True) -> dict[str, Path]:
    """Run the grid (refusing to mix with earlier results unless resuming) and write the report; returns the report
    files by name. The run directory is checked first (never an input, never a foreign directory) and locked."""
    config.validate()
    check_inputs(config)
    out = Path(config.out)
    check_output_dir(out, RUN_FILE, "a run directory", {f: getattr(config, f) for f in ("target", "retrain", "corpus")})
    with output_lock(out):
        results = out / RESULTS_FILE
        if not resume and finished_cells(results, config_hash(config)):
            raise OutputConflictError(
                f"{results} already holds results of this run; pass --resume to continue it or choose another --out"
            )
        run_grid(config, progress=progress)
        return write_report(out, config_hash(config))
