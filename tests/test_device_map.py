"""`--device-map` reaches from_pretrained from evaluate, run (config field) and audit, and loads on CPU.
(A real spread over several GPUs cannot run here; "auto" is HF's placement.)"""

from __future__ import annotations

import argparse

import pytest
from transformers import AutoModelForCausalLM

from qunlearn.cli import main
from qunlearn.models import io


@pytest.fixture
def seen_device_maps(monkeypatch) -> list:
    """Record the device_map of every from_pretrained call (the call itself still runs)."""
    seen, real = [], AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(io.AutoModelForCausalLM, "from_pretrained", spy)
    return seen


def test_load_model_places_the_model_with_the_device_map(tiny_benchmark, seen_device_maps):
    model, _ = io.load_model(tiny_benchmark.target_dir, device_map="cpu")
    assert seen_device_maps == ["cpu"] and model.device.type == "cpu" and not model.training
    io.load_model(tiny_benchmark.target_dir)
    assert seen_device_maps[-1] is None  # without the option: from_pretrained, then .to(device)


def test_evaluate_passes_device_map_and_records_it(tiny_benchmark, seen_device_maps, tmp_path):
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_benchmark.target_dir),
                "--corpus",
                str(tiny_benchmark.corpus_dir),
                "--metrics",
                "knowmem_f",
                "--device-map",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert seen_device_maps == ["cpu"] and '"device_map": "cpu"' in out.read_text()


def test_audit_and_run_settings_carry_the_device_map():
    from qunlearn.audit.run import AuditSettings
    from qunlearn.commands import audit
    from qunlearn.config import RunConfig
    from qunlearn.pipeline import config_hash

    parser = argparse.ArgumentParser()
    audit.register(parser.add_subparsers())
    args = parser.parse_args(
        ["audit", "--target", "t", "--unlearned", "u", "--corpus", "c", "--out", "o", "--device-map", "auto"]
    )
    assert AuditSettings.from_cli(args).device_map == "auto"
    # where the model sits does not change a run's results: the resume hash ignores it, as it ignores --device
    assert config_hash(RunConfig(out="x", device_map="auto")) == config_hash(RunConfig(out="x"))
