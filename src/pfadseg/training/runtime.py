"""Device and precision choices, made once per run from the configuration."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from pfadseg.errors import PfadsegError
from pfadseg.models.layers import memory_format_of


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


#: Every score that an OK/NG decision or a threshold uses: fp32 and contiguous, as the ONNX export computes it,
#: so that a run, its ONNX file and the Python API decide alike and a score does not depend on its batch mates.
DECISION_PRECISION = Precision(None, channels_last=False)
#: Inference for throughput: bf16 autocast, channels_last. Its scores differ slightly, so it has thresholds of its own.
INFERENCE_PRECISIONS = {"fp32": DECISION_PRECISION, "bf16": Precision(torch.bfloat16, channels_last=True)}


def inference_precision(name: str) -> Precision:
    """``fp32`` (the decision precision) or ``bf16`` (faster where the hardware has it)."""
    if name not in INFERENCE_PRECISIONS:
        raise PfadsegError(f"unknown inference precision {name!r}: expected {' or '.join(INFERENCE_PRECISIONS)}")
    return INFERENCE_PRECISIONS[name]


def resolve_precision(precision: str, channels_last: bool, device: torch.device) -> Precision:
    """Training precision: ``auto`` → bf16 autocast where the hardware runs it natively (CUDA, bf16-capable CPUs), else fp32."""
    if precision == "fp32":
        return Precision(None, channels_last)
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if precision == "bf16" or native:
        return Precision(torch.bfloat16, channels_last)
    return Precision(None, channels_last)


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
                part = torch.cat([part, pad]).contiguous(memory_format=memory_format_of(part))
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
