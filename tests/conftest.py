"""Shared fixtures: one `tiny` embedded benchmark per test session (about 30 s on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from qunlearn.prepare import PreparedBenchmark, prepare_benchmark

# The test models are tiny: one thread is as fast as two for them and immune to oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> PreparedBenchmark:
    """Corpus, tokenizer, target and retrain models of the `tiny` preset, seed 0 (read-only for tests)."""
    return prepare_benchmark(tmp_path_factory.mktemp("bench"), preset="tiny", seed=0, progress=False)
