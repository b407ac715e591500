"""Run settings as dataclasses: presets for the embedded benchmark, the grid's run config (YAML in and out) and the
demo's settings, each with its validation."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from qunlearn.data.synthetic import FLAVOURS, SyntheticSizes
from qunlearn.errors import UserInputError
from qunlearn.evaluate.registry import METRICS
from qunlearn.fileio import read_yaml
from qunlearn.models.io import parse_dtype
from qunlearn.quant.activations import OFFLOAD
from qunlearn.quant.registry import QUANTIZERS, quantizer_fields
from qunlearn.unlearn.methods import METHODS
from qunlearn.unlearn.settings import UnlearnSettings

T = TypeVar("T")


@dataclass(frozen=True)
class ModelShape:
    """Llama architecture sizes for a model trained from scratch."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512


@dataclass(frozen=True)
class TrainSettings:
    """From-scratch training of the target and retrain models (AdamW, warm-up then cosine decay)."""

    epochs: int
    batch_size: int
    lr: float
    max_length: int = 256
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0


@dataclass(frozen=True)
class Preset:
    """Everything `qunlearn prepare` needs besides seed, flavour and dtype."""

    name: str
    model: ModelShape
    train: TrainSettings
    sizes: SyntheticSizes = field(default_factory=SyntheticSizes)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        model=ModelShape(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176, vocab_size=768),
        train=TrainSettings(epochs=60, batch_size=8, lr=3e-3, max_length=128),
        sizes=SyntheticSizes(n_forget=8, n_retain=24, n_holdout=8, n_icl=2),
    ),
    "small": Preset(
        name="small",
        model=ModelShape(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384, vocab_size=2048),
        train=TrainSettings(epochs=50, batch_size=8, lr=3e-3, max_length=128),
        sizes=SyntheticSizes(n_forget=24, n_retain=72, n_holdout=24, n_icl=3),
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts (for YAML/JSON)."""
    return asdict(obj)


SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "None": (type(None),),
}


def validate_type(value: Any, annotation: str, where: str) -> None:
    """Validate a YAML value against a field's annotation ('float | None', 'list[str]', 'dict[str, Any]', ...).

    Numbers must be finite; bool is not taken for int or float. The error names the field and the value.
    """
    options = [a.strip() for a in annotation.split("|")]
    for option in options:
        base, _, inner = option.partition("[")
        if base == "Any":
            return
        if base in ("list", "tuple") and isinstance(value, (list, tuple)):
            element = inner.rstrip("]").split(",")[0].strip()
            for i, item in enumerate(value):
                validate_type(item, element, f"{where}[{i}]")
            return
        if base == "dict" and isinstance(value, dict):
            return
        kinds = SCALARS.get(base)
        if kinds and isinstance(value, kinds) and not (isinstance(value, bool) and base in ("int", "float")):
            if isinstance(value, float) and not math.isfinite(value):
                raise UserInputError(f"{where}: must be a finite number, got {value}")
            return
    raise UserInputError(f"{where}: expected {annotation}, got {type(value).__name__} {value!r}")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a dict, rejecting unknown or missing fields with the field's path."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    kwargs = {}
    for name, spec in known.items():
        if name not in data:
            continue
        value = data[name]
        nested = spec.type if isinstance(spec.type, type) else globals().get(str(spec.type))
        if nested is not None and hasattr(nested, "__dataclass_fields__"):
            value = from_dict(nested, value, f"{where}.{name}")
        else:
            validate_type(value, str(spec.type), f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


DEFAULT_METHODS = [
    "ga",
    "ga_gdr",
    "ga_klr",
    "npo",
    "npo_gdr",
    "npo_klr",
    "ga_sure",
    "ga_gdr_sure",
    "ga_klr_sure",
    "npo_sure",
    "npo_gdr_sure",
    "npo_klr_sure",
]
DEFAULT_QUANTIZERS = ["fp", "rtn8", "rtn4", "gptq4", "awq4"]
DEFAULT_METRICS = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "utility"]
QUICK_METHODS = ["ga", "ga_gdr", "npo", "ga_sure", "npo_sure"]
QUICK_QUANTIZERS = ["fp", "rtn8", "rtn4"]
ALL_FLAVOURS = (*FLAVOURS, "tofu")  # the MUSE-layout flavours, and the TOFU-layout one (`evaluate --benchmark tofu`)


@dataclass(frozen=True)
class BenchmarkSettings:
    """The embedded benchmark to prepare (`qunlearn prepare`, or a run that names no target model)."""

    preset: str = "small"
    flavour: str = "news"
    seed: int = 0
    dtype: str = "fp32"

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> BenchmarkSettings:
        """The settings `qunlearn prepare`'s flags give, validated."""
        settings = cls(preset=args.preset, flavour=args.flavour, seed=args.seed, dtype=args.dtype)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject an unknown dtype, flavour or preset."""
        parse_dtype(self.dtype)
        if self.flavour not in ALL_FLAVOURS:
            raise UserInputError(f"unknown flavour '{self.flavour}'; choose one of {', '.join(ALL_FLAVOURS)}")
        get_preset(self.preset)


@dataclass(frozen=True)
class RunConfig:
    """One grid run: models (target, retrain, each method) × quantizers × metrics, stored under `out`.

    With `target` unset, the embedded benchmark (`benchmark`) supplies target, retrain and corpus.
    `unlearn` holds UnlearnSettings overrides (lr, epochs, profile, ...); `quantize` holds quantizer
    options (group_size, n_samples, ...); `calibration` is 'generic' (retain+holdout) or 'forget'.
    `tokenizer` is a tokenizer directory (or hub id) for target/retrain checkpoints saved without tokenizer files;
    `trust_remote_code` lets every model of the run load with its own Python code (`auto_map`; off by default).
    """

    out: str
    target: str | None = None
    retrain: str | None = None
    corpus: str | None = None
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    quantizers: list[str] = field(default_factory=lambda: list(DEFAULT_QUANTIZERS))
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    codeflip_schemes: list[str] = field(default_factory=lambda: ["rtn4", "rtn8"])
    calibration: str = "generic"
    unlearn: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    device_map: str | None = None
    dtype: str = "fp32"
    batch_size: int = 16
    keep_quantized: bool = True
    tokenizer: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> RunConfig:
        """`qunlearn run`'s settings: the --config YAML, with --out (when given) over its `out`, validated."""
        config = load_run_config(args.config, args.out)
        config.validate()
        return config

    def validate(self) -> None:
        """Reject unknown names (listing the valid ones) and bad settings before any work starts, naming the field."""
        for kind, key, valid in (
            ("method", "methods", METHODS),
            ("quantizer", "quantizers", QUANTIZERS),
            ("metric", "metrics", METRICS),
            ("codeflip scheme", "codeflip_schemes", QUANTIZERS),
        ):
            names = getattr(self, key)
            unknown = [n for n in names if n not in valid]
            if unknown:
                raise UserInputError(f"{key}: unknown {kind}(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
            if not names and key != "codeflip_schemes":
                raise UserInputError(f"{key}: empty list; name at least one of {', '.join(valid)}")
        if self.calibration not in ("generic", "forget"):
            raise UserInputError(f"calibration must be 'generic' or 'forget', got '{self.calibration}'")
        if self.target is not None and self.corpus is None:
            raise UserInputError("a run with 'target' also needs 'corpus' (a MUSE-layout directory)")
        if "privleak" in self.metrics and self.target is not None and self.retrain is None:
            raise UserInputError("metric 'privleak' needs 'retrain' (AUC_retrain comes from the retrain model)")
        if self.batch_size < 1:
            raise UserInputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.target is None:  # the embedded benchmark supplies the models and corpus
            if self.benchmark.flavour not in FLAVOURS:
                raise UserInputError(
                    f"benchmark.flavour: '{self.benchmark.flavour}' is not a MUSE-layout flavour "
                    f"({', '.join(FLAVOURS)}); TOFU-style benchmarks are scored with `qunlearn evaluate "
                    "--benchmark tofu`"
                )
            self.benchmark.validate()
        from_dict(UnlearnSettings, self.unlearn, "unlearn")  # unknown names and wrong types fail here, naming the field
        _validate_quantize_options(self.quantize, self.quantizers + self.codeflip_schemes)


def _validate_quantize_options(options: dict[str, Any], names: list[str]) -> None:
    """Each `quantize:` option must apply to at least one quantizer of the grid, with a valid value."""
    for option, value in options.items():
        takers = [n for n in names if option in quantizer_fields(n)]
        if not takers:
            raise UserInputError(
                f"quantize.{option}: applies to none of the grid's quantizers ({', '.join(dict.fromkeys(names))})"
            )
        validate_type(value, quantizer_fields(takers[0])[option], f"quantize.{option}")
        if option in ("n_samples", "seq_len") and value < 1:
            raise UserInputError(f"quantize.{option}: must be at least 1, got {value}")
        if option == "offload_activations" and value not in OFFLOAD:
            raise UserInputError(f"quantize.offload_activations: must be one of {', '.join(OFFLOAD)}, got '{value}'")
        if option == "group_size" and not (value > 0 or value == -1):
            raise UserInputError(f"quantize.group_size: must be positive or -1 (per row), got {value}")


@dataclass(frozen=True)
class DemoSettings:
    """`qunlearn demo`: the paper's experiment on the embedded benchmark, written to `out`; `quick` runs a subset."""

    out: str
    quick: bool = False
    flavour: str = "news"
    seed: int = 0

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> DemoSettings:
        """The settings `qunlearn demo`'s flags give (the output directory's default depends on --quick), validated."""
        out = args.out or ("qunlearn-demo-quick" if args.quick else "qunlearn-demo")
        settings = cls(out=out, quick=args.quick, flavour=args.flavour, seed=args.seed)
        settings.validate()
        return settings

    def validate(self) -> None:
        """The demo's grid must be a valid run (a MUSE-layout flavour)."""
        self.run_config().validate()

    def run_config(self) -> RunConfig:
        """The demo grid: all 12 methods × fp/rtn8/rtn4/gptq4/awq4 on `small`; a subset on `tiny` when quick."""
        return RunConfig(
            out=self.out,
            benchmark=BenchmarkSettings(preset="tiny" if self.quick else "small", flavour=self.flavour, seed=self.seed),
            methods=list(QUICK_METHODS if self.quick else DEFAULT_METHODS),
            quantizers=list(QUICK_QUANTIZERS if self.quick else DEFAULT_QUANTIZERS),
            unlearn={"seed": self.seed},
        )


def load_run_config(path: str | Path, out: str | None = None) -> RunConfig:
    """Read a run config YAML; `out` (from --out) overrides the file's `out`."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of run settings")
    if out is not None:
        data["out"] = out
    if "out" not in data:
        raise UserInputError(f"{path}: field 'out' (the output directory) is required, or pass --out")
    return from_dict(RunConfig, data, str(path))
