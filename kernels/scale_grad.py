"""In-place ``grad *= grad_output`` for the saved gradients of the fused losses.

The backward of a fused loss only multiplies the gradient saved in the forward pass by
``grad_output``. With a scalar ``grad_output`` the kernel reads it on the device and leaves the
gradient untouched when it is 1, so the common ``loss.backward()`` costs no host sync and no
memory traffic beyond one scalar read per program (at most ``MAX_PROGRAMS`` of them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, on_device

BLOCK = 2048
MAX_PROGRAMS = 4096  # grid cap: a no-op scalar backward launches at most this many programs
SCALAR, PER_ROW, ELEMENTWISE = 0, 1, 2


@triton.jit
def _scale_grad_kernel(grad_ptr, grad_output_ptr, numel, n_cols, go_row_stride, go_col_stride,
                       MODE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Grid-stride loop over the flattened ``grad``; in MODE 0 (scalar) every program reads the
    scalar once and skips the loop when it is 1."""
    first = tl.program_id(0).to(tl.int64) * BLOCK
    step = tl.num_programs(0).to(tl.int64) * BLOCK
    lanes = tl.arange(0, BLOCK)
    if MODE == 0:
        factor = tl.load(grad_output_ptr).to(ACC)
        if factor != 1.0:
            for start in range(first, numel, step):
                offsets = start + lanes
                inside = offsets < numel
                grad = tl.load(grad_ptr + offsets, mask=inside).to(ACC)
                tl.store(grad_ptr + offsets, (grad * factor).to(grad_ptr.dtype.element_ty),
                         mask=inside)
    else:
        for start in range(first, numel, step):
            offsets = start + lanes
            inside = offsets < numel
            rows = offsets // n_cols
            if MODE == 1:
                go_offsets = rows * go_row_stride
            else:
                go_offsets = rows * go_row_stride + (offsets - rows * n_cols) * go_col_stride
            factor = tl.load(grad_output_ptr + go_offsets, mask=inside).to(ACC)
            grad = tl.load(grad_ptr + offsets, mask=inside).to(ACC)
            tl.store(grad_ptr + offsets, (grad * factor).to(grad_ptr.dtype.element_ty),
                     mask=inside)


def scale_grad_(grad: torch.Tensor, grad_output: torch.Tensor) -> None:
    """``grad *= grad_output`` in place, multiplying in fp32 (fp64 for fp64 ``grad``).

    Args:
        grad: (N, C) or (N,) contiguous float tensor (a gradient the loss kernels allocated).
        grad_output: one element (read on the device; a no-op when it is 1), (N,) (one value
            per row of ``grad``) or shaped like ``grad``; any strides (expanded views are fine).
    """
    if not isinstance(grad, torch.Tensor) or grad.dtype not in FLOAT_DTYPES:
        raise TypeError(f"grad must be a float torch.Tensor, got {getattr(grad, 'dtype', grad)}")
    if not isinstance(grad_output, torch.Tensor) or not grad_output.dtype.is_floating_point:
        raise TypeError("grad_output must be a float torch.Tensor")
    if grad.dim() not in (1, 2) or not grad.is_contiguous():
        raise ValueError(f"grad must be a contiguous 1-D or 2-D tensor, got {tuple(grad.shape)}")
    if grad_output.device != grad.device:
        raise ValueError(f"grad_output on {grad_output.device}, grad on {grad.device}")
    numel = grad.numel()
    if numel == 0:
        return
    rows = grad.shape[0]
    n_cols = grad.shape[1] if grad.dim() == 2 else 1
    if grad_output.numel() == 1:
        mode, row_stride, col_stride = SCALAR, 0, 0
    elif grad_output.shape == grad.shape:
        mode = ELEMENTWISE if grad.dim() == 2 else PER_ROW
        row_stride = grad_output.stride(0)
        col_stride = grad_output.stride(1) if grad.dim() == 2 else 0
    elif grad_output.shape == (rows,):
        mode, row_stride, col_stride = PER_ROW, grad_output.stride(0), 0
    else:
        raise ValueError(
            f"grad_output must have one element, shape ({rows},) or {tuple(grad.shape)}, got "
            f"{tuple(grad_output.shape)}"
        )
    acc = tl.float64 if grad.dtype == torch.float64 else tl.float32
    with on_device(grad):
        _scale_grad_kernel[(min(triton.cdiv(numel, BLOCK), MAX_PROGRAMS),)](
            grad, grad_output, numel, n_cols, row_stride, col_stride,
            MODE=mode, BLOCK=BLOCK, ACC=acc, num_warps=8,
        )
