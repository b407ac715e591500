"""The quantizer interface, and the block-by-block driver that GPTQ and AWQ share."""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from qunlearn.models.utils import context_length
from qunlearn.quant.activations import OFFLOAD, ActivationStore
from qunlearn.quant.calibration import calibration_sequences
from qunlearn.quant.layers import DEFAULT_SKIP, decoder_layers, outside_language_model, target_linears, weight_matrix
from qunlearn.quant.memory import release_freed_memory
from qunlearn.quant.rtn import rtn_codes, rtn_quantize

BlockInput = tuple[torch.Tensor, dict[str, Any]]


@dataclass
class Quantizer(ABC):
    """Fake-quantizes (writes dequantized weights in place, same dtype) the selected projection layers of a model.

    `fallbacks` lists, after `quantize`, every place where the quantizer did something other than what its
    settings ask ({"layers", "used", "reason"}), so that quantize.yaml and the report can carry it.
    """

    name: str
    skip: tuple[str, ...] = DEFAULT_SKIP
    fallbacks: list[dict[str, Any]] = field(default_factory=list, init=False, compare=False, repr=False)
    needs_calibration: ClassVar[bool] = False

    def fall_back(self, layers: list[str], used: str, reason: str) -> None:
        """Record a deviation from the settings once (a quantizer reused over several models keeps one list), and warn."""
        entry = {"layers": layers, "used": used, "reason": reason}
        if entry in self.fallbacks:
            return
        self.fallbacks.append(entry)
        warnings.warn(f"{self.name}: {reason}; using {used} for {len(layers)} layer(s), e.g. {layers[0]}", stacklevel=3)

    def targets(self, model: nn.Module) -> dict[str, nn.Module]:
        """The projection layers to quantize (`target_linears`); a multimodal model's other parts (vision tower,
        projector) stay in full precision, recorded as a fallback so that it is never silent."""
        parts = outside_language_model(model)
        layers = [name for names in parts.values() for name in names]
        if layers:
            reason = f"{', '.join(parts)} outside the language model, kept as they are (text-only audit)"
            self.fall_back(layers, "full precision", reason)
        return target_linears(model, self.skip)

    def unavailable_reason(self) -> str | None:
        """Why this quantizer cannot run here, or None when it can."""
        return None

    def available(self) -> bool:
        """True when this quantizer can run in this environment."""
        return self.unavailable_reason() is None

    @abstractmethod
    def quantize(
        self, model: nn.Module, tokenizer: Any = None, calibration_texts: list[str] | None = None
    ) -> nn.Module:
        """Quantize `model` in place and return it."""


@dataclass
class FullPrecision(Quantizer):
    """The identity: the unquantized model, so 'fp' sits in the same grid as the real quantizers."""

    def quantize(
        self, model: nn.Module, tokenizer: Any = None, calibration_texts: list[str] | None = None
    ) -> nn.Module:
        return model


