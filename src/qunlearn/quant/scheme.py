"""A quantizer as a command asks for it: the scheme, the options it is given and where its calibration text comes
from, validated, then built (`configured_quantizer`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from qunlearn.errors import QuantizerUnavailableError, UserInputError
from qunlearn.quant.base import Quantizer
from qunlearn.quant.calibration import calibration_texts
from qunlearn.quant.registry import QUANTIZERS, get_quantizer, quantizer_fields


@dataclass(frozen=True)
class SchemeSettings:
    """A registered scheme with its options (None: the scheme's default; an option the scheme does not take is
    ignored, e.g. RTN's `n_samples`) and its calibration source: a text file, or a corpus' generic or forget text."""

    scheme: str
    group_size: int | None = None
    n_samples: int | None = None
    device: str | None = None  # where GPTQ/AWQ run their blocks (None: where the model is)
    offload_activations: str | None = None  # where GPTQ/AWQ keep calibration activations (None: 'none')
    calibration: str | None = None
    corpus: str | None = None
    calibrate_on: str = "generic"

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> SchemeSettings:
        """The settings the scheme flags give (`commands.options.add_scheme_options`), validated."""
        settings = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})  # one flag per field
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject a group size or sample count no quantizer can use, naming the flag."""
        if self.group_size is not None and not (self.group_size > 0 or self.group_size == -1):
            raise UserInputError(f"--group-size must be positive or -1 (per row), got {self.group_size}")
        if self.n_samples is not None and self.n_samples < 1:
            raise UserInputError(f"--n-samples must be at least 1, got {self.n_samples}")

    @property
    def calibration_source(self) -> str | None:
        """What calibrates, as recorded: the file, or the corpus with the text it gives (None when neither)."""
        return self.calibration or (f"{self.corpus} ({self.calibrate_on})" if self.corpus else None)


def configured_quantizer(settings: SchemeSettings) -> tuple[Quantizer, list[str]]:
    """The quantizer with each given option it takes, available here, and its calibration text (read even for a
    scheme that takes none); errors name the command-line flag."""
    takes = quantizer_fields(settings.scheme) if settings.scheme in QUANTIZERS else {}
    given = {
        "group_size": settings.group_size,
        "n_samples": settings.n_samples,
        "device": settings.device,
        "offload_activations": settings.offload_activations,
    }
    quantizer = get_quantizer(settings.scheme, **{k: v for k, v in given.items() if v is not None and k in takes})
    reason = quantizer.unavailable_reason()
    if reason:
        raise QuantizerUnavailableError(f"--scheme {settings.scheme} not available: {reason}")
    texts = calibration_texts(settings.calibration, settings.corpus, settings.calibrate_on)
    if quantizer.needs_calibration and not texts:
        raise UserInputError(
            f"--scheme {settings.scheme} needs calibration text: give --calibration FILE or --corpus DIR"
        )
    return quantizer, texts
