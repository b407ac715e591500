"""`qunlearn run --config RUN.yaml`: the grid for real models and data (or the embedded benchmark)."""

from __future__ import annotations

import argparse
from pathlib import Path

from qunlearn.config import RunConfig, from_dict
from qunlearn.errors import OutputConflictError, UserInputError
from qunlearn.fileio import read_yaml
from qunlearn.outputs import check_output_dir, output_lock
from qunlearn.pipeline import RUN_FILE, check_inputs, config_hash, run_grid, validate
from qunlearn.report import write_report
from qunlearn.results import RESULTS_FILE, finished_cells


def load_run_config(path: str | Path, out: str | None = None) -> RunConfig:
    """Read a run config YAML; `out` (from --out) overrides the file's `out`."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a mapping of run settings")
    if out is not None:
        data["out"] = out
    if "out" not in data:
        raise UserInputError(f"{path}: field 'out' (the output directory) is required, or pass --out")
    return from_dict(RunConfig, data, str(path))


def run_and_report(config: RunConfig, resume: bool, progress: bool = True) -> dict[str, Path]:
    """Run the grid (refusing to mix with earlier results unless resuming) and write the report.

    The run directory is checked first (never an input, never a foreign directory) and locked for the run.
    """
    validate(config)
    check_inputs(config)
    out = Path(config.out)
    check_output_dir(out, RUN_FILE, "a run directory", {f: getattr(config, f) for f in ("target", "retrain", "corpus")})
    with output_lock(out):
        results = out / RESULTS_FILE
        if not resume and finished_cells(results, config_hash(config)):
            raise OutputConflictError(
                f"{results} already holds results of this run; pass --resume to continue it or choose another --out"
            )
        run_grid(config, progress=progress)
        written = write_report(out, config_hash(config))
    print(f"report: {written['report.md']} and {written['report.html']}")
    return written


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="run methods × quantizers × metrics from a YAML config, then report")
    parser.add_argument("--config", required=True, help="run config YAML (see examples/)")
    parser.add_argument("--out", help="output directory (overrides the config's 'out')")
    parser.add_argument("--resume", action="store_true", help="continue a run: skip every finished cell")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_and_report(load_run_config(args.config, args.out), resume=args.resume)
    return 0