@dataclass
class GridQuantizer(Quantizer):
    """A quantizer whose weights land on the RTN grid (absmax per group, N-bit signed codes)."""

    bits: int = 4
    group_size: int = 128
    denominator: float | None = None

    def codes(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The RTN integer codes and per-group scales of one weight matrix under this grid."""
        return rtn_codes(weight, self.bits, self.group_size, self.denominator)

    def note_group_sizes(self, linears: dict[str, nn.Module]) -> None:
        """Record the layers whose rows the group size does not divide (they get one scale per row)."""
        widths: dict[int, list[str]] = {}
        for name, linear in linears.items():
            width = weight_matrix(linear).shape[1]
            if 0 < self.group_size < width and width % self.group_size:
                widths.setdefault(width, []).append(name)
        for width, names in widths.items():
            self.fall_back(
                names, "per-row scales", f"group size {self.group_size} does not divide rows of {width} weights"
            )


@dataclass
class RTNQuantizer(GridQuantizer):
    """Round-to-nearest on the grid: no calibration."""

    @torch.no_grad()
    def quantize(
        self, model: nn.Module, tokenizer: Any = None, calibration_texts: list[str] | None = None
    ) -> nn.Module:
        linears = self.targets(model)
        self.note_group_sizes(linears)
        for linear in linears.values():
            weight = weight_matrix(linear)
            weight.copy_(rtn_quantize(weight, self.bits, self.group_size, self.denominator))
        return model


@dataclass
class CalibratedQuantizer(GridQuantizer):
    """Runs calibration text through the model one decoder block at a time, quantizing each block in turn.

    Only the current block's inputs are held (n_samples × seq_len × hidden floats), where `offload_activations` says:
    on the compute device ('none'), in host memory ('cpu') or on disk ('disk'), one sample at a time on the device
    when used; on an accelerator `device`, only the current block is moved there. A progress bar counts the blocks
    (`progress`). Each block's outputs replace its inputs after `quantize_block`, then `finish_block` runs: GPTQ
    quantizes in `quantize_block`, so later blocks see quantized inputs (as in llm-compressor); AWQ only smooths there
    and quantizes in `finish_block`, so later blocks see the smoothed, unquantized outputs (as in llm-compressor and
    AutoAWQ). Selected Linear layers outside the decoder blocks get plain RTN.
    """

    n_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    device: str | None = None
    offload_activations: str = "none"
    progress: bool = True
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.offload_activations not in OFFLOAD:
            raise ValueError(
                f"{self.name}: offload_activations must be one of {', '.join(OFFLOAD)}, got '{self.offload_activations}'"
            )

    @abstractmethod
    def quantize_block(self, block: nn.Module, linears: dict[str, nn.Linear], inputs: ActivationStore) -> None:
        """Quantize (or prepare) the selected projection layers of one block (keyed by full name), given its inputs."""

    def finish_block(self, linears: dict[str, nn.Module]) -> None:
        """Work on a block's layers after its outputs have been passed on (nothing by default)."""

    @torch.no_grad()
    def quantize(
        self, model: nn.Module, tokenizer: Any = None, calibration_texts: list[str] | None = None
    ) -> nn.Module:
        if tokenizer is None or not calibration_texts:
            raise ValueError(f"{self.name} needs a tokenizer and calibration text")
        seq_len = min(self.seq_len, context_length(model) or self.seq_len)
        sequences = calibration_sequences(tokenizer, calibration_texts, self.n_samples, seq_len, self.seed)
        layers_name, layers = decoder_layers(model)
        home = next(model.parameters()).device
        device = torch.device(self.device) if self.device else home
        selected = self.targets(model)
        self.note_group_sizes(selected)
        in_blocks = set()
        inputs, kwargs_sets = self.activation_store(device), self.activation_store(device)
        training = model.training
        model.eval()  # calibration activations without dropout, whatever mode the caller's model is in
        try:
            with _outside_blocks_on(model, layers, device):
                set_of_block = capture_block_inputs(model, layers, sequences, inputs, kwargs_sets)
            release_freed_memory()
            blocks = tqdm(layers, desc=f"{self.name} blocks", leave=False, disable=not self.progress)
            for index, block in enumerate(blocks):
                prefix = f"{layers_name}.{index}."
                linears = {n: m for n, m in selected.items() if n.startswith(prefix)}
                in_blocks.update(linears)
                block.to(device)
                self.quantize_block(block, linears, inputs)
                following = set_of_block[min(index + 1, len(layers) - 1)]
                for i, (hidden, kwargs) in enumerate(inputs):  # in place: one set of activations alive, not two
                    output = block_output(block(hidden, **kwargs))
                    del hidden
                    inputs[i] = (output, kwargs if following == set_of_block[index] else kwargs_sets[i][following])
                self.finish_block(linears)
                block.to(home)
                release_freed_memory()
        finally:
            inputs.close()
            kwargs_sets.close()
            model.train(training)
        for name, linear in selected.items():
            if name not in in_blocks:
                weight = weight_matrix(linear)
                weight.copy_(rtn_quantize(weight, self.bits, self.group_size, self.denominator))
        return model

    def activation_store(self, device: torch.device) -> ActivationStore:
        """An empty store for calibration activations used on `device`, kept where `offload_activations` says."""
        return ActivationStore(self.offload_activations, device)


class StopBlock(Exception):
    """Raised by a `record_module_inputs` callback when it has what it needs: the rest of the forward pass is skipped."""


def record_module_inputs(
    block: nn.Module,
    modules: dict[str, nn.Module],
    inputs: Iterable[BlockInput],
    record: Callable[[str, tuple, dict], None],
) -> None:
    """Run `block` over its calibration inputs, calling `record(name, args, kwargs)` as each named module is entered;
    `record` may raise StopBlock to end that sample's forward pass there."""
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, kwargs, name=name: record(name, args, kwargs), with_kwargs=True
        )
        for name, module in modules.items()
    ]
    try:
        for hidden, kwargs in inputs:
            try:
                block(hidden, **kwargs)
            except StopBlock:
                pass
            release_freed_memory()  # each pass's temporaries, or they pile up beside what `record` keeps
    finally:
        for handle in handles:
            handle.remove()


