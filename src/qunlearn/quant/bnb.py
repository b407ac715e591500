"""bitsandbytes formats (LLM.int8, FP4, NF4) as the paper's released code used them, through transformers.

Two modes. Fake (default): each selected Linear weight is quantized and dequantized by bitsandbytes' own
functions (4-bit: blocks of 64, fp32 absmax, no double quantization — transformers' defaults; int8: per-row
absmax / 127, LLM.int8's weight format) and written back in place, so the model stays an ordinary
checkpoint. Real: the model is saved and reloaded with a `BitsAndBytesConfig`, so inference runs through
bitsandbytes' layers (for int8 this includes LLM.int8's activation quantization with outlier threshold 6.0).
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qunlearn.errors import QuantizerUnavailableError
from qunlearn.quant.base import Quantizer
from qunlearn.quant.layers import outside_language_model, weight_matrix

FORMATS = ("int8", "fp4", "nf4")
BLOCKSIZE_4BIT = 64


def bnb_unavailable_reason(device: str | torch.device = "cpu") -> str | None:
    """Why bitsandbytes cannot quantize on `device` here, or None when it can."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        return "bitsandbytes: CUDA device requested but torch sees no GPU"
    if kind not in ("cpu", "cuda", "xpu"):
        return f"bitsandbytes does not support device type '{kind}'"
    return None


def bnb_fake_quantize(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """`w` quantized and dequantized by bitsandbytes in format 'int8', 'fp4' or 'nf4', in `w`'s dtype."""
    import bitsandbytes.functional as F

    if fmt == "int8":
        codes, row_stats, _ = F.int8_vectorwise_quant(w.to(torch.float16))
        return F.int8_vectorwise_dequant(codes, row_stats).to(w.dtype)
    if fmt in ("fp4", "nf4"):
        packed, state = F.quantize_4bit(
            w.contiguous(), blocksize=BLOCKSIZE_4BIT, quant_type=fmt, compress_statistics=False
        )
        return F.dequantize_4bit(packed, state).to(w.dtype)
    raise ValueError(f"unknown bitsandbytes format '{fmt}'; choose one of {', '.join(FORMATS)}")


def bnb_config(fmt: str, skip: tuple[str, ...], dtype: torch.dtype) -> Any:
    """The transformers BitsAndBytesConfig for a format, leaving the skipped modules unquantized."""
    from transformers import BitsAndBytesConfig

    if fmt == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(skip))
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=fmt, bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=list(skip)
    )


@dataclass
class BnbQuantizer(Quantizer):
    """A bitsandbytes format; fake-quantized in place by default, a real bitsandbytes model with `real=True`."""

    fmt: str = "nf4"
    real: bool = False
    device: str = "cpu"

    def unavailable_reason(self) -> str | None:
        return bnb_unavailable_reason(self.device)

    @torch.no_grad()
    def quantize(
        self, model: nn.Module, tokenizer: Any = None, calibration_texts: list[str] | None = None
    ) -> nn.Module:
        reason = self.unavailable_reason()
        if reason:
            raise QuantizerUnavailableError(f"{self.name} not available: {reason}")
        linears = self.targets(model)
        if self.real:
            return self._reload(model)
        for linear in linears.values():
            weight = weight_matrix(linear)
            weight.copy_(bnb_fake_quantize(weight, self.fmt))
        return model

    def _reload(self, model: nn.Module) -> nn.Module:
        """Save `model` and reload it through transformers with this format's BitsAndBytesConfig."""
        from transformers import AutoModelForCausalLM

        dtype = next(model.parameters()).dtype
        skip = (*self.skip, *outside_language_model(model))  # a multimodal model's vision tower, projector, ...
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            return AutoModelForCausalLM.from_pretrained(
                tmp, dtype=dtype, device_map=self.device, quantization_config=bnb_config(self.fmt, skip, dtype)
            ).eval()
