"""Shared fixtures: one `tiny` embedded benchmark per test session (about 30 s on 2 cores), copies of its models
that load through their own Python code, its target model with calibration text, and each model family as a
checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers as tf

# transformers copies a checkpoint's own code into its modules cache to import it (read once, when transformers is
# imported): keep the tests' copies out of the user's home.
os.environ.setdefault("HF_MODULES_CACHE", str(Path(tempfile.gettempdir()) / "qunlearn-tests-hf-modules"))

from helpers import family_configs
from qunlearn.models.io import load_model, load_tokenizer, save_model
from qunlearn.prepare import PreparedBenchmark, prepare_benchmark
from qunlearn.quant.calibration import calibration_texts

# The test models are tiny: one thread is as fast as two for them and immune to oversubscription.
torch.set_num_threads(1)

# A checkpoint's own code, as some hub models ship it: Llama under a model type transformers does not know.
OWN_MODELING = """from transformers import LlamaConfig, LlamaForCausalLM


class MyLlamaConfig(LlamaConfig):
    model_type = "my-own-llama"


class MyLlama(LlamaForCausalLM):
    config_class = MyLlamaConfig
"""
OWN_CONFIG = {
    "model_type": "my-own-llama",
    "architectures": ["MyLlama"],
    "auto_map": {"AutoConfig": "modeling_mine.MyLlamaConfig", "AutoModelForCausalLM": "modeling_mine.MyLlama"},
}


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> PreparedBenchmark:
    """Corpus, tokenizer, target and retrain models of the `tiny` preset, seed 0 (read-only for tests)."""
    return prepare_benchmark(tmp_path_factory.mktemp("bench"), preset="tiny", seed=0, progress=False)


@dataclass(frozen=True)
class OwnCodeModels:
    target: Path
    retrain: Path


def with_own_code(model_dir: Path, out: Path) -> Path:
    """A copy of a checkpoint whose config.json (`auto_map`) loads it through modeling_mine.py next to it."""
    shutil.copytree(model_dir, out)
    (out / "modeling_mine.py").write_text(OWN_MODELING)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | OWN_CONFIG))
    return out


@pytest.fixture(scope="session")
def own_code_models(tiny_benchmark, tmp_path_factory: pytest.TempPathFactory) -> OwnCodeModels:
    """The tiny target and retrain models as checkpoints that need --trust-remote-code (read-only for tests)."""
    root = tmp_path_factory.mktemp("own-code")
    return OwnCodeModels(
        with_own_code(tiny_benchmark.target_dir, root / "target"),
        with_own_code(tiny_benchmark.retrain_dir, root / "retrain"),
    )


@pytest.fixture(scope="module")
def tiny(tiny_benchmark):
    """The tiny target model, its tokenizer and calibration text (tests change copies of the model, not it)."""
    model, tokenizer = load_model(tiny_benchmark.target_dir)
    return model, tokenizer, calibration_texts(corpus_dir=tiny_benchmark.corpus_dir)


@pytest.fixture(scope="session")
def checkpoints(tiny_benchmark, tmp_path_factory) -> dict[str, Path]:
    """Each family saved as a HF checkpoint with the embedded benchmark's tokenizer (read-only for tests)."""
    tokenizer = load_tokenizer(tiny_benchmark.tokenizer_dir)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, config in family_configs(len(tokenizer), ids).items():
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config)
        out[family] = save_model(model, tokenizer, root / family)
    return out
