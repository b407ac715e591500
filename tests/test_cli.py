"""The command line's own behaviour: version, and no process-wide side effects from importing the library."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qunlearn import __version__
from qunlearn.cli import main


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
