"""Fused feature-distance losses (MSE, L1, cosine) with their gradients.

- kind 0 (mse): ``(s - t)^2`` per element; ``d/ds = 2 (s - t)``, ``d/dt = -2 (s - t)``.
- kind 1 (l1):  ``|s - t|`` per element; ``d/ds = sign(s - t)`` (0 where equal), ``d/dt = -d/ds``.
- kind 2 (cosine), per row, with ``n_s = max(|s|, eps)``, ``n_t = max(|t|, eps)``,
  ``cos = s.t / (n_s n_t)``: ``1 - cos``;
  ``d/ds = -(t / (n_s n_t) - [|s| > eps] cos s / |s|^2)`` and symmetrically for ``t``.
  One sweep gathers ``|s|^2``, ``|t|^2`` and ``s.t``; a second writes the gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    check_grad_scale,
    check_logit_pair,
    check_rows,
    compute_dtypes,
    elementwise_block,
    next_pow2,
    on_device,
    split_float,
    warps_for_block,
)

KINDS = ("mse", "l1", "cosine")
COSINE_EPS = 1e-8
ROW_BLOCK_MAX = 4096


@triton.jit
def _elementwise_kernel(
    student_ptr, teacher_ptr, valid_ptr, grad_scale_ptr,
    loss_ptr, grad_student_ptr, grad_teacher_ptr,
    n_cols, student_row_stride, teacher_row_stride,
    KIND: tl.constexpr, HAS_VALID: tl.constexpr, HAS_SCALE: tl.constexpr,
    STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n_cols
    if HAS_VALID:
        row_valid = tl.load(valid_ptr + row) != 0
    else:
        row_valid = n_cols > 0
    read = cols < tl.where(row_valid, n_cols, 0)
    s = tl.load(student_ptr + row * student_row_stride + cols, mask=read, other=0.0).to(ACC)
    t = tl.load(teacher_ptr + row * teacher_row_stride + cols, mask=read, other=0.0).to(ACC)
    diff = s - t
    if KIND == 0:
        loss = diff * diff
        grad = 2.0 * diff
    else:
        loss = tl.abs(diff)
        grad = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(ACC)
    if HAS_SCALE:
        grad = grad * tl.load(grad_scale_ptr).to(ACC)
    grad = tl.where(row_valid, grad, 0.0)
    offsets = row * n_cols + cols
    tl.store(loss_ptr + offsets, tl.where(row_valid, loss, 0.0), mask=inside)
    if STUDENT_GRAD:
        tl.store(grad_student_ptr + offsets, grad.to(grad_student_ptr.dtype.element_ty),
                 mask=inside)
    if TEACHER_GRAD:
        tl.store(grad_teacher_ptr + offsets, (-grad).to(grad_teacher_ptr.dtype.element_ty),
                 mask=inside)


@triton.jit
def _cosine_kernel(
    student_ptr, teacher_ptr, valid_ptr, grad_scale_ptr,
    loss_ptr, grad_student_ptr, grad_teacher_ptr,
    n_cols, student_row_stride, teacher_row_stride, eps_hi, eps_lo,
    HAS_VALID: tl.constexpr, HAS_SCALE: tl.constexpr,
    STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    if HAS_VALID:
        row_valid = tl.load(valid_ptr + row) != 0
    else:
        row_valid = n_cols > 0
    n_read = tl.where(row_valid, n_cols, 0)
    student_row = student_ptr + row * student_row_stride
    teacher_row = teacher_ptr + row * teacher_row_stride
    cols0 = tl.arange(0, BLOCK)

    zero = tl.full((), 0.0, ACC)
    square_s = zero
    square_t = zero
    dot = zero
    for start in range(0, n_read, BLOCK):
        cols = start + cols0
        s = tl.load(student_row + cols, mask=cols < n_read, other=0.0).to(ACC)
        t = tl.load(teacher_row + cols, mask=cols < n_read, other=0.0).to(ACC)
        square_s += tl.sum(s * s, axis=0)
        square_t += tl.sum(t * t, axis=0)
        dot += tl.sum(s * t, axis=0)
    norm_s = tl.sqrt(square_s)
    norm_t = tl.sqrt(square_t)
    eps_acc = (zero + eps_hi) + eps_lo
    denominator = tl.maximum(norm_s, eps_acc) * tl.maximum(norm_t, eps_acc)
    cosine = dot / denominator
    tl.store(loss_ptr + row, tl.where(row_valid, 1.0 - cosine, 0.0))

    if STUDENT_GRAD or TEACHER_GRAD:
        # d(1 - cos)/ds = (cos s/n_s - t/n_t) / n_s, written with unit vectors so that exact
        # zeros (e.g. D = 1) come out exactly; the clamped norm is constant below eps.
        clamped_s = tl.maximum(norm_s, eps_acc)
        clamped_t = tl.maximum(norm_t, eps_acc)
        cos_s = tl.where(norm_s > eps_acc, cosine, 0.0)
        cos_t = tl.where(norm_t > eps_acc, cosine, 0.0)
        factor_s = 1.0 / clamped_s
        factor_t = 1.0 / clamped_t
        if HAS_SCALE:
            grad_scale = tl.load(grad_scale_ptr).to(ACC)
            factor_s = factor_s * grad_scale
            factor_t = factor_t * grad_scale
        for start in range(0, n_cols, BLOCK):
            cols = start + cols0
            s = tl.load(student_row + cols, mask=cols < n_read, other=0.0).to(ACC)
            t = tl.load(teacher_row + cols, mask=cols < n_read, other=0.0).to(ACC)
            unit_s = s / clamped_s
            unit_t = t / clamped_t
            if STUDENT_GRAD:
                grad = tl.where(row_valid, (cos_s * unit_s - unit_t) * factor_s, 0.0)
                tl.store(grad_student_ptr + row * n_cols + cols,
                         grad.to(grad_student_ptr.dtype.element_ty), mask=cols < n_cols)
            if TEACHER_GRAD:
                grad = tl.where(row_valid, (cos_t * unit_t - unit_s) * factor_t, 0.0)
                tl.store(grad_teacher_ptr + row * n_cols + cols,
                         grad.to(grad_teacher_ptr.dtype.element_ty), mask=cols < n_cols)


def feature_loss_forward(student: torch.Tensor, teacher: torch.Tensor,
                         valid: torch.Tensor | None, grad_scale: torch.Tensor | None, kind: int,
                         student_grad: bool, teacher_grad: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature distance and the gradients of ``grad_scale * sum(loss)``.

    Args:
        student, teacher: (N, D) fp32/bf16/fp16/fp64, ``stride(-1) == 1``.
        valid: (N,) bool or None (all rows valid). Invalid rows are not read.
        grad_scale: one-element tensor on the device (the mean's ``1/count``), or None (1).
        kind: 0 mse, 1 l1, 2 cosine.

    Returns:
        loss: (N, D) per element for mse/l1, (N,) per row for cosine, fp32 (fp64 for fp64
        inputs), 0 on invalid rows; grad_student, grad_teacher (N, D) in the input dtype, or
        empty when not requested.
    """
    check_logit_pair("feature_loss_forward", student, teacher)
    if kind not in (0, 1, 2):
        raise ValueError(f"kind must be 0 (mse), 1 (l1) or 2 (cosine), got {kind!r}")
    rows, n_cols = student.shape
    device = student.device
    acc_dtype, loss_dtype = compute_dtypes(student.dtype)
    check_rows("valid", valid, rows, torch.bool, device)
    check_grad_scale(grad_scale, device)

    loss_shape = (rows,) if kind == 2 else (rows, n_cols)
    loss = torch.empty(loss_shape, dtype=loss_dtype, device=device)
    grad_student = (torch.empty((rows, n_cols), dtype=student.dtype, device=device)
                    if student_grad else student.new_empty(0))
    grad_teacher = (torch.empty((rows, n_cols), dtype=teacher.dtype, device=device)
                    if teacher_grad else teacher.new_empty(0))
    if rows == 0:
        return loss, grad_student, grad_teacher

    common = dict(
        HAS_VALID=valid is not None, HAS_SCALE=grad_scale is not None,
        STUDENT_GRAD=bool(student_grad), TEACHER_GRAD=bool(teacher_grad), ACC=acc_dtype,
    )
    pointers = (
        student, teacher,
        valid.contiguous().view(torch.uint8) if valid is not None else student,
        grad_scale if grad_scale is not None else loss,
        loss,
        grad_student if student_grad else loss,
        grad_teacher if teacher_grad else loss,
    )
    with on_device(student):
        if kind == 2:
            block = min(next_pow2(n_cols), ROW_BLOCK_MAX)
            _cosine_kernel[(rows,)](
                *pointers, n_cols, student.stride(0), teacher.stride(0), *split_float(COSINE_EPS),
                BLOCK=block, num_warps=warps_for_block(block), **common,
            )
        else:
            block, num_warps = elementwise_block(n_cols)
            _elementwise_kernel[(rows, triton.cdiv(n_cols, block))](
                *pointers, n_cols, student.stride(0), teacher.stride(0),
                KIND=int(kind), BLOCK=block, num_warps=num_warps, **common,
            )
    return loss, grad_student, grad_teacher
