"""The report: tables equal their inputs, the headline equals a recomputation, files are self-contained."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from qunlearn import cli
from qunlearn.quant.registry import QUANTIZERS
from qunlearn.report import headline, index_results, write_report
from qunlearn.report.render import to_html, to_json, to_markdown
from qunlearn.report.tables import build_report
from qunlearn.results import latest_config_hash, load_results

HASH = "abc123"
# The fixture's file has a line cut by a crash; one test checks its warning, the others need not repeat it.
pytestmark = pytest.mark.filterwarnings("ignore:.*is cut or corrupt:UserWarning")

# (model, quantizer, metric, value[, extra]); rtn8 comes first so that `fp` must be moved to the front.
CELLS = [
    ("target", "rtn8", "knowmem_f", 60.0),
    ("target", "rtn8", "verbmem_f", 50.0),
    ("target", "fp", "knowmem_f", 60.0),
    ("target", "fp", "verbmem_f", 50.0),
    ("target", "fp", "knowmem_r", 55.0),
    ("target", "fp", "privleak", -99.5, {"auc": 0.002, "auc_retrain": 0.48}),
    ("target", "fp", "ppl_retain", 12.5),
    ("target", "fp", "ppl_holdout", 40.25),
    ("target", "rtn4", "knowmem_f", 40.0),
    ("target", "rtn4", "verbmem_f", 40.0),
    ("target", "gptq4", "knowmem_f", 0.0),
    ("retrain", "fp", "knowmem_f", 30.0),
    ("retrain", "fp", "verbmem_f", 20.0),
    ("retrain", "fp", "knowmem_r", 54.0),
    ("retrain", "fp", "privleak", 0.0),
    ("npo", "fp", "knowmem_f", 18.0),
    ("npo", "rtn8", "knowmem_f", 12.0),
    ("npo", "rtn4", "knowmem_f", 36.0),
    ("npo", "fp", "verbmem_f", 15.0),
    ("npo", "rtn4", "verbmem_f", 36.0),
    ("npo", "fp", "knowmem_r", 40.0),
    ("ga", "rtn4", "knowmem_f", 1.0),  # replaced by a later line (32.0)
    ("ga", "fp", "knowmem_f", 6.0),
    ("ga", "rtn8", "knowmem_f", 6.0),
    ("ga", "rtn4", "knowmem_f", 32.0),
    ("ga", "fp", "verbmem_f", 5.0),
    ("ga", "rtn4", "verbmem_f", 20.0),
    ("ga", "gptq4", "knowmem_f", 5.0),
    ("ga", "fp", "knowmem_r", 30.0),
    ("ga", "rtn4", "knowmem_r", 29.0),
    ("ga_sure", "fp", "knowmem_f", 3.0),
    ("ga_sure", "rtn4", "knowmem_f", 4.0),
    ("ga_sure", "fp", "knowmem_r", 45.0),
    (
        "ga",
        "rtn4",
        "codeflip",
        0.001,
        {
            "below_half_step": 0.97,
            "median_change_in_steps": 0.02,
            "p90_change_in_steps": 0.1,
            "within_bin_fraction": 0.999,
            "flips_by_type": {"q_proj": 0.002, "down_proj": 0.0},
        },
    ),
    ("ga", "rtn8", "codeflip", 0.05),
    ("ga_sure", "rtn4", "codeflip", 0.02, {"below_half_step": 0.5}),
]
STALE = [("npo", "fp", "knowmem_f", 59.0), ("simnpo", "fp", "knowmem_f", 1.0)]


def _line(cell: tuple, config_hash: str = HASH) -> str:
    model, quantizer, metric, value, *extra = cell
    record = {"model": model, "quantizer": quantizer, "metric": metric, "value": value, "config_hash": config_hash}
    return json.dumps(record | ({"extra": extra[0]} if extra else {}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose results.jsonl starts with stale lines of an older config, then the current run."""
    path = tmp_path_factory.mktemp("run")
    lines = [_line(c, "old") for c in STALE] + [_line(c) for c in CELLS]
    lines.insert(len(STALE), _line(("npo", "fp", "knowmem_f", 0.0))[:30])  # a line cut by a crash mid-write
    (path / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def written(run_dir: Path) -> dict[str, Path]:
    """The report files of `run_dir`, written once for the tests that read them (plotting takes a second)."""
    return write_report(run_dir, HASH)


def _rows(report_json: dict, table: str) -> dict[str, dict[tuple[str, str], float | None]]:
    """A table of report.json as {row: {(group, column): value}}."""
    spec = report_json["tables"][table]
    keys = [(c["group"], c["label"]) for c in spec["columns"]]
    return {label: dict(zip(keys, values)) for label, values in spec["rows"].items()}


def test_later_lines_replace_earlier_and_stale_hash_is_dropped(run_dir: Path) -> None:
    with pytest.warns(UserWarning, match="line 3 is cut"):
        records = load_results(run_dir / "results.jsonl", HASH)
    cells = {(r["model"], r["quantizer"], r["metric"]): r["value"] for r in records}
    assert cells[("ga", "rtn4", "knowmem_f")] == 32.0
    assert cells[("npo", "fp", "knowmem_f")] == 18.0
    assert "simnpo" not in {r["model"] for r in records}
    assert len(records) == len(CELLS) - 1
    assert latest_config_hash(run_dir / "results.jsonl") == HASH
    unfiltered = load_results(run_dir / "results.jsonl")
    assert {(r["model"], r["value"]) for r in unfiltered} >= {("simnpo", 1.0), ("npo", 18.0)}


def test_order_of_models_and_quantizers(run_dir: Path) -> None:
    index = index_results(load_results(run_dir / "results.jsonl", HASH))
    assert index.quantizers == ("fp", "rtn8", "rtn4", "gptq4")
    assert index.models == ("target", "retrain", "ga", "npo", "ga_sure")


def test_headline_equals_hand_computed_ratios(run_dir: Path) -> None:
    head = headline(index_results(load_results(run_dir / "results.jsonl", HASH)))
    know = head["knowmem_f"]
    assert know["per_model"]["ga"] == pytest.approx({"fp": 10.0, "rtn8": 10.0, "rtn4": 80.0, "gptq4": None})
    assert know["per_model"]["npo"] == pytest.approx({"fp": 30.0, "rtn8": 20.0, "rtn4": 90.0, "gptq4": None})
    assert know["per_model"]["retrain"]["fp"] == pytest.approx(50.0)
    assert know["mean"]["baseline"] == pytest.approx({"fp": 20.0, "rtn8": 15.0, "rtn4": 85.0, "gptq4": None})
    assert know["mean"]["sure"] == pytest.approx({"fp": 5.0, "rtn8": None, "rtn4": 10.0, "gptq4": None})
    assert know["n"]["baseline"] == {"fp": 2, "rtn8": 2, "rtn4": 2, "gptq4": 0}
    verb = head["verbmem_f"]
    assert verb["mean"]["baseline"]["fp"] == pytest.approx((10.0 + 30.0) / 2)
    assert verb["mean"]["baseline"]["rtn4"] == pytest.approx((50.0 + 90.0) / 2)
    assert head["reference"] == "target under the same quantizer"
    assert "full precision 20.0% → rtn8 15.0%, rtn4 85.0%" in head["summary"]
    assert "SURE variants: full precision 5.0% → rtn8 –, rtn4 10.0%" in head["summary"]


def test_report_files_tables_and_json_headline(run_dir: Path, written: dict[str, Path]) -> None:
    assert set(written) == {
        "report.md",
        "report.csv",
        "report.json",
        "report.html",
        "plots/retained.png",
        "plots/tradeoff.png",
    }
    assert all(path.is_file() and path.stat().st_size > 0 for path in written.values())
    report_json = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert report_json["headline"] == headline(index_results(load_results(run_dir / "results.jsonl", HASH)))
    assert report_json["headline"]["knowmem_f"]["mean"]["baseline"]["rtn4"] == pytest.approx(85.0)

    muse = _rows(report_json, "muse")
    inputs = {(m, q, metric): v for m, q, metric, v, *_ in CELLS}
    labels = {
        "verbmem_f": "VerbMem_f ↓",
        "knowmem_f": "KnowMem_f ↓",
        "privleak": "PrivLeak → 0",
        "knowmem_r": "KnowMem_r ↑",
    }
    for model, row in muse.items():
        for (quantizer, label), value in row.items():
            metric = next(k for k, v in labels.items() if v == label)
            assert value == inputs.get((model, quantizer, metric)), (model, quantizer, metric)
    assert list(muse) == ["target", "retrain", "ga", "npo", "ga_sure"]
    assert muse["ga_sure"][("rtn8", "KnowMem_f ↓")] is None

    utility = _rows(report_json, "utility")
    assert utility["target"][("fp", "PPL holdout")] == 40.25
    codeflip = _rows(report_json, "codeflip")
    assert list(codeflip) == ["ga", "ga_sure"]
    assert codeflip["ga"][("rtn4", "codes flipped %")] == pytest.approx(0.1)
    assert codeflip["ga"][("rtn4", "moved < ½ step %")] == pytest.approx(97.0)
    assert codeflip["ga"][("rtn8", "moved < ½ step %")] is None
    assert codeflip["ga"][("rtn4", "median |Δw|/Δ")] == 0.02 and codeflip["ga"][("rtn4", "p90 |Δw|/Δ")] == 0.1
    assert codeflip["ga"][("rtn4", "moved, kept in bin %")] == pytest.approx(99.9)
    assert codeflip["ga_sure"][("rtn4", "median |Δw|/Δ")] is None
    types = _rows(report_json, "codeflip_types")
    assert types == {"ga": {("rtn4", "q_proj %"): pytest.approx(0.2), ("rtn4", "down_proj %"): 0.0}}

    csv_text = (run_dir / "report.csv").read_text(encoding="utf-8")
    assert "muse,ga,rtn4,KnowMem_f ↓,32.0" in csv_text.splitlines()


def test_missing_cells_are_dashes_in_markdown_and_html(run_dir: Path, written: dict[str, Path]) -> None:
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    ga_sure_row = next(line for line in md.splitlines() if line.startswith("| ga_sure |"))
    assert "–" in ga_sure_row and "None" not in md and "nan" not in md
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<td class='missing'>–</td>" in html and ">None<" not in html
    assert "target under the same quantizer" in md and "target under the same quantizer" in html


def test_html_is_self_contained_and_embeds_the_plots(written: dict[str, Path]) -> None:
    html = written["report.html"].read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"(src|href)\s*=\s*['\"]?(?!data:)[a-z]+:", html)
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert [base64.b64decode(data) for data in embedded] == [
        written["plots/retained.png"].read_bytes(),
        written["plots/tradeoff.png"].read_bytes(),
    ]


