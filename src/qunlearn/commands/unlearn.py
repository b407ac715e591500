"""`qunlearn unlearn`: run one unlearning method on a target model and write the unlearned HF checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import fields

from qunlearn.commands.options import add_loading_options
from qunlearn.models.locate import locate_model
from qunlearn.unlearn.launch import is_main_process
from qunlearn.unlearn.memory import OPTIMIZERS, REFERENCES
from qunlearn.unlearn.methods import METHODS, PROFILES
from qunlearn.unlearn.trainer import UnlearnSettings, unlearn

TYPES = {"int": int, "float": float, "str": str}
CHOICES = {"profile": PROFILES, "reference": REFERENCES, "optim": OPTIMIZERS}

HELP = {
    "profile": "default hyperparameters: 'embedded' (built-in benchmark) or 'muse' (real 7B models, MUSE's)",
    "lr": "learning rate (constant, AdamW)",
    "epochs": "passes over the forget set",
    "max_steps": "stop after this many optimizer steps (overrides epochs when smaller)",
    "batch_size": "per-device micro-batch (effective batch = this x grad-accum x processes)",
    "grad_accum": "micro-batches per optimizer step",
    "max_length": "tokens per training chunk",
    "dtype": "dtype the weights are held and trained in (fp32, bf16, fp16)",
    "storage": "round weights to this dtype at the start and after every step (bf16: bf16 weight storage "
    "emulated while computing in --dtype; for CPUs without fast bf16)",
    "seed": "seed of data order and RNG",
    "beta": "NPO inverse temperature",
    "retain_weight": "lambda, weight of the retain term (GDR/KLR)",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient-norm clip (0: none)",
    "saliency_gamma": "SURE: threshold gamma on module scores (instead of a percentile)",
    "saliency_percentile": "SURE: gamma = the module score at this percentile (0-100)",
    "saliency_batches": "SURE: forget batches for the saliency pass (default: the whole forget set)",
    "keep_checkpoints": "keep the last epoch checkpoint (model, optimizer, RNG) after finishing",
    "reference": "NPO/KLR reference: 'model' (a second copy in --dtype), 'bf16' (a bf16 copy), "
    "'cached' (NPO only: reference log-likelihoods computed once, no second model)",
    "optim": "optimizer: adamw, or bitsandbytes' adamw8bit / paged_adamw8bit (8-bit state)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, one more forward pass per step)",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("unlearn", help="unlearn the forget set from a target model (GA/NPO x GDR/KLR, SURE)")
    parser.add_argument("--method", required=True, choices=list(METHODS), help="unlearning method")
    parser.add_argument("--target", required=True, help="target model directory (HF checkpoint, safetensors)")
    parser.add_argument("--corpus", required=True, help="corpus directory in MUSE layout")
    parser.add_argument("--out", required=True, help="output directory for the unlearned checkpoint and records")
    parser.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_loading_options(parser, dtype=False)  # --dtype is a training setting below
    for spec in fields(UnlearnSettings):
        flag = "--" + spec.name.replace("_", "-")
        default = "the method's" if spec.default is None else spec.default
        if spec.type == "bool":
            parser.add_argument(flag, action="store_true", help=HELP[spec.name])
        elif spec.name in CHOICES:
            parser.add_argument(
                flag, choices=CHOICES[spec.name], default=spec.default, help=f"{HELP[spec.name]} (default: {default})"
            )
        else:
            parser.add_argument(
                flag,
                type=TYPES[spec.type.split()[0]],
                default=spec.default,
                help=f"{HELP[spec.name]} (default: {default})",
            )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    locate_model(args.target, "--target")
    settings = UnlearnSettings.from_cli(args)
    out = unlearn(
        args.target,
        args.corpus,
        args.method,
        args.out,
        settings,
        progress=not args.quiet,
        resume=args.resume,
        tokenizer=args.tokenizer,
        trust_remote_code=args.trust_remote_code,
    )
    if is_main_process():  # under torchrun / accelerate launch only rank 0 speaks
        print(f"unlearned model written to {out}")
    return 0
