"""The grid runner: cells persisted as they finish, resume recomputes nothing, bad configs named early."""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

import pytest

from qunlearn.cli import main
from qunlearn.config import BenchmarkSettings, RunConfig, load_run_config
from qunlearn.errors import UserInputError
from qunlearn.fileio import append_jsonl, read_json, read_yaml
from qunlearn.pipeline import RunDriver, config_hash, run_and_report, run_grid
from qunlearn.report import build_report, headline, index_results
from qunlearn.results import finished_cells, load_results


def small_config(out: Path, bench_root: Path, **overrides) -> RunConfig:
    """Two methods × fp/rtn4 × two metrics on the session's tiny benchmark (no retraining)."""
    settings = {
        "out": str(out),
        "target": str(bench_root / "models/target"),
        "retrain": str(bench_root / "models/retrain"),
        "corpus": str(bench_root / "corpus"),
        "methods": ["ga", "ga_sure"],
        "quantizers": ["fp", "rtn4"],
        "metrics": ["knowmem_f", "verbmem_f"],
        "codeflip_schemes": ["rtn4"],
        "unlearn": {"epochs": 1},
        "batch_size": 32,
    }
    return RunConfig(**settings | overrides)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_grid_fills_every_cell_once_and_resume_recomputes_nothing(tiny_benchmark, tmp_path):
    config = small_config(tmp_path / "run", tiny_benchmark.root)
    results = run_grid(config, progress=False)
    first = records(results)
    cells = {(r["model"], r["quantizer"], r["metric"]) for r in first}
    models = ("target", "retrain", "ga", "ga_sure")
    expected = {(m, q, k) for m in models for q in ("fp", "rtn4") for k in ("knowmem_f", "verbmem_f")}
    assert cells == expected | {("ga", "rtn4", "codeflip"), ("ga_sure", "rtn4", "codeflip")}
    assert len(first) == len(cells)
    assert all(r["config_hash"] == config_hash(config) for r in first)
    flips = next(r for r in first if r["model"] == "ga" and r["metric"] == "codeflip")
    assert flips["extra"]["median_change_in_steps"] > 0 and 0 <= flips["extra"]["within_bin_fraction"] <= 1
    assert {"q_proj", "down_proj"} <= set(flips["extra"]["flips_by_type"])
    stamp = (tmp_path / "run/models/ga/model.safetensors").stat().st_mtime_ns
    run_grid(config, progress=False)
    assert records(results) == first
    assert (tmp_path / "run/models/ga/model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_grid_resumes_to_the_same_results(tiny_benchmark, tmp_path):
    whole = small_config(tmp_path / "whole", tiny_benchmark.root, methods=["ga"])
    run_grid(whole, progress=False)
    part = small_config(tmp_path / "part", tiny_benchmark.root, methods=["ga"])
    run_grid(part, progress=False)
    lines = (tmp_path / "part/results.jsonl").read_text().splitlines()
    # keep the first half and a line cut mid-write, as a crash would leave them
    (tmp_path / "part/results.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n" + lines[-1][:20])
    with pytest.warns(UserWarning, match="cut or corrupt"):
        run_grid(part, progress=False)
    key = lambda r: (r["model"], r["quantizer"], r["metric"])
    resumed = {key(r): r["value"] for r in load_results(tmp_path / "part/results.jsonl")}
    assert resumed == {key(r): r["value"] for r in load_results(tmp_path / "whole/results.jsonl")}
    head = headline(index_results(load_results(tmp_path / "part/results.jsonl")))
    assert head == headline(index_results(load_results(tmp_path / "whole/results.jsonl")))


def test_changed_settings_do_not_reuse_old_cells(tiny_benchmark, tmp_path):
    a = small_config(tmp_path, tiny_benchmark.root)
    b = small_config(tmp_path, tiny_benchmark.root, unlearn={"epochs": 2})
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(small_config(tmp_path, tiny_benchmark.root, methods=["npo"]))
    append_jsonl(
        tmp_path / "results.jsonl",
        {"model": "target", "quantizer": "fp", "metric": "knowmem_f", "value": 1.0, "config_hash": config_hash(a)},
    )
    assert finished_cells(tmp_path / "results.jsonl", config_hash(a)) == {("target", "fp", "knowmem_f")}
    assert finished_cells(tmp_path / "results.jsonl", config_hash(b)) == set()


def test_rerun_with_changed_unlearning_settings_unlearns_and_quantizes_again(tiny_benchmark, tmp_path, capsys):
    first = small_config(
        tmp_path / "run", tiny_benchmark.root, methods=["ga"], metrics=["knowmem_f"], codeflip_schemes=[]
    )
    run_grid(first, progress=False)
    stamp = tmp_path / "run/models/quantized/ga@rtn4/qunlearn_config_hash.txt"
    assert stamp.read_text().strip() == config_hash(first)
    second = small_config(
        tmp_path / "run",
        tiny_benchmark.root,
        methods=["ga"],
        metrics=["knowmem_f"],
        codeflip_schemes=[],
        unlearn={"epochs": 1, "lr": 5e-4},
    )
    run_grid(second, progress=False)
    said = capsys.readouterr().out
    assert "ga: unlearning settings changed" in said and "lr: 0.001 → 0.0005" in said
    record = read_yaml(tmp_path / "run/models/ga/unlearn.yaml")
    assert record["settings"]["lr"] == 5e-4 and record["status"] == "complete"
    assert stamp.read_text().strip() == config_hash(second)  # the old quantized checkpoint was not reused
    assert finished_cells(tmp_path / "run/results.jsonl", config_hash(second)) == {
        (m, q, "knowmem_f") for m in ("target", "retrain", "ga") for q in ("fp", "rtn4")
    }


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("methods", ["ga", "forgetful"], "unknown method(s) forgetful; valid: ga, ga_gdr"),
        ("quantizers", ["rtn5x"], "unknown quantizer(s) rtn5x; valid: fp, rtn8"),
        ("metrics", ["bleu"], "unknown metric(s) bleu; valid: verbmem_f"),
        ("calibration", "web", "calibration must be 'generic' or 'forget'"),
    ],
)
def test_bad_config_names_are_listed_before_work(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(out=str(tmp_path), **{field: value}).validate()


def test_missing_model_directory_fails_before_any_work(tmp_path):
    config = RunConfig(
        out=str(tmp_path / "out"),
        target=str(tmp_path / "absent"),
        corpus=str(tmp_path),
        retrain=str(tmp_path / "absent"),
        metrics=["knowmem_f"],
    )
    with pytest.raises(UserInputError, match="target .*absent: directory not found"):
        RunDriver(config, progress=False).run()
    assert not (tmp_path / "out/results.jsonl").exists()


def test_run_config_yaml_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("out: x\nmethodz: [ga]\n")
    with pytest.raises(ValueError, match=r"run\.yaml: unknown field\(s\) methodz"):
        load_run_config(path)
    path.write_text("benchmark: {preset: tiny}\n")
    assert load_run_config(path, out="y").benchmark == BenchmarkSettings(preset="tiny")
    assert main(["run", "--config", str(tmp_path / "none.yaml")]) == 2


def test_trust_remote_code_in_a_run_config_reaches_every_model_the_run_loads(own_code_models, tiny_benchmark, tmp_path):
    own = {"target": str(own_code_models.target), "retrain": str(own_code_models.retrain)}
    config = small_config(tmp_path / "run", tiny_benchmark.root, methods=["ga"], metrics=["knowmem_f", "privleak"])
    config = replace(config, **own, trust_remote_code=True)
    with pytest.raises(UserInputError, match="needs its own Python code"):
        run_grid(replace(config, out=str(tmp_path / "refused"), trust_remote_code=False), progress=False)
    assert config_hash(config) == config_hash(replace(config, trust_remote_code=False))  # it changes no value
    results = run_grid(config, progress=False)  # target, retrain (AUC_retrain), unlearned, quantized, code flips
    values = {(r["model"], r["quantizer"], r["metric"]): r["value"] for r in records(results)}
    assert len(values) == 3 * 2 * 2 + 1 and values[("target", "fp", "privleak")] < 0
    assert read_yaml(tmp_path / "run/config.yaml")["trust_remote_code"] is True
    saved = tmp_path / "run/models/quantized/ga@rtn4"
    assert (saved / "modeling_mine.py").is_file()  # saved with its own code
    stamp = (saved / "model.safetensors").stat().st_mtime_ns
    results.unlink()
    run_grid(config, progress=False)  # now from the saved quantized checkpoints
    assert {(r["model"], r["quantizer"], r["metric"]): r["value"] for r in records(results)} == values
    assert (saved / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not quantized again
    (tmp_path / "run.yaml").write_text("out: x\ntrust_remote_code: 'yes'\n")
    with pytest.raises(UserInputError, match=r"run\.yaml\.trust_remote_code: expected bool"):
        load_run_config(tmp_path / "run.yaml")


def test_example_config_is_valid():
    config = load_run_config(Path(__file__).parent.parent / "examples/muse-news-llama2-7b.yaml")
    config.validate()
    assert config.unlearn["profile"] == "muse" and "gptq4" in config.quantizers


def test_report_headline_matches_results(tiny_benchmark, tmp_path):
    config = small_config(tmp_path / "run", tiny_benchmark.root)
    run_grid(config, progress=False)
    assert main(["report", "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["headline"] == build_report(load_results(tmp_path / "run/results.jsonl")).headline


# --- quantizer fallbacks: recorded per cell at once, kept by a resumed run, said in the report ---------------------

ROWS_OF_64 = (
    "rtn4 fallback: group size 48 does not divide rows of 64 weights; per-row scales used instead for 12 layers"
)
ROWS_OF_176 = (
    "rtn4 fallback: group size 48 does not divide rows of 176 weights; per-row scales used instead for 2 layers"
)


def fallback_config(out: Path, bench_root: Path) -> RunConfig:
    """rtn4 with groups of 48, which divide neither the tiny model's 64- nor its 176-weight rows."""
    return small_config(
        out,
        bench_root,
        methods=["ga"],
        quantizers=["rtn4", "fp"],
        metrics=["knowmem_f"],
        codeflip_schemes=[],
        quantize={"group_size": 48},
    )


def test_fallbacks_are_recorded_before_evaluation_and_a_resumed_run_reports_them(tiny_benchmark, tmp_path, monkeypatch):
    config = fallback_config(tmp_path / "run", tiny_benchmark.root)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed during the first evaluation, right after target was quantized with rtn4

    monkeypatch.setattr("qunlearn.pipeline.evaluate_model", crash)
    with pytest.raises(KeyboardInterrupt):
        run_and_report(config, resume=False, progress=False)
    record = read_json(tmp_path / "run/quantizer_fallbacks.json")
    assert list(record) == ["target@rtn4"] and record["target@rtn4"]["config_hash"] == config_hash(config)
    assert sorted((len(f["layers"]), f["used"]) for f in record["target@rtn4"]["fallbacks"]) == [
        (2, "per-row scales"),
        (12, "per-row scales"),
    ]
    saved = tmp_path / "run/models/quantized/target@rtn4/model.safetensors"
    stamp = saved.stat().st_mtime_ns

    monkeypatch.undo()
    written = run_and_report(config, resume=True, progress=False)
    assert saved.stat().st_mtime_ns == stamp  # the saved checkpoint was reused, not quantized again
    record = read_json(tmp_path / "run/quantizer_fallbacks.json")
    assert set(record) == {f"{m}@{q}" for m in ("target", "retrain", "ga") for q in ("rtn4", "fp")}
    assert record["ga@fp"]["fallbacks"] == [] and record["ga@rtn4"] == record["target@rtn4"] | {"model": "ga"}
    md = written["report.md"].read_text()
    for line in (ROWS_OF_64, ROWS_OF_176):
        assert md.count(line) == 1  # the same fallback on every model is said once, with the models
        assert f"- {line} (e.g. model.layers.0." in md and md.split(line)[1].split("\n")[0].endswith(
            ", on target, retrain, ga."
        )
    assert md.index("## Headline") < md.index("## Quantizer fallbacks") < md.index("## MUSE metrics")
    notes = json.loads(written["report.json"].read_text())["quantizer_fallbacks"]
    assert [(n["quantizer"], n["used"], n["layers"], n["models"]) for n in notes] == [
        ("rtn4", "per-row scales", 12, ["target", "retrain", "ga"]),
        ("rtn4", "per-row scales", 2, ["target", "retrain", "ga"]),
    ]
    assert notes[1]["example_layer"] == "model.layers.0.mlp.down_proj"
    assert html.escape(notes[1]["text"]) in written["report.html"].read_text()


def test_a_saved_quantized_checkpoint_without_its_fallback_record_is_quantized_again(tiny_benchmark, tmp_path):
    config = replace(fallback_config(tmp_path / "run", tiny_benchmark.root), quantizers=["rtn4"])
    run_grid(config, progress=False)
    (tmp_path / "run/quantizer_fallbacks.json").unlink()  # e.g. a run directory from before fallbacks were kept
    (tmp_path / "run/results.jsonl").unlink()
    run_grid(config, progress=False)
    record = read_json(tmp_path / "run/quantizer_fallbacks.json")
    assert set(record) == {"target@rtn4", "retrain@rtn4", "ga@rtn4"}
    assert all(len(r["fallbacks"]) == 2 for r in record.values())