def block_output(output: Any) -> torch.Tensor:
    """The hidden states a decoder block returns (a tensor, or the first element of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def capture_block_inputs(
    model: nn.Module,
    layers: nn.ModuleList,
    sequences: list[torch.Tensor],
    captured: ActivationStore,
    kwargs_sets: ActivationStore,
) -> list[int]:
    """Run each sequence through the model with its decoder blocks skipped, adding the first block's (hidden states,
    kwargs) to `captured`; return which of a sample's distinct kwargs sets each block is called with.

    Blocks are not all called alike: Gemma-3's full-attention layers get other masks and rotary embeddings than its
    sliding-window ones. When there is more than one set, each sample's sets are added to `kwargs_sets`. Positional
    arguments after the hidden states (GPT-2 passes its mask so) are kept by name. The sequences go to `captured`'s
    device.
    """
    calls: list[tuple[torch.Tensor, dict[str, Any]]] = []
    set_of_block: list[int] | None = None
    with _SkippedBlocks(layers, calls):
        for ids in sequences:
            calls.clear()
            try:
                model(input_ids=ids.to(captured.device), use_cache=False)
            except StopBlock:
                pass
            if len(calls) != len(layers):
                raise RuntimeError(f"the model called {len(calls)} of its {len(layers)} decoder blocks")
            sets, assignment = _distinct_kwargs([kwargs for _, kwargs in calls])
            if set_of_block is not None and assignment != set_of_block:
                raise RuntimeError("calibration samples share arguments between decoder blocks differently")
            set_of_block = assignment
            captured.append(calls[0])
            if len(sets) > 1:
                kwargs_sets.append(sets)
    return set_of_block or []


class _SkippedBlocks:
    """Context manager: each decoder block records (hidden states, other arguments by name) in `calls` and returns its
    input unchanged; the last one stops the forward pass (StopBlock), so neither blocks nor head compute."""

    def __init__(self, layers: nn.ModuleList, calls: list[tuple[torch.Tensor, dict[str, Any]]]) -> None:
        self.layers, self.calls = layers, calls
        self.saved: list[Any] = []

    def _recorder(self, index: int) -> Callable[..., torch.Tensor]:
        names = list(inspect.signature(type(self.layers[index]).forward).parameters)[1:]  # after `self`

        def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs |= dict(zip(names[1:], args[1:]))
            self.calls.append((hidden, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}))
            if index == len(self.layers) - 1:
                raise StopBlock
            return hidden

        return forward

    def __enter__(self) -> None:
        for index, block in enumerate(self.layers):
            self.saved.append(block.__dict__.get("forward"))  # a forward patched by others (accelerate's hooks)
            block.forward = self._recorder(index)

    def __exit__(self, *exc: object) -> None:
        for block, saved in zip(self.layers, self.saved):
            if saved is None:
                del block.forward
            else:
                block.forward = saved


def _distinct_kwargs(calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """The distinct kwargs dicts among the blocks' calls (the same objects under the same names) and, per block, the
    index of its own among them."""
    sets: list[dict[str, Any]] = []
    keys: list[tuple] = []
    assignment = []
    for kwargs in calls:
        key = tuple(sorted((name, id(value)) for name, value in kwargs.items()))
        if key not in keys:
            keys.append(key)
            sets.append(kwargs)
        assignment.append(keys.index(key))
    return sets, assignment


class _outside_blocks_on:
    """Context manager: every module outside the decoder blocks on `device` (and back home on exit)."""

    def __init__(self, model: nn.Module, layers: nn.ModuleList, device: torch.device) -> None:
        self.model, self.layers, self.device = model, layers, device
        self.home = next(model.parameters()).device

    def _move(self, device: torch.device) -> None:
        blocks = {id(p) for p in self.layers.parameters()} | {id(b) for b in self.layers.buffers()}
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            if id(tensor) not in blocks:
                tensor.data = tensor.data.to(device)

    def __enter__(self) -> None:
        if self.device != self.home:
            self._move(self.device)

    def __exit__(self, *exc: object) -> None:
        if self.device != self.home:
            self._move(self.home)
