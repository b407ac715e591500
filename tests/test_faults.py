"""Fault injection against the CLI: every bad input, broken model or occupied output ends in one line and a
documented exit code, no score or output is produced for a model that fails the integrity checks, and the
inputs are byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import qunlearn
from qunlearn.cli import main
from qunlearn.commands import quantize as quantize_command
from qunlearn.fileio import read_yaml
from qunlearn.models.integrity import nonfinite_tensors
from qunlearn.outputs import output_lock, staged_dir
from qunlearn.results import finished_cells

SRC = str(Path(qunlearn.__file__).resolve().parents[1])
WEIGHT = "model.layers.0.mlp.up_proj.weight"


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path → digest): equal before and after means untouched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run `qunlearn ARGV` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str, command: str, label: str, *fragments: str) -> None:
    """stderr is exactly one `qunlearn COMMAND: LABEL: ...` line holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"qunlearn {command}: {label}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def model_copy(tiny_benchmark, tmp_path):
    """A writable copy of the tiny target, to break in one way per test."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_benchmark.target_dir, copy)
    return copy


def edit_weights(model: Path, edit) -> None:
    weights = load_file(str(model / "model.safetensors"))
    edit(weights)
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})


def edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))


def nan_at(weights: dict[str, torch.Tensor], value: float = float("nan")) -> None:
    weights[WEIGHT][1, 2] = value


# --- broken models: no score, no quantization, no flips, no verdict -------------------------------------------

BROKEN = {
    "nan weight": (lambda m: edit_weights(m, nan_at), ["non-finite weights", WEIGHT, "1 NaN/inf"]),
    "inf weight": (lambda m: edit_weights(m, lambda w: nan_at(w, float("inf"))), ["non-finite weights", WEIGHT]),
    "missing tensor": (lambda m: edit_weights(m, lambda w: w.pop(WEIGHT)), ["1 tensor(s) missing", WEIGHT]),
    "extra tensor": (
        lambda m: edit_weights(m, lambda w: w.update({"model.extra.weight": torch.zeros(3)})),
        ["1 unexpected tensor(s)", "model.extra.weight"],
    ),
    "more layers in config": (lambda m: edit_config(m, num_hidden_layers=3), ["missing", "model.layers.2."]),
    "shape mismatch": (
        lambda m: edit_config(m, intermediate_size=160),
        ["shape(s) differ", "(176, 64) in the weights", "(160, 64) in the config"],
    ),
    "corrupt config.json": (
        lambda m: (m / "config.json").write_text('{"model_type": "llama",'),
        ["config.json: invalid JSON at line 1"],
    ),
    "config field of the wrong type": (lambda m: edit_config(m, hidden_size="big"), ["config.json", "hidden_size"]),
    "truncated safetensors": (
        lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:5000]),
        ["model.safetensors: not a readable safetensors file"],
    ),
    "garbage safetensors": (
        lambda m: (m / "model.safetensors").write_bytes(b"\x07" * 4096),
        ["model.safetensors: not a readable safetensors file"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_evaluate_refuses_a_broken_model(case, model_copy, tiny_benchmark, tmp_path, capsys):
    breaks, fragments = BROKEN[case]
    breaks(model_copy)
    before = tree_hash(model_copy)
    out = tmp_path / "eval.json"
    code, err = cli(
        capsys,
        "evaluate",
        "--model",
        model_copy,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--metrics",
        "knowmem_f",
        "--out",
        out,
        "--no-progress",
    )
    assert "knowmem_f" not in capsys.readouterr().out  # no score printed
    assert code == 2
    one_line(err, "evaluate", "model check failed", *fragments)
    assert not out.exists() and tree_hash(model_copy) == before


def test_a_checkpoint_that_needs_remote_code_is_refused_naming_why(model_copy, tmp_path, capsys):
    edit_config(model_copy, model_type="my-own-llama", auto_map={"AutoModelForCausalLM": "modeling_mine.MyLlama"})
    code, err = cli(capsys, "quantize", "--model", model_copy, "--scheme", "rtn4", "--out", tmp_path / "q")
    assert code == 2
    one_line(
        err,
        "quantize",
        "error",
        "config.json: the model needs its own Python code (auto_map)",
        "pass --trust-remote-code",
    )
    assert "trust_remote_code=True`" not in err


def test_trust_remote_code_loads_checkpoints_with_their_own_code_in_evaluate_and_audit_retrain_too(
    own_code_models, tiny_benchmark, tmp_path, capsys
):
    target, retrain, corpus = own_code_models.target, own_code_models.retrain, tiny_benchmark.corpus_dir
    before = tree_hash(retrain)
    evaluate = ["evaluate", "--model", target, "--retrain", retrain, "--corpus", corpus, "--no-progress"]
    evaluate += ["--metrics", "knowmem_f", "privleak", "--out", tmp_path / "eval.json"]
    code, err = cli(capsys, *evaluate)
    assert code == 2 and "needs its own Python code" in err  # without the flag: refused
    code, err = cli(capsys, *evaluate, "--trust-remote-code")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["privleak"]["value"] < 0 and metrics["knowmem_f"]["value"] > 0  # the target, against the retrain
    audit = ["audit", "--target", target, "--unlearned", retrain, "--retrain", retrain, "--corpus", corpus]
    code, err = cli(capsys, *audit, "--attacks", "rtn4", "--out", tmp_path / "audit", "--trust-remote-code")
    assert code == 0, err
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert "privleak" in record["baselines"]["unlearned"] and record["attacks"][0]["verdict"]
    assert tree_hash(retrain) == before


def test_quantize_codeflips_unlearn_and_audit_refuse_a_nan_model(model_copy, tiny_benchmark, tmp_path, capsys):
    edit_weights(model_copy, nan_at)
    before, target = tree_hash(model_copy), tiny_benchmark.target_dir
    code, err = cli(capsys, "quantize", "--model", model_copy, "--scheme", "rtn4", "--out", tmp_path / "q")
    assert code == 2 and not (tmp_path / "q").exists()
    one_line(err, "quantize", "model check failed", WEIGHT)
    code, err = cli(
        capsys, "codeflips", "--a", target, "--b", model_copy, "--scheme", "rtn4", "--out", tmp_path / "flips.json"
    )
    assert code == 2 and not (tmp_path / "flips.json").exists()
    one_line(err, "codeflips", "model check failed", WEIGHT)
    code, err = cli(
        capsys,
        "unlearn",
        "--method",
        "ga",
        "--target",
        model_copy,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--out",
        tmp_path / "u",
        "--max-steps",
        "1",
        "--quiet",
    )
    assert code == 2 and not (tmp_path / "u").exists()
    one_line(err, "unlearn", "model check failed", WEIGHT)
    assert "--lr" not in err  # the weights were NaN before training: no advice to lower the learning rate
    code, err = cli(
        capsys,
        "audit",
        "--target",
        target,
        "--unlearned",
        model_copy,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--attacks",
        "rtn4",
        "--out",
        tmp_path / "a",
    )
    assert code == 2 and not (tmp_path / "a").exists()
    one_line(err, "audit", "model check failed", WEIGHT)
    assert tree_hash(model_copy) == before


# --- inputs are read-only --------------------------------------------------------------------------------------


def test_quantize_out_equal_to_or_inside_the_model_is_refused(model_copy, capsys):
    before = tree_hash(model_copy)
    for out, relation in (
        (model_copy, "is the input --model"),
        (model_copy / "q", "is inside the input --model"),
        (model_copy.parent, "contains the input --model"),
    ):
        code, err = cli(capsys, "quantize", "--model", model_copy, "--scheme", "rtn4", "--out", out)
        assert code == 2
        one_line(err, "quantize", "output refused", f"--out {out} {relation}")
    assert tree_hash(model_copy) == before


def test_unlearn_out_equal_to_a_target_that_is_an_earlier_run_is_refused(model_copy, tiny_benchmark, capsys):
    (model_copy / "unlearn.yaml").write_text("method: ga\nstatus: complete\n")  # the target is an unlearning run
    before = tree_hash(model_copy)
    code, err = cli(
        capsys,
        "unlearn",
        "--method",
        "ga",
        "--target",
        model_copy,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--out",
        model_copy,
        "--quiet",
    )
    assert code == 2
    one_line(err, "unlearn", "output refused", "is the input --target")
    assert tree_hash(model_copy) == before


def test_evaluate_out_inside_the_corpus_is_refused(tiny_benchmark, capsys):
    before = tree_hash(tiny_benchmark.corpus_dir)
    code, err = cli(
        capsys,
        "evaluate",
        "--model",
        tiny_benchmark.target_dir,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--metrics",
        "knowmem_f",
        "--out",
        tiny_benchmark.corpus_dir / "eval.json",
    )
    assert code == 2
    one_line(err, "evaluate", "output refused", "is inside the input --corpus")
    assert tree_hash(tiny_benchmark.corpus_dir) == before


def test_run_config_with_out_inside_its_target_is_refused(tiny_benchmark, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: {tiny_benchmark.target_dir / 'run'}\ntarget: {tiny_benchmark.target_dir}\n"
        f"corpus: {tiny_benchmark.corpus_dir}\nmethods: [ga]\nmetrics: [knowmem_f]\n"
    )
    before = tree_hash(tiny_benchmark.target_dir)
    code, err = cli(capsys, "run", "--config", config)
    assert code == 2
    one_line(err, "run", "output refused", "is inside the input target")
    assert tree_hash(tiny_benchmark.target_dir) == before


# --- occupied outputs ------------------------------------------------------------------------------------------


def test_out_that_is_a_file_or_another_kind_of_output_is_refused(tiny_benchmark, tmp_path, capsys):
    target = tiny_benchmark.target_dir
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "unlearn.yaml").write_text("method: ga\n")  # an unlearning run, not a quantized checkpoint
    foreign_json = tmp_path / "data.json"
    foreign_json.write_text('{"mine": 1}')
    cases = [
        (["quantize", "--model", target, "--scheme", "rtn4", "--out", a_file], "quantize", "is a file"),
        (
            ["quantize", "--model", target, "--scheme", "rtn4", "--out", other],
            "quantize",
            "is not a quantized checkpoint (no quantize.yaml)",
        ),
        (
            ["unlearn", "--method", "ga", "--target", target, "--corpus", tiny_benchmark.corpus_dir, "--out", a_file],
            "unlearn",
            "is a file",
        ),
        (
            [
                "evaluate",
                "--model",
                target,
                "--corpus",
                tiny_benchmark.corpus_dir,
                "--metrics",
                "knowmem_f",
                "--out",
                foreign_json,
            ],
            "evaluate",
            "file exists and is not an evaluation result",
        ),
        (
            [
                "evaluate",
                "--model",
                target,
                "--corpus",
                tiny_benchmark.corpus_dir,
                "--metrics",
                "knowmem_f",
                "--out",
                other,
            ],
            "evaluate",
            "is a directory",
        ),
        (
            ["codeflips", "--a", target, "--b", target, "--scheme", "rtn4", "--out", foreign_json],
            "codeflips",
            "is not a code-flip result",
        ),
        (
            ["audit", "--target", target, "--unlearned", target, "--corpus", tiny_benchmark.corpus_dir, "--out", other],
            "audit",
            "is not an audit (no audit.json)",
        ),
        (["prepare", "--out", other, "--preset", "tiny"], "prepare", "is not a prepared benchmark"),
        (
            ["quantize", "--model", target, "--scheme", "rtn4", "--out", a_file / "q"],
            "quantize",
            f"{a_file} is a file, not a directory",
        ),
    ]
    before = tree_hash(tmp_path)
    for argv, command, fragment in cases:
        code, err = cli(capsys, *argv)
        assert code == 2, argv
        one_line(err, command, "output refused", fragment)
    assert tree_hash(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_out_in_a_read_only_directory_is_refused_before_any_work(tiny_benchmark, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    code, err = cli(capsys, "quantize", "--model", tiny_benchmark.target_dir, "--scheme", "rtn4", "--out", locked / "q")
    assert code == 2
    one_line(err, "quantize", "output refused", f"directory {locked} is not writable")


def test_a_failed_rerun_leaves_the_earlier_result_intact(tiny_benchmark, tmp_path, capsys, monkeypatch):
    out = tmp_path / "q"
    assert (
        cli(
            capsys,
            "quantize",
            "--model",
            tiny_benchmark.target_dir,
            "--scheme",
            "rtn8",
            "--group-size",
            "32",
            "--out",
            out,
        )[0]
        == 0
    )
    # rows of 64 weights take groups of 32; 32 does not divide rows of 176, which fall back to one group per row
    assert [(len(f["layers"]), f["used"]) for f in read_yaml(out / "quantize.yaml")["fallbacks"]] == [
        (2, "per-row scales")
    ]  # the two down_proj layers
    before = tree_hash(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quantize_command, "save_model", disk_full)
    code, err = cli(capsys, "quantize", "--model", tiny_benchmark.target_dir, "--scheme", "rtn4", "--out", out)
    assert code == 2
    one_line(err, "quantize", "error", "No space left on device")
    assert tree_hash(out) == before and read_yaml(out / "quantize.yaml")["scheme"] == "rtn8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no staging dir, no lock file left


def test_a_rerun_into_a_finished_unlearning_run_with_a_bad_target_keeps_the_run(
    tiny_benchmark, model_copy, tmp_path, capsys
):
    out = tmp_path / "run"
    common = [
        "unlearn",
        "--method",
        "ga",
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--out",
        out,
        "--quiet",
        "--max-steps",
        "1",
        "--max-length",
        "32",
        "--batch-size",
        "4",
    ]
    assert cli(capsys, *common, "--target", tiny_benchmark.target_dir)[0] == 0
    before = tree_hash(out)
    code, err = cli(capsys, *common, "--target", tmp_path / "absent")
    assert code == 2
    one_line(err, "unlearn", "error", "absent: directory not found")
    edit_weights(model_copy, nan_at)
    code, err = cli(capsys, *common, "--target", model_copy)
    assert code == 2
    one_line(err, "unlearn", "model check failed", WEIGHT)
    assert tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "run"]


def test_a_crash_between_the_two_renames_of_a_swap_gives_the_earlier_result_back(tmp_path):
    out = tmp_path / "result"
    old = tmp_path / ".result.old"  # what swap_in leaves when killed after moving the earlier result aside
    old.mkdir()
    (old / "quantize.yaml").write_text("scheme: rtn8\n")
    (tmp_path / ".result.staging").mkdir()
    with output_lock(out), staged_dir(out) as staging:
        assert (out / "quantize.yaml").read_text() == "scheme: rtn8\n"
        (staging / "quantize.yaml").write_text("scheme: rtn4\n")
    assert (out / "quantize.yaml").read_text() == "scheme: rtn4\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]


# --- one writer per output -------------------------------------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def test_a_second_process_on_the_same_out_stops_at_once(tiny_benchmark, tmp_path):
    out = tmp_path / "q"
    with output_lock(out):  # this test process is the first writer
        start = time.perf_counter()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "qunlearn.cli",
                "quantize",
                "--model",
                str(tiny_benchmark.target_dir),
                "--scheme",
                "rtn4",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=120,
            check=False,
        )
        elapsed = time.perf_counter() - start
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].startswith("qunlearn quantize: output refused: ")
    assert "another qunlearn process is writing it" in second.stderr
    assert not out.exists() and elapsed < 60


# --- kill -9 and resume ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_unlearning_then_resume_gives_the_uninterrupted_weights(tiny_benchmark, tmp_path, capsys):
    common = [
        "unlearn",
        "--method",
        "ga",
        "--target",
        str(tiny_benchmark.target_dir),
        "--corpus",
        str(tiny_benchmark.corpus_dir),
        "--quiet",
        "--epochs",
        "40",
        "--max-length",
        "32",
        "--batch-size",
        "4",
    ]
    whole = tmp_path / "whole"
    assert cli(capsys, *common, "--out", whole)[0] == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qunlearn.cli", *common, "--out", str(killed)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("epoch-[2-9]*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_yaml(killed / "unlearn.yaml")["status"] == "running"
    assert cli(capsys, *common, "--out", killed, "--resume")[0] == 0  # the dead process's lock is gone
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- results, run configs, paths, devices ----------------------------------------------------------------------


def test_malformed_results_lines_are_redone_not_a_traceback(tmp_path):
    results = tmp_path / "results.jsonl"
    good = {"model": "ga", "quantizer": "fp", "metric": "knowmem_f", "value": 1.0, "config_hash": "h"}
    results.write_text("\n".join([json.dumps(good), "[1, 2]", '{"model": "ga"}', '"text"', '{"cut": ']) + "\n")
    with pytest.warns(UserWarning, match="line 2 is cut or corrupt"):
        assert finished_cells(results, "h") == {("ga", "fp", "knowmem_f")}


RUN_CONFIG_ERRORS = [
    ("unlearn: {lr: fast}", "unlearn.lr: expected float | None, got str 'fast'"),
    ("unlearn: {grad_clip: .nan}", "unlearn.grad_clip: must be a finite number, got nan"),
    ("batch_size: -3", "batch_size must be at least 1, got -3"),
    ("batch_size: many", "run.yaml.batch_size: expected int, got str 'many'"),
    ("methods: []", "methods: empty list"),
    ("methods: ga", "run.yaml.methods: expected list[str], got str 'ga'"),
    (
        "quantizers: [fp, rtn4]\nquantize: {n_samples: 64}",
        "quantize.n_samples: applies to none of the grid's quantizers (fp, rtn4",
    ),
    ("quantizers: [gptq4]\nquantize: {n_samples: -1}", "quantize.n_samples: must be at least 1, got -1"),
    ("quantizers: [rtn4]\nquantize: {group_size: 0}", "quantize.group_size: must be positive or -1"),
    (
        "quantizers: [awq4]\nquantize: {offload_activations: ssd}",
        "quantize.offload_activations: must be one of none, cpu, disk, got 'ssd'",
    ),
    ("quantizers: [rtn4]\nquantize: {group_size: big}", "quantize.group_size: expected int, got str 'big'"),
    ("target: m/missing\ncorpus: c\nmetrics: [knowmem_f]", "target m/missing: directory not found"),
]


@pytest.mark.parametrize(("line", "message"), RUN_CONFIG_ERRORS)
def test_run_config_errors_stop_before_any_work(line, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()  # 'm/missing' looks like a path once 'm' exists: never a hub id
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path / 'out'}\n{line}\n")
    start = time.perf_counter()
    code, err = cli(capsys, "run", "--config", config)
    assert code == 2 and time.perf_counter() - start < 5
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_relative_path_that_does_not_exist_is_not_found_at_once(tiny_benchmark, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    for argv in (
        [
            "evaluate",
            "--model",
            "m/missing",
            "--corpus",
            tiny_benchmark.corpus_dir,
            "--metrics",
            "knowmem_f",
            "--out",
            "e.json",
        ],
        ["quantize", "--model", "./missing", "--scheme", "rtn4", "--out", "q"],
        ["codeflips", "--a", tiny_benchmark.target_dir, "--b", "m/x/y", "--scheme", "rtn4"],
    ):
        start = time.perf_counter()
        code, err = cli(capsys, *argv)
        assert code == 2 and time.perf_counter() - start < 5
        one_line(err, argv[0], "error", "directory not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_hub_id_while_offline_is_one_line(tiny_benchmark, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, err = cli(
        capsys,
        "evaluate",
        "--model",
        "nobody-here/no-model",
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--metrics",
        "knowmem_f",
        "--out",
        "e.json",
    )
    assert code == 2
    one_line(err, "evaluate", "error", "nobody-here/no-model", "offline (HF_HUB_OFFLINE)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tiny_benchmark, tmp_path, capsys):
    for argv in (
        [
            "evaluate",
            "--model",
            tiny_benchmark.target_dir,
            "--corpus",
            tiny_benchmark.corpus_dir,
            "--metrics",
            "knowmem_f",
            "--out",
            tmp_path / "e.json",
            "--device",
            "cuda",
        ],
        [
            "audit",
            "--target",
            tiny_benchmark.target_dir,
            "--unlearned",
            tiny_benchmark.target_dir,
            "--corpus",
            tiny_benchmark.corpus_dir,
            "--out",
            tmp_path / "a",
            "--device",
            "cuda:1",
        ],
    ):
        code, err = cli(capsys, *argv)
        assert code == 2
        one_line(err, argv[0], "error", "CUDA is not available here")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_and_out_of_context_settings_name_the_flag(tiny_benchmark, tmp_path, capsys):
    common = [
        "unlearn",
        "--method",
        "ga",
        "--target",
        tiny_benchmark.target_dir,
        "--corpus",
        tiny_benchmark.corpus_dir,
        "--quiet",
        "--max-steps",
        "1",
    ]
    code, err = cli(capsys, *common, "--out", tmp_path / "a", "--grad-clip", "nan")
    assert code == 2
    one_line(err, "unlearn", "error", "--grad-clip must be a finite number, got nan")
    code, err = cli(capsys, *common, "--out", tmp_path / "b", "--max-length", "100000")
    assert code == 2
    one_line(err, "unlearn", "error", "--max-length 100000 exceeds the model's context of 512 tokens")
    for flag, value, message in (
        ("--group-size", "0", "--group-size must be positive or -1 (per row), got 0"),
        ("--n-samples", "-2", "--n-samples must be at least 1, got -2"),
    ):
        code, err = cli(
            capsys,
            "quantize",
            "--model",
            tiny_benchmark.target_dir,
            "--scheme",
            "gptq4",
            flag,
            value,
            "--out",
            tmp_path / "q",
        )
        assert code == 2
        one_line(err, "quantize", "error", message)
    assert list(tmp_path.iterdir()) == []


def test_nonfinite_tensors_counts_nan_and_both_infinities_per_tensor():
    net = torch.nn.Linear(4, 3)
    net.register_buffer("steps", torch.tensor([7]))  # integer buffers are not weights
    with torch.no_grad():
        net.weight[0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    assert nonfinite_tensors(net) == {"weight": 3}
    with torch.no_grad():
        net.weight.zero_()
    assert nonfinite_tensors(net) == {}