def test_empty_results_still_render(tmp_path: Path) -> None:
    report = build_report(
        [{"model": "target", "quantizer": "fp", "metric": "knowmem_f", "value": 60.0, "config_hash": HASH}], HASH
    )
    assert "No unlearned model" in report.headline["summary"]
    assert "No results yet." in to_markdown(report, ())


def test_cli_report_uses_latest_hash_and_reports_missing_file(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert "report" in cli.COMMANDS
    monkeypatch.setattr(cli, "COMMANDS", ["report"])  # only this subcommand: the others import torch
    (tmp_path / "results.jsonl").write_bytes((run_dir / "results.jsonl").read_bytes())
    assert cli.main(["report", "--out", str(tmp_path)]) == 0
    report_json = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report_json["config_hash"] == HASH and "simnpo" not in report_json["tables"]["muse"]["rows"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", "--out", str(empty)]) == 2
    assert str(empty / "results.jsonl") in capsys.readouterr().err
    (empty / "results.jsonl").write_text("\n", encoding="utf-8")
    assert cli.main(["report", "--out", str(empty)]) == 2
    assert "no results" in capsys.readouterr().err
    with pytest.raises(ValueError, match="results.jsonl"):
        load_results(empty / "results.jsonl")


def test_a_scheme_with_a_caveat_gets_a_note_under_each_table_that_shows_it() -> None:
    records = [
        {"model": model, "quantizer": quantizer, "metric": "knowmem_f", "value": value, "config_hash": HASH}
        for model, quantizer, value in (("target", "fp", 60.0), ("target", "bnb-int8", 58.0), ("ga", "bnb-int8", 30.0))
    ]
    caveat = f"bnb-int8 caveat: {QUANTIZERS['bnb-int8'].caveat}."
    report = build_report(records, HASH)
    assert {t.name: t.caveats for t in report.tables} == {
        "headline": (caveat,),
        "muse": (caveat,),
        "utility": (),
        "codeflip": (),
        "codeflip_types": (),
    }
    md = to_markdown(report, ())
    muse_section = md.split("## MUSE metrics per quantizer")[1].split("\n## ")[0]
    assert muse_section.index("| ga |") < muse_section.index(caveat) and md.count(caveat) == 2
    assert f"<p class='note'>{html.escape(caveat)}</p>" in to_html(report, ())
    assert to_json(report)["tables"]["muse"]["caveats"] == [caveat]
    full_precision_only = build_report([r for r in records if r["quantizer"] == "fp"], HASH)
    assert "caveat" not in to_markdown(full_precision_only, ())


def test_each_distinct_quantizer_fallback_is_said_once_with_the_models_it_happened_on() -> None:
    records = [
        {"model": model, "quantizer": quantizer, "metric": "knowmem_f", "value": 1.0, "config_hash": HASH}
        for model in ("target", "ga")
        for quantizer in ("fp", "rtn4", "gptq4")
    ]
    per_row = {"layers": ["l.0.down", "l.1.down"], "used": "per-row scales", "reason": "48 does not fit"}

    def damped(layer: str) -> dict:
        return {"layers": [layer], "used": "dampening 0.1", "reason": "Hessian rejected"}

    fallbacks = [  # in run order (gptq4 first, ga before target): the report orders them as its tables do
        {"model": "ga", "quantizer": "gptq4", "fallbacks": [damped("l.0.q")]},
        {"model": "ga", "quantizer": "rtn4", "fallbacks": [per_row]},
        {"model": "target", "quantizer": "rtn4", "fallbacks": [per_row]},
        {"model": "target", "quantizer": "gptq4", "fallbacks": [damped("l.1.k")]},
        {"model": "target", "quantizer": "fp", "fallbacks": []},
    ]
    report = build_report(records, HASH, fallbacks)
    lines = [
        "rtn4 fallback: 48 does not fit; per-row scales used instead for 2 layers (e.g. l.0.down), on target, ga.",
        "gptq4 fallback: Hessian rejected; dampening 0.1 used instead for 1 layer (e.g. l.1.k), on target.",
        "gptq4 fallback: Hessian rejected; dampening 0.1 used instead for 1 layer (e.g. l.0.q), on ga.",
    ]
    assert [note.text for note in report.fallbacks] == lines
    md = to_markdown(report, ())
    section = md.split("## Quantizer fallbacks\n")[1].split("\n## ")[0]
    assert section.strip().splitlines()[-3:] == [f"- {line}" for line in lines]
    assert all(f"<li>{html.escape(line)}</li>" in to_html(report, ()) for line in lines)
    assert to_json(report)["quantizer_fallbacks"][0] == {
        "quantizer": "rtn4",
        "used": "per-row scales",
        "reason": "48 does not fit",
        "layers": 2,
        "example_layer": "l.0.down",
        "models": ("target", "ga"),
        "text": lines[0],
    }
    without = build_report(records, HASH, fallbacks[-1:])
    assert "Quantizer fallbacks" not in to_markdown(without, ()) and to_json(without)["quantizer_fallbacks"] == []
