"""Feature-distance loss between intermediate student and teacher features shaped (..., D).

- ``kind="mse"``: ``(s - t)^2`` per element; ``"mean"`` averages over valid elements.
- ``kind="l1"``: ``|s - t|`` per element (gradient ``sign(s - t)``, 0 where equal).
- ``kind="cosine"``: ``1 - s.t / (max(|s|, eps) * max(|t|, eps))`` per row, ``eps = 1e-8``;
  ``"mean"`` averages over valid rows.

Rows (leading positions) where ``mask`` is False drop out.
"""

from __future__ import annotations

import torch

from kdcore import _backends
from kdcore.ops import _checks
from kdcore.ops._fused import needs_grad, reduce_items, register_fused_autograd

KINDS = ("mse", "l1", "cosine")
REDUCTIONS = ("mean", "sum", "none")
COSINE_EPS = 1e-8


def feature_loss_reference(student_feats: torch.Tensor, teacher_feats: torch.Tensor, *,
                           kind: str = "mse", mask: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """Plain-torch :func:`feature_loss` (arguments checked by the caller)."""
    compute_dtype = torch.float64 if student_feats.dtype == torch.float64 else torch.float32
    if mask is None:
        mask = torch.ones(student_feats.shape[:-1], dtype=torch.bool,
                          device=student_feats.device)
    keep = mask[..., None]
    student = torch.where(keep, student_feats.to(compute_dtype), 0.0)
    teacher = torch.where(keep, teacher_feats.to(compute_dtype), 0.0)
    if kind == "mse":
        per_item = (student - teacher).square()
        count = mask.sum() * student_feats.shape[-1]
    elif kind == "l1":
        per_item = (student - teacher).abs()
        count = mask.sum() * student_feats.shape[-1]
    else:
        norms = (student.norm(dim=-1).clamp(min=COSINE_EPS)
                 * teacher.norm(dim=-1).clamp(min=COSINE_EPS))
        per_item = 1.0 - (student * teacher).sum(-1) / norms
        keep = mask
        count = mask.sum()
    per_item = torch.where(keep, per_item, 0.0)
    if reduction == "none":
        return per_item
    total = per_item.sum()
    if reduction == "sum":
        return total
    return total / count.clamp(min=1)


@torch.library.custom_op("kdcore::feature_loss", mutates_args=())
def _feature_loss_op(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None,
                     kind: int, reduction: int, backend: str, student_grad: bool,
                     teacher_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """student/teacher (N, D); valid (N,) bool or None. kind: index into KINDS.
    Returns (loss, d loss/d student, d loss/d teacher); an unrequested gradient is empty.
    The launchers return per-element losses (N, D) for mse/l1 and per-row (N,) for cosine."""
    rows, width = student.shape
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    if REDUCTIONS[reduction] == "mean":
        count = valid.sum() if valid is not None else torch.tensor(rows, device=student.device)
        if KINDS[kind] != "cosine":
            count = count * width
        grad_scale = 1.0 / count.clamp(min=1).to(loss_dtype)
    else:
        grad_scale = None
    if backend == "triton":
        launch = _backends.triton_kernels().feature_loss_forward
    else:
        launch = _backends.cpp_ops().feature_loss_forward
    item_loss, grad_student, grad_teacher = launch(
        student, teacher, valid, grad_scale, kind, student_grad, teacher_grad)
    loss = reduce_items(item_loss, grad_scale, keep_items=REDUCTIONS[reduction] == "none")
    return loss, grad_student, grad_teacher


@_feature_loss_op.register_fake
def _(student, teacher, valid, kind, reduction, backend, student_grad, teacher_grad):
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    if REDUCTIONS[reduction] != "none":
        loss_shape = ()
    elif KINDS[kind] == "cosine":
        loss_shape = (student.shape[0],)
    else:
        loss_shape = tuple(student.shape)
    return (student.new_empty(loss_shape, dtype=loss_dtype),
            torch.empty_like(student) if student_grad else student.new_empty(0),
            torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0))


register_fused_autograd(_feature_loss_op, num_inputs=8, backend_index=5)


def feature_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor, *, kind: str = "mse",
                 mask: torch.Tensor | None = None, reduction: str = "mean",
                 backend: str = "auto") -> torch.Tensor:
    """Distance between features shaped (..., D).

    Args:
        student_feats, teacher_feats: (..., D), same shape and dtype (fp32/bf16/fp16/fp64).
        kind: ``"mse"``, ``"l1"`` or ``"cosine"`` (over the last dim).
        mask: (...) bool; False rows drop out.
        reduction: ``"mean"`` (valid elements for mse/l1, valid rows for cosine), ``"sum"``
            or ``"none"`` ((..., D) for mse/l1, (...) for cosine; 0 where masked).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"reference"``.

    Returns:
        fp32 loss (fp64 for fp64 inputs). Gradients flow to whichever input requires grad.
    """
    _checks.check_pair("student_feats", student_feats, "teacher_feats", teacher_feats)
    _checks.check_devices(student_feats=student_feats, teacher_feats=teacher_feats, mask=mask)
    _checks.check_choice("kind", kind, KINDS)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    lead_shape = student_feats.shape[:-1]
    _checks.check_mask(mask, lead_shape)
    resolved = _backends.resolve_backend(backend, student_feats.device)
    if resolved == "reference":
        return feature_loss_reference(student_feats, teacher_feats, kind=kind, mask=mask,
                                      reduction=reduction)

    width = student_feats.shape[-1]
    student = student_feats.reshape(-1, width)
    teacher = teacher_feats.reshape(-1, width)
    if student.stride(-1) != 1:
        student = student.contiguous()
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    loss, _, _ = _feature_loss_op(
        student, teacher, _checks.valid_rows(mask), KINDS.index(kind),
        REDUCTIONS.index(reduction), resolved, needs_grad(student_feats),
        needs_grad(teacher_feats))
    if reduction == "none":
        return loss.reshape(lead_shape if kind == "cosine" else student_feats.shape)
    return loss
