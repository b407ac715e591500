"""`qunlearn audit`: does an unlearned checkpoint stay forgotten under quantization, relearning and precision attacks?"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from qunlearn.audit.attacks import ATTACK_NAMES
from qunlearn.audit.benchmarks import BENCHMARKS
from qunlearn.audit.render import write_audit
from qunlearn.audit.run import AuditInputs, AuditSettings, run_audit
from qunlearn.audit.verdict import DEFAULT_PARTIAL, DEFAULT_THRESHOLD
from qunlearn.commands.options import add_device_options, add_loading_options
from qunlearn.data.tofu import FORGET_SPLITS
from qunlearn.errors import UserInputError
from qunlearn.evaluate.tofu import PROMPT_FORMATS
from qunlearn.models.io import resolve_device
from qunlearn.models.locate import locate_model
from qunlearn.outputs import check_output_dir, output_lock, staged_dir


def _names(text: str) -> list[str]:
    """A comma-separated list of names ('wmdp_bio,mmlu')."""
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit",
        help="recovery attacks on an unlearned checkpoint, with a holds/partial/recovers verdict per attack",
        description="Scores the target and the unlearned model with the chosen benchmark, measures how big the "
        "unlearning update is against the 4-bit step, then scores each attack on the unlearned model. "
        "MUSE split rule: the first half of the VerbMem_f and KnowMem_f items is the relearn side, the "
        "rest the evaluation half; relearning trains on forget documents that mention a relearn-side "
        "item and no evaluation-side item.",
    )
    parser.add_argument(
        "--benchmark",
        choices=list(BENCHMARKS),
        default="muse",
        help="how models are scored: muse (KnowMem_f, VerbMem_f, PrivLeak with --retrain), tofu "
        "(forget answer probability and ROUGE, forget quality with --retrain or --retain-logs) or "
        'lmeval (multiple-choice accuracy via lm-evaluation-harness; pip install -e ".[lmeval]")',
    )
    parser.add_argument("--target", help="target checkpoint (before unlearning)")
    parser.add_argument("--unlearned", help="unlearned checkpoint to audit")
    parser.add_argument(
        "--corpus",
        "--data",
        dest="corpus",
        help="muse: MUSE-layout corpus directory; tofu: TOFU directory (or HF dataset id); "
        "lmeval: optional, generic calibration text",
    )
    parser.add_argument(
        "--retrain",
        help="muse: retrain checkpoint (adds PrivLeak); tofu: the retain model (adds "
        "forget quality); both membership signals that count in the verdict",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="audit every unlearned model of `qunlearn demo --out DIR` (written to DIR/audit/<method>)",
    )
    parser.add_argument(
        "--out",
        help="output directory (default ./qunlearn-audit; with --demo the demo's directory, default ./qunlearn-demo)",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        metavar="NAME",
        help=f"attacks to run (default: all available): {', '.join(ATTACK_NAMES)}; "
        "gptq4/awq4 run with generic and forget calibration, or one with @generic/@forget",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="recovery (fraction of the target − unlearned gap) above which an attack 'recovers' "
        f"(default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--partial-threshold",
        type=float,
        default=DEFAULT_PARTIAL,
        help=f"recovery above which an attack is 'partial' (default {DEFAULT_PARTIAL})",
    )
    _add_lmeval_options(parser)
    _add_tofu_options(parser)
    parser.add_argument("--relearn-steps", type=int, default=10, help="relearning AdamW steps (default 10)")
    parser.add_argument("--relearn-lr", type=float, default=1e-4, help="relearning learning rate (default 1e-4)")
    parser.add_argument("--relearn-docs", type=int, help="use at most this many relearning documents (default all)")
    parser.add_argument("--relearn-batch-size", type=int, default=4, help="relearning batch size (default 4)")
    parser.add_argument("--no-code-flips", action="store_true", help="skip the code-flip rates")
    add_device_options(parser)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per evaluation pass (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="relearning shuffle seed (default 0)")
    add_loading_options(parser)
    parser.set_defaults(func=run)


def _add_lmeval_options(parser: argparse.ArgumentParser) -> None:
    """Options of --benchmark lmeval (multiple-choice tasks through lm-evaluation-harness)."""
    group = parser.add_argument_group("lmeval (--benchmark lmeval)")
    group.add_argument(
        "--tasks",
        type=_names,
        default=[],
        metavar="T1,T2",
        help="lmeval: tasks whose accuracy is the forget signal (e.g. wmdp_bio)",
    )
    group.add_argument(
        "--utility-tasks",
        type=_names,
        default=[],
        metavar="T1,T2",
        help="lmeval: tasks shown as utility, not judged (e.g. mmlu)",
    )
    group.add_argument("--include-path", help="lmeval: folder of extra task YAMLs (e.g. a local multiple-choice task)")
    group.add_argument(
        "--no-builtin-tasks",
        action="store_true",
        help="lmeval: index only --include-path, not lm-eval's own tasks (faster start)",
    )
    group.add_argument(
        "--forget-texts",
        help="lmeval: forget documents for relearning and forget calibration "
        "(JSON list of strings, or text with blank lines between documents)",
    )
    group.add_argument("--limit", type=int, help="lmeval: score only the first N questions of each task")


def _add_tofu_options(parser: argparse.ArgumentParser) -> None:
    """Options of --benchmark tofu."""
    group = parser.add_argument_group("TOFU (--benchmark tofu)")
    group.add_argument("--forget-split", choices=FORGET_SPLITS, default="forget10", help="tofu: (default forget10)")
    group.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="auto",
        help="tofu: chat (tokenizer's template), plain (Question: ... Answer:), or auto (default)",
    )
    group.add_argument(
        "--retain-logs",
        metavar="JSON",
        help="tofu: instead of --retrain, the retain model's earlier result (`qunlearn evaluate "
        "--benchmark tofu` JSON, or OpenUnlearning's TOFU_EVAL.json)",
    )


def _jobs(args: argparse.Namespace) -> list[tuple[AuditInputs, Path]]:
    """(inputs, output dir) per audit: one from the flags, or one per unlearned model of a demo directory."""
    if not args.demo:
        missing = [f"--{n}" for n in ("target", "unlearned") if getattr(args, n) is None]
        if missing:
            raise UserInputError(f"{', '.join(missing)} required (or --demo)")
        return [
            (
                AuditInputs(
                    Path(args.target),
                    Path(args.unlearned),
                    Path(args.corpus) if args.corpus else None,
                    Path(args.retrain) if args.retrain else None,
                    Path(args.tokenizer) if args.tokenizer else None,
                    args.trust_remote_code,
                ),
                Path(args.out or "qunlearn-audit"),
            )
        ]
    if any(getattr(args, n) for n in ("target", "unlearned", "corpus", "retrain")):
        raise UserInputError(
            "--demo takes its models from the demo directory; drop --target/--unlearned/--corpus/--retrain"
        )
    root = Path(args.out or "qunlearn-demo")
    bench, models = root / "benchmark", root / "models"
    methods = sorted(p.name for p in models.glob("*") if (p / "config.json").is_file()) if models.is_dir() else []
    if not methods:
        raise UserInputError(f"{models}: no unlearned models; run `qunlearn demo --out {root}` first")
    retrain = bench / "models" / "retrain"
    return [
        (
            AuditInputs(
                bench / "models" / "target", models / m, bench / "corpus", retrain if retrain.is_dir() else None
            ),
            root / "audit" / m,
        )
        for m in methods
    ]


def run(args: argparse.Namespace) -> int:
    settings = AuditSettings.from_cli(args)
    resolve_device(settings.device)
    jobs = _jobs(args)
    for inputs, out in jobs:  # every check before the first audit starts
        for name in ("target", "unlearned", "retrain"):
            if getattr(inputs, name) is not None:
                locate_model(getattr(inputs, name), f"--{name}")
        check_output_dir(
            out, "audit.json", "an audit", {f"--{k}": v for k, v in asdict(inputs).items() if isinstance(v, Path)}
        )
    for inputs, out in jobs:
        print(f"auditing {inputs.unlearned}")
        with output_lock(out), staged_dir(out) as staging:
            audit = run_audit(inputs, settings, log=lambda line: print(f"  {line}"))
            write_audit(audit, staging)
        paths = {name: out / name for name in ("audit.md", "audit.json", "audit.html")}
        print(f"{audit['summary']}\nwrote {paths['audit.md']}, {paths['audit.json']}, {paths['audit.html']}")
    return 0
