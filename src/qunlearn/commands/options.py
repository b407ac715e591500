"""Command-line options shared by several commands: model loading, devices, and quantizer scheme with its
calibration (read back by `quant.scheme.SchemeSettings.from_cli`)."""

from __future__ import annotations

import argparse

from qunlearn.quant.activations import OFFLOAD
from qunlearn.quant.calibration import CALIBRATE_ON
from qunlearn.quant.registry import QUANTIZERS


def add_loading_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """--tokenizer, --trust-remote-code and (optionally) --dtype, as every model-loading command spells them."""
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="tokenizer directory, for checkpoints saved without tokenizer files"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the checkpoint's own Python code (needed by some hub models; off by default)",
    )
    if dtype:
        parser.add_argument(
            "--dtype",
            choices=["fp32", "bf16", "fp16"],
            default="fp32",
            help="dtype the weights are loaded in (default fp32)",
        )


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --device-map, for commands that evaluate models."""
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--device-map",
        help="'auto': spread a model larger than one GPU over the GPUs and CPU (HF device_map; replaces --device)",
    )


def add_scheme_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that build a quantizer: scheme, grid and calibration."""
    parser.add_argument(
        "--scheme",
        required=True,
        choices=list(QUANTIZERS),
        metavar="NAME",
        help="quantizer: "
        + "; ".join(
            f"{name} ({'; '.join(filter(None, (spec.summary, spec.caveat)))})" for name, spec in QUANTIZERS.items()
        ),
    )
    parser.add_argument("--group-size", type=int, help="RTN/GPTQ/AWQ group size (default 128; -1 = per row)")
    parser.add_argument("--calibration", help="calibration text file (documents separated by blank lines)")
    parser.add_argument("--corpus", help="MUSE-layout corpus whose text calibrates GPTQ/AWQ")
    parser.add_argument(
        "--calibrate-on",
        choices=CALIBRATE_ON,
        default="generic",
        help="corpus text to calibrate on: retain+holdout (generic, default) or forget",
    )
    parser.add_argument("--n-samples", type=int, help="calibration sequences (default 128)")
    parser.add_argument("--device", default=None, help="device for GPTQ/AWQ blocks (default: where the model is)")
    parser.add_argument(
        "--offload-activations",
        choices=OFFLOAD,
        help="where GPTQ/AWQ keep calibration activations between uses: on the compute device (none, default), in "
        "host memory (cpu) or in temporary files (disk); 1 GB per 7B block at 128 x 512 tokens, several GB for AWQ",
    )
