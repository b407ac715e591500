"""Shared fixtures: one `tiny` embedded benchmark per test session (about 30 s on 2 cores), and copies of its models
that load through their own Python code."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# transformers copies a checkpoint's own code into its modules cache to import it (read once, when transformers is
# imported): keep the tests' copies out of the user's home.
os.environ.setdefault("HF_MODULES_CACHE", str(Path(tempfile.gettempdir()) / "qunlearn-tests-hf-modules"))

from qunlearn.prepare import PreparedBenchmark, prepare_benchmark

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
