"""The command line's own behaviour: version, flags to settings, and no process-wide side effects from importing the
library."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qunlearn import __version__
from qunlearn.audit.run import AuditSettings
from qunlearn.cli import build_parser, main
from qunlearn.config import BenchmarkSettings, DemoSettings, RunConfig
from qunlearn.errors import UserInputError
from qunlearn.evaluate.run import EvaluateSettings
from qunlearn.quant.scheme import SchemeSettings
from qunlearn.unlearn.settings import UnlearnSettings


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"qunlearn {__version__}"


def test_importing_the_library_leaves_transformers_progress_bars_on():
    code = (
        "import qunlearn.models.io, qunlearn.pipeline, qunlearn.audit.run; "
        "from transformers.utils import logging; print(logging.is_progress_bar_enabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


# Each command that turns flags into settings does it through its settings' `from_cli`; with the defaults of every
# flag, each must build (a field without a flag would raise AttributeError) and pass its own validation.
FROM_CLI = [
    (["prepare", "--out", "o"], BenchmarkSettings),
    (["demo"], DemoSettings),
    (["unlearn", "--method", "npo_sure", "--target", "t", "--corpus", "c", "--out", "o"], UnlearnSettings),
    (["quantize", "--model", "m", "--scheme", "gptq4", "--out", "o"], SchemeSettings),
    (["codeflips", "--a", "a", "--b", "b", "--scheme", "rtn4"], SchemeSettings),
    (["evaluate", "--model", "m", "--corpus", "c", "--out", "o.json"], EvaluateSettings),
    (["audit", "--target", "t", "--unlearned", "u"], AuditSettings),
]


@pytest.mark.parametrize(("argv", "settings"), FROM_CLI, ids=[argv[0] for argv, _ in FROM_CLI])
def test_every_command_builds_its_settings_from_its_flags(argv, settings):
    assert isinstance(settings.from_cli(build_parser().parse_args(argv)), settings)


def test_from_cli_maps_switches_and_defaults_and_validates(tmp_path):
    parse = build_parser().parse_args
    audit = AuditSettings.from_cli(parse(["audit", "--demo", "--no-code-flips", "--no-builtin-tasks"]))
    assert not audit.code_flips and not audit.builtin_tasks and audit.threshold == 0.5
    assert DemoSettings.from_cli(parse(["demo", "--quick"])).out == "qunlearn-demo-quick"
    evaluate = EvaluateSettings.from_cli(parse(["evaluate", "--model", "m", "--corpus", "c", "--out", "o"]))
    assert evaluate.muse_metrics == ["verbmem_f", "knowmem_f", "knowmem_r", "utility"] and evaluate.progress
    (tmp_path / "run.yaml").write_text("out: elsewhere\nmethods: [ga]\n")
    config = RunConfig.from_cli(parse(["run", "--config", str(tmp_path / "run.yaml"), "--out", "here"]))
    assert config.out == "here" and config.methods == ["ga"]
    with pytest.raises(ValueError, match="--partial-threshold"):
        AuditSettings.from_cli(parse(["audit", "--demo", "--partial-threshold", "0.9"]))
    tofu = ["evaluate", "--benchmark", "tofu", "--model", "m", "--corpus", "c", "--out", "o"]
    with pytest.raises(UserInputError, match="--retain-model or --retain-logs, not both"):
        EvaluateSettings.from_cli(parse([*tofu, "--retain-model", "r", "--retain-logs", "l.json"]))
    unlearn = ["unlearn", "--method", "ga", "--target", "t", "--corpus", "c", "--out", "o"]
    with pytest.raises(ValueError, match="saliency options apply to SURE methods only"):
        UnlearnSettings.from_cli(parse([*unlearn, "--saliency-gamma", "1"]))
    (tmp_path / "run.yaml").write_text("out: x\nmethods: [forgetful]\n")
    with pytest.raises(UserInputError, match="unknown method"):
        RunConfig.from_cli(parse(["run", "--config", str(tmp_path / "run.yaml")]))
