"""Launch helpers shared by the loss kernels."""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import torch
import triton
import triton.language as tl

# Read once, at the kernels' first import: Triton's interpreter is chosen then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def compute_dtypes(dtype: torch.dtype) -> tuple[tl.dtype, torch.dtype]:
    """Kernel accumulation dtype and the torch dtype of losses: fp64 for fp64 inputs, else fp32."""
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def on_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``tensor``'s GPU the current device for a launch (Triton launches on the current
    device, which need not be the tensors')."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def split_float(value: float) -> tuple[float, float]:
    """``value`` as ``hi + lo`` with both parts exact in fp32.

    Triton passes Python floats as fp32; the kernels rebuild ``hi + lo`` in their accumulation
    dtype, so fp64 kernels see the scalar to about 48 bits and fp32 kernels see ``fp32(value)``.
    """
    hi = float(np.float32(value))  # numpy, not a torch tensor: this runs on every launch
    lo = float(np.float32(value - hi)) if math.isfinite(hi) else 0.0
    return hi, lo


def warps_for_block(block: int) -> int:
    """Warps per program for a row block of ``block`` elements (about 8-16 elements a thread)."""
    if block <= 512:
        return 2
    if block <= 2048:
        return 4
    if block <= 4096:
        return 8
    if block <= 8192:
        return 16
    return 32


def elementwise_block(n_cols: int) -> tuple[int, int]:
    """(block, num_warps) for kernels that map one program to a block of one row's elements:
    about 4 elements a thread, which keeps the sigmoid/softplus maths free of register spills."""
    block = min(next_pow2(n_cols), 1024)
    return block, max(1, min(8, block // 128))


def next_pow2(value: int) -> int:
    return triton.next_power_of_2(max(int(value), 1))


def check_logit_pair(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Launcher contract: 2-D same-shape same-dtype float tensors on one device, unit column
    stride (any row stride)."""
    for label, tensor in (("student", student), ("teacher", teacher)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise ValueError(f"{name}: {label} must be 2-D (N, C), got shape {tuple(tensor.shape)}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: {label} must be fp32/bf16/fp16/fp64, got {tensor.dtype}")
        if tensor.shape[1] > 1 and tensor.stride(1) != 1:
            raise ValueError(f"{name}: {label} must have stride(-1) == 1, got {tensor.stride()}")
    if student.shape != teacher.shape or student.dtype != teacher.dtype:
        raise ValueError(
            f"{name}: student and teacher must match, got {tuple(student.shape)} {student.dtype} "
            f"and {tuple(teacher.shape)} {teacher.dtype}"
        )
    if student.device != teacher.device:
        raise ValueError(f"{name}: student on {student.device}, teacher on {teacher.device}")


def check_rows(name: str, tensor: torch.Tensor | None, rows: int, dtype: torch.dtype,
               device: torch.device) -> None:
    """An optional per-row (N,) tensor of ``dtype`` on ``device``."""
    if tensor is None:
        return
    if tensor.shape != (rows,) or tensor.dtype != dtype or tensor.device != device:
        raise ValueError(
            f"{name} must be ({rows},) {dtype} on {device}, got {tuple(tensor.shape)} "
            f"{tensor.dtype} on {tensor.device}"
        )


def check_grad_scale(grad_scale: torch.Tensor | None, device: torch.device) -> None:
    """An optional one-element float tensor on ``device`` (read by the kernels in their
    accumulation dtype)."""
    if grad_scale is None:
        return
    if grad_scale.numel() != 1 or grad_scale.device != device:
        raise ValueError(
            f"grad_scale must be a one-element tensor on {device}, got shape "
            f"{tuple(grad_scale.shape)} on {grad_scale.device}"
        )
    if not grad_scale.dtype.is_floating_point:
        raise TypeError(f"grad_scale must be a float tensor, got {grad_scale.dtype}")
