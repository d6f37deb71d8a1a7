"""Argument checks shared by the ops. Each raises before anything is computed and names the
argument at fault."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_float_tensor(name: str, tensor: object) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16 or float64), "
            f"got dtype {tensor.dtype}"
        )
    if tensor.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension, got a 0-dim tensor")
    if tensor.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension, got shape "
                         f"{tuple(tensor.shape)}")


def check_pair(student_name: str, student: torch.Tensor, teacher_name: str,
               teacher: torch.Tensor) -> None:
    check_float_tensor(student_name, student)
    check_float_tensor(teacher_name, teacher)
    if student.shape != teacher.shape:
        raise ValueError(
            f"{student_name} and {teacher_name} must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.dtype != teacher.dtype:
        raise TypeError(
            f"{student_name} and {teacher_name} must have the same dtype, got "
            f"{student.dtype} and {teacher.dtype}"
        )


def check_devices(**tensors: torch.Tensor | None) -> None:
    present = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(present.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_number(name: str, value: object, *, low: float, high: float,
                 low_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or (low, high] with ``low_open``), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or value > high:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {bracket}{low}, {high}], got {value}")
    return value


def check_temperature(temperature: object) -> float:
    return check_number("temperature", temperature, low=0.0, high=math.inf, low_open=True)


def check_mask(mask: torch.Tensor | None, lead_shape: torch.Size) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if mask.shape != lead_shape:
        raise ValueError(
            f"mask must have the logits' leading shape {tuple(lead_shape)}, got "
            f"{tuple(mask.shape)}"
        )


def valid_rows(mask: torch.Tensor | None, extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """Flattened (N,) bool validity from ``mask`` and another bool tensor, or ``None`` (all)."""
    parts = [t.reshape(-1) for t in (mask, extra) if t is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0] & parts[1]


_state = threading.local()


@contextlib.contextmanager
def data_checks(enabled: bool) -> Iterator[None]:
    """Turn the ops' value checks (label ranges, target ranges) on or off in this thread.

    They read the data on the host, which on a GPU is a sync; a training loop that checked its
    labels on the CPU before the copy turns them off around its step. Shape, dtype and argument
    checks always run."""
    previous = getattr(_state, "enabled", True)
    _state.enabled = bool(enabled)
    try:
        yield
    finally:
        _state.enabled = previous


def skip_data_checks() -> bool:
    """Data-dependent checks (a host read) are skipped while tracing or capturing a graph, and
    inside ``data_checks(False)``."""
    if torch.compiler.is_compiling() or not getattr(_state, "enabled", True):
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
