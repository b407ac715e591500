"""`qunlearn demo --quick` end to end: benchmark, 5 methods × fp/rtn8/rtn4, metrics, report."""

from __future__ import annotations

import json
import re

import pytest

from qunlearn.cli import main
from qunlearn.config import QUICK_METHODS, QUICK_QUANTIZERS
from qunlearn.report import build_report
from qunlearn.results import load_results


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "Forgotten knowledge retained" in capsys.readouterr().out
    for name in (
        "results.jsonl",
        "report.md",
        "report.csv",
        "report.json",
        "report.html",
        "config.yaml",
        "plots/retained.png",
        "plots/tradeoff.png",
    ):
        assert (out / name).is_file(), name
    records = load_results(out / "results.jsonl")
    cells = {(r["model"], r["quantizer"]) for r in records if r["metric"] == "knowmem_f"}
    assert cells == {(m, q) for m in ["target", "retrain", *QUICK_METHODS] for q in QUICK_QUANTIZERS}
    report = json.loads((out / "report.json").read_text())
    assert report["headline"] == json.loads(json.dumps(build_report(records).headline))
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html) and "data:image/png;base64," in html
    target = {r["metric"]: r["value"] for r in records if r["model"] == "target" and r["quantizer"] == "fp"}
    assert target["knowmem_f"] > 80 and target["verbmem_f"] > 80
    # a second run reuses everything: no cell is recomputed
    before = (out / "results.jsonl").read_text()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_text() == before
