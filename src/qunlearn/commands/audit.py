"""`qunlearn audit`: does an unlearned checkpoint stay forgotten under quantization, relearning and precision attacks?"""

from __future__ import annotations

import argparse
from pathlib import Path

from qunlearn.audit.attacks import ATTACK_NAMES
from qunlearn.audit.render import write_audit
from qunlearn.audit.run import AuditInputs, AuditSettings, run_audit
from qunlearn.audit.verdict import DEFAULT_THRESHOLD
from qunlearn.commands.options import add_loading_options


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "audit", help="recovery attacks on an unlearned checkpoint, with a holds/recovers verdict per attack",
        description="Scores the unlearned model and the target on the evaluation half of the forget set, then "
                    "each attack on the unlearned model. Split rule: the first half of the VerbMem_f and KnowMem_f "
                    "items is the relearn side, the rest the evaluation half; relearning trains on forget documents "
                    "that mention a relearn-side item and no evaluation-side item.")
    parser.add_argument("--target", help="target checkpoint (before unlearning)")
    parser.add_argument("--unlearned", help="unlearned checkpoint to audit")
    parser.add_argument("--corpus", help="MUSE-layout corpus directory")
    parser.add_argument("--retrain", help="retrain checkpoint: adds PrivLeak to the numbers")
    parser.add_argument("--demo", action="store_true",
                        help="audit every unlearned model of `qunlearn demo --out DIR` (written to DIR/audit/<method>)")
    parser.add_argument("--out", help="output directory (default ./qunlearn-audit; with --demo the demo's "
                                      "directory, default ./qunlearn-demo)")
    parser.add_argument("--attacks", nargs="+", metavar="NAME",
                        help=f"attacks to run (default: all available): {', '.join(ATTACK_NAMES)}; "
                             "gptq4/awq4 run with generic and forget calibration, or one with @generic/@forget")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="recovery (fraction of the target − unlearned gap) above which an attack 'recovers' "
                             f"(default {DEFAULT_THRESHOLD})")
    parser.add_argument("--relearn-steps", type=int, default=10, help="relearning AdamW steps (default 10)")
    parser.add_argument("--relearn-lr", type=float, default=1e-4, help="relearning learning rate (default 1e-4)")
    parser.add_argument("--relearn-docs", type=int, help="use at most this many relearning documents (default all)")
    parser.add_argument("--relearn-batch-size", type=int, default=4, help="relearning batch size (default 4)")
    parser.add_argument("--no-code-flips", action="store_true", help="skip the code-flip rates")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per evaluation pass (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="relearning shuffle seed (default 0)")
    add_loading_options(parser, dtype=False)  # each attack sets its own dtype
    parser.set_defaults(func=run)


def _jobs(args: argparse.Namespace) -> list[tuple[AuditInputs, Path]]:
    """(inputs, output dir) per audit: one from the flags, or one per unlearned model of a demo directory."""
    if not args.demo:
        missing = [f"--{n}" for n in ("target", "unlearned", "corpus") if getattr(args, n) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} required (or --demo)")
        return [(AuditInputs(Path(args.target), Path(args.unlearned), Path(args.corpus),
                             Path(args.retrain) if args.retrain else None,
                             Path(args.tokenizer) if args.tokenizer else None, args.trust_remote_code),
                 Path(args.out or "qunlearn-audit"))]
    if any(getattr(args, n) for n in ("target", "unlearned", "corpus", "retrain")):
        raise ValueError("--demo takes its models from the demo directory; drop --target/--unlearned/--corpus/--retrain")
    root = Path(args.out or "qunlearn-demo")
    bench, models = root / "benchmark", root / "models"
    methods = sorted(p.name for p in models.glob("*") if (p / "config.json").is_file()) if models.is_dir() else []
    if not methods:
        raise FileNotFoundError(f"{models}: no unlearned models; run `qunlearn demo --out {root}` first")
    retrain = bench / "models" / "retrain"
    return [(AuditInputs(bench / "models" / "target", models / m, bench / "corpus",
                         retrain if retrain.is_dir() else None), root / "audit" / m) for m in methods]


def run(args: argparse.Namespace) -> int:
    settings = AuditSettings(attacks=args.attacks, threshold=args.threshold, relearn_steps=args.relearn_steps,
                             relearn_lr=args.relearn_lr, relearn_docs=args.relearn_docs,
                             relearn_batch_size=args.relearn_batch_size, code_flips=not args.no_code_flips,
                             device=args.device, batch_size=args.batch_size, seed=args.seed)
    settings.check()
    for inputs, out in _jobs(args):
        print(f"auditing {inputs.unlearned}")
        audit = run_audit(inputs, settings, log=lambda line: print(f"  {line}"))
        paths = write_audit(audit, out)
        print(f"{audit['summary']}\nwrote {paths['audit.md']}, {paths['audit.json']}, {paths['audit.html']}")
    return 0
