"""Device and precision choices, made once per run from the configuration."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from pfadseg.errors import PfadsegError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PfadsegError("--device cuda was asked for, but no CUDA GPU is available")
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device copy; to a GPU through pinned memory without blocking, so copies overlap compute."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    """How the forward passes run: dtype under autocast (None = fp32) and the memory format."""

    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def name(self) -> str:
        return "fp32" if self.autocast_dtype is None else "bf16"

    def autocast(self, device: torch.device) -> AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_precision(precision: str, channels_last: bool, device: torch.device) -> Precision:
    """``auto`` → bf16 autocast where the hardware runs it natively (CUDA, bf16-capable CPUs), else fp32."""
    if precision == "fp32":
        return Precision(None, channels_last)
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" or native:
        return Precision(torch.bfloat16, channels_last)
    return Precision(None, channels_last)


def bf16_channels_last_trains_safely(model: nn.Module) -> bool:
    """False when the model has a dilated conv whose channel count is not a multiple of 16.

    On CPU, oneDNN (as shipped with PyTorch 2.13) returns NaN/inf weight gradients for such convs in
    bf16 with channels_last (measured at 24 and 40 channels, the EfficientNet-Lite0 teacher's widths,
    dilations 2 and 3; 48, 64 and 112 channels are exact). Those models train in the contiguous format.
    """
    return not any(
        isinstance(m, nn.Conv2d) and max(m.dilation) > 1 and m.in_channels % 16 != 0 for m in model.modules()
    )


def training_precision(precision: Precision, model: nn.Module, device: torch.device) -> Precision:
    """``precision`` for training, without channels_last where the CPU backend would compute wrong gradients."""
    unsafe = device.type == "cpu" and precision.autocast_dtype == torch.bfloat16 and precision.channels_last
    if unsafe and not bf16_channels_last_trains_safely(model):
        return Precision(precision.autocast_dtype, channels_last=False)
    return precision


def compile_fixed_batch(fn: Callable[..., tuple[torch.Tensor, ...]], batch_size: int) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``torch.compile(fn)`` called at one batch size only, so that one compilation serves every call.

    Compiling takes minutes per input shape on a small CPU: a shorter batch is padded with copies of
    its last image and the outputs are cut back; a longer one runs in chunks. A compiler failure
    (no C++ toolchain, an unsupported backend) is one clear error, never a silent eager fallback.
    """
    compiled = torch.compile(fn, dynamic=False)

    def run(x: torch.Tensor, *args: object) -> tuple[torch.Tensor, ...]:
        chunks = []
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size]
            n = len(part)
            if n < batch_size:
                pad = part[-1:].expand(batch_size - n, *part.shape[1:])
                part = torch.cat([part, pad]).contiguous(memory_format=_memory_format_of(part))
            with compile_errors("run without --compile"):
                outputs = compiled(part, *args)
            chunks.append([o[:n] for o in outputs])
        return tuple(torch.cat(parts) for parts in zip(*chunks))

    return run


@contextlib.contextmanager
def compile_errors(hint: str) -> Iterator[None]:
    """A torch.compile failure (no C++ compiler, an unsupported operation) as one clear error that says what to do."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        text = str(err).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise PfadsegError(f"torch.compile failed ({type(err).__name__}: {first}); {hint}") from err


def _memory_format_of(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format
