"""Fused sigmoid (multi-label) distillation loss with its gradients, per element.

With ``x = student/T``, ``u = teacher/T``, ``q = sigmoid(u)`` and
``BCE(x, q) = q softplus(-x) + (1-q) softplus(x)`` (a zero weight drops its term even at an
infinite logit):

- ``loss = w_kd T^2 BCE(x, q) + w_ce BCE(s, y)``
- ``d/ds = w_kd T ((1-q) sigmoid(x) - q sigmoid(-x)) + w_ce ((1-y) sigmoid(s) - y sigmoid(-s))``
- ``d/dt = -w_kd T x q (1-q)`` (0 where ``q (1-q) == 0``)

``1 - q`` is taken as ``sigmoid(-u)``, which keeps it accurate when ``q`` rounds to 1.
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
    on_device,
    split_float,
)


@triton.jit
def _logistic_parts(x):
    """``(sigmoid(x), sigmoid(-x), log1p(exp(-|x|)))`` from one ``exp`` and one ``log``; the
    exponent is never positive, so nothing overflows."""
    e = tl.exp(-tl.abs(x))
    one_plus = 1.0 + e
    inverse = 1.0 / one_plus
    upper = tl.where(x >= 0, inverse, e * inverse)
    lower = tl.where(x >= 0, e * inverse, inverse)
    # log1p(e) accurately for tiny e: log(1 + e) * e / ((1 + e) - 1).
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * (e / (one_plus - 1.0)))
    return upper, lower, log1p


@triton.jit
def _bce(x, log1p, q, q_rest):
    """``q softplus(-x) + q_rest softplus(x)`` with ``softplus(+-x) = max(+-x, 0) + log1p``;
    zero weights drop their (possibly infinite) terms."""
    positive = tl.where(q > 0, q * (tl.maximum(-x, 0.0) + log1p), 0.0)
    negative = tl.where(q_rest > 0, q_rest * (tl.maximum(x, 0.0) + log1p), 0.0)
    return positive + negative


@triton.jit
def _kd_bce_kernel(
    student_ptr, teacher_ptr, labels_ptr, valid_ptr, grad_scale_ptr,
    loss_ptr, grad_student_ptr, grad_teacher_ptr,
    n_cols, student_row_stride, teacher_row_stride,
    temperature_hi, temperature_lo, kd_weight_hi, kd_weight_lo, ce_weight_hi, ce_weight_lo,
    HAS_CE: tl.constexpr, HAS_VALID: tl.constexpr, HAS_SCALE: tl.constexpr,
    STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
    BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < n_cols
    zero = tl.full((), 0.0, ACC)
    temperature = (zero + temperature_hi) + temperature_lo
    kd_weight = (zero + kd_weight_hi) + kd_weight_lo
    ce_weight = (zero + ce_weight_hi) + ce_weight_lo
    if HAS_VALID:
        row_valid = tl.load(valid_ptr + row) != 0
    else:
        row_valid = n_cols > 0
    read = cols < tl.where(row_valid, n_cols, 0)

    s = tl.load(student_ptr + row * student_row_stride + cols, mask=read, other=0.0).to(ACC)
    t = tl.load(teacher_ptr + row * teacher_row_stride + cols, mask=read, other=0.0).to(ACC)
    x = s / temperature
    q, q_rest, _ = _logistic_parts(t / temperature)
    sigmoid_x, sigmoid_minus_x, log1p_x = _logistic_parts(x)
    loss = kd_weight * temperature * temperature * _bce(x, log1p_x, q, q_rest)
    if HAS_CE:
        y = tl.load(labels_ptr + row * n_cols + cols, mask=read, other=0.0).to(ACC)
        sigmoid_s, sigmoid_minus_s, log1p_s = _logistic_parts(s)
        loss += tl.where(ce_weight > 0, ce_weight * _bce(s, log1p_s, y, 1.0 - y), 0.0)
    offsets = row * n_cols + cols
    tl.store(loss_ptr + offsets, tl.where(row_valid, loss, 0.0), mask=inside)

    factor = kd_weight * temperature
    if HAS_SCALE:
        grad_scale = tl.load(grad_scale_ptr).to(ACC)
        factor = factor * grad_scale
        ce_factor = ce_weight * grad_scale
    else:
        ce_factor = ce_weight
    if STUDENT_GRAD:
        # d BCE(x, q)/dx = sigmoid(x) - q, as q_rest sigmoid(x) - q sigmoid(-x) (no cancellation).
        grad = factor * (q_rest * sigmoid_x - q * sigmoid_minus_x)
        if HAS_CE:
            grad += ce_factor * ((1.0 - y) * sigmoid_s - y * sigmoid_minus_s)
        grad = tl.where(row_valid, grad, 0.0)
        tl.store(grad_student_ptr + offsets, grad.to(grad_student_ptr.dtype.element_ty),
                 mask=inside)
    if TEACHER_GRAD:
        spread = q * q_rest
        grad = tl.where(spread > 0, -factor * x * spread, 0.0)
        grad = tl.where(row_valid, grad, 0.0)
        tl.store(grad_teacher_ptr + offsets, grad.to(grad_teacher_ptr.dtype.element_ty),
                 mask=inside)


def kd_bce_loss_forward(student: torch.Tensor, teacher: torch.Tensor,
                        labels: torch.Tensor | None, valid: torch.Tensor | None,
                        grad_scale: torch.Tensor | None, temperature: float, alpha: float,
                        student_grad: bool, teacher_grad: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element sigmoid distillation loss and the gradients of ``grad_scale * sum(loss)``.

    Args:
        student, teacher: (N, C) fp32/bf16/fp16/fp64, ``stride(-1) == 1``.
        labels: (N, C) contiguous fp32 (fp64 for fp64 logits) targets in [0, 1], or None (no
            hard-label term; ``alpha`` is then ignored).
        valid: (N,) bool or None (all rows valid). Invalid rows are not read.
        grad_scale: one-element tensor on the device (the mean's ``1/count``), or None (1).
        temperature: T > 0. alpha: weight of the KD term when ``labels`` is given.

    Returns:
        element loss (N, C) fp32 (fp64 for fp64 inputs), 0 on invalid rows; grad_student and
        grad_teacher (N, C) in the input dtype, or empty when not requested.
    """
    check_logit_pair("kd_bce_loss_forward", student, teacher)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows, n_cols = student.shape
    device = student.device
    acc_dtype, loss_dtype = compute_dtypes(student.dtype)
    check_rows("valid", valid, rows, torch.bool, device)
    check_grad_scale(grad_scale, device)
    if labels is not None:
        if (labels.shape != student.shape or labels.dtype != loss_dtype
                or not labels.is_contiguous() or labels.device != device):
            raise ValueError(
                f"labels must be a contiguous {tuple(student.shape)} {loss_dtype} tensor on "
                f"{device}, got {tuple(labels.shape)} {labels.dtype} on {labels.device}"
            )

    loss = torch.empty((rows, n_cols), dtype=loss_dtype, device=device)
    grad_student = (torch.empty((rows, n_cols), dtype=student.dtype, device=device)
                    if student_grad else student.new_empty(0))
    grad_teacher = (torch.empty((rows, n_cols), dtype=teacher.dtype, device=device)
                    if teacher_grad else teacher.new_empty(0))
    if rows == 0:
        return loss, grad_student, grad_teacher

    has_ce = labels is not None
    kd_weight = float(alpha) if has_ce else 1.0
    block, num_warps = elementwise_block(n_cols)
    with on_device(student):
        _kd_bce_kernel[(rows, triton.cdiv(n_cols, block))](
            student, teacher,
            labels if has_ce else loss,
            valid.contiguous().view(torch.uint8) if valid is not None else student,
            grad_scale if grad_scale is not None else loss,
            loss,
            grad_student if student_grad else loss,
            grad_teacher if teacher_grad else loss,
            n_cols, student.stride(0), teacher.stride(0),
            *split_float(float(temperature)), *split_float(kd_weight),
            *split_float(1.0 - kd_weight if has_ce else 0.0),
            HAS_CE=has_ce, HAS_VALID=valid is not None, HAS_SCALE=grad_scale is not None,
            STUDENT_GRAD=bool(student_grad), TEACHER_GRAD=bool(teacher_grad),
            BLOCK=block, ACC=acc_dtype, num_warps=num_warps,
        )
    return loss, grad_student, grad_teacher
