"""Multi-label (sigmoid) distillation loss for audio tagging.

Per element, with ``x = student/T`` and ``q = sigmoid(teacher/T)``:
``KD = T^2 * BCEWithLogits(x, q) = T^2 * (q*softplus(-x) + (1-q)*softplus(x))``.
With multi-hot ``labels``: ``alpha*KD + (1-alpha)*BCEWithLogits(student, labels)``.
Rows (all leading positions) where ``mask`` is False drop out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcore import _backends, defaults
from kdcore.ops import _checks
from kdcore.ops._fused import needs_grad, reduce_items, register_fused_autograd

REDUCTIONS = ("mean", "sum", "none")


def _bce_with_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise ``target*softplus(-x) + (1-target)*softplus(x)``; a zero weight kills its
    term even when the logit is infinite."""
    has_positive, has_negative = target > 0, target < 1
    positive = target * F.softplus(-torch.where(has_positive, logits, 0.0))
    negative = (1.0 - target) * F.softplus(torch.where(has_negative, logits, 0.0))
    return torch.where(has_positive, positive, 0.0) + torch.where(has_negative, negative, 0.0)


def kd_bce_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                          temperature: float = defaults.TEMPERATURE,
                          labels: torch.Tensor | None = None, alpha: float = defaults.ALPHA,
                          mask: torch.Tensor | None = None,
                          reduction: str = "mean") -> torch.Tensor:
    """Plain-torch :func:`kd_bce_loss` (arguments checked by the caller)."""
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    if mask is None:
        mask = torch.ones(student_logits.shape[:-1], dtype=torch.bool,
                          device=student_logits.device)
    keep = mask[..., None]
    student = torch.where(keep, student_logits.to(compute_dtype), 0.0)
    teacher = torch.where(keep, teacher_logits.to(compute_dtype), 0.0)
    soft_targets = torch.sigmoid(teacher / temperature)
    per_element = temperature**2 * _bce_with_logits(student / temperature, soft_targets)
    if labels is not None and alpha < 1.0:
        hard = torch.where(keep, labels.to(compute_dtype), 0.0)
        per_element = alpha * per_element + (1.0 - alpha) * _bce_with_logits(student, hard)
    per_element = torch.where(keep, per_element, 0.0)
    if reduction == "none":
        return per_element
    total = per_element.sum()
    if reduction == "sum":
        return total
    return total / (mask.sum() * student_logits.shape[-1]).clamp(min=1)


@torch.library.custom_op("kdcore::kd_bce_loss", mutates_args=())
def _kd_bce_loss_op(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                    valid: torch.Tensor | None, temperature: float, alpha: float,
                    reduction: int, backend: str, student_grad: bool,
                    teacher_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """student/teacher (N, C); labels (N, C) contiguous fp32 (fp64 for fp64 logits) or None;
    valid (N,) bool or None.
    Returns (loss, d loss/d student, d loss/d teacher); an unrequested gradient is empty."""
    rows, classes = student.shape
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    if REDUCTIONS[reduction] == "mean":
        count = valid.sum() if valid is not None else torch.tensor(rows, device=student.device)
        grad_scale = 1.0 / (count * classes).clamp(min=1).to(loss_dtype)
    else:
        grad_scale = None
    if backend == "triton":
        launch = _backends.triton_kernels().kd_bce_loss_forward
    else:
        launch = _backends.cpp_ops().kd_bce_loss_forward
    element_loss, grad_student, grad_teacher = launch(
        student, teacher, labels, valid, grad_scale, temperature, alpha, student_grad,
        teacher_grad)
    loss = reduce_items(element_loss, grad_scale, keep_items=REDUCTIONS[reduction] == "none")
    return loss, grad_student, grad_teacher


@_kd_bce_loss_op.register_fake
def _(student, teacher, labels, valid, temperature, alpha, reduction, backend, student_grad,
      teacher_grad):
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss_shape = tuple(student.shape) if REDUCTIONS[reduction] == "none" else ()
    return (student.new_empty(loss_shape, dtype=loss_dtype),
            torch.empty_like(student) if student_grad else student.new_empty(0),
            torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0))


register_fused_autograd(_kd_bce_loss_op, num_inputs=10, backend_index=7)


def kd_bce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                temperature: float = defaults.TEMPERATURE, labels: torch.Tensor | None = None,
                alpha: float = defaults.ALPHA,
                mask: torch.Tensor | None = None,
                reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """Sigmoid distillation loss between logits shaped (..., C), per element.

    Args:
        student_logits, teacher_logits: (..., C) fp32/bf16/fp16 (fp64 for checks).
        temperature: T > 0 (default ``kdcore.defaults.TEMPERATURE`` = 2.0); the KD term is
            ``T^2 * BCEWithLogits(student/T, sigmoid(teacher/T))``.
        labels: (..., C) multi-hot (or soft) targets in [0, 1]; adds
            ``(1-alpha)*BCEWithLogits(student, labels)`` (default None: the KD term alone).
        alpha: weight of the KD term in [0, 1] when ``labels`` are given (default
            ``kdcore.defaults.ALPHA`` = 0.9).
        mask: (...) bool; False rows drop out.
        reduction: ``"mean"`` over valid elements, ``"sum"`` or ``"none"`` (per element).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"reference"``.

    Returns:
        fp32 loss (fp64 for fp64 inputs): a scalar, or (..., C) for ``"none"``.
    """
    _checks.check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _checks.check_devices(student_logits=student_logits, teacher_logits=teacher_logits,
                          labels=labels, mask=mask)
    temperature = _checks.check_temperature(temperature)
    alpha = _checks.check_number("alpha", alpha, low=0.0, high=1.0)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    lead_shape = student_logits.shape[:-1]
    num_classes = student_logits.shape[-1]
    _checks.check_mask(mask, lead_shape)
    if labels is not None:
        labels = _check_labels(labels, student_logits)
    resolved = _backends.resolve_backend(backend, student_logits.device)
    if resolved == "reference":
        return kd_bce_loss_reference(student_logits, teacher_logits, temperature=temperature,
                                     labels=labels, alpha=alpha, mask=mask,
                                     reduction=reduction)

    student = student_logits.reshape(-1, num_classes)
    teacher = teacher_logits.reshape(-1, num_classes)
    if student.stride(-1) != 1:
        student = student.contiguous()
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    flat_labels = None
    if labels is not None and alpha < 1.0:
        label_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
        flat_labels = labels.reshape(-1, num_classes).to(label_dtype).contiguous()
    loss, _, _ = _kd_bce_loss_op(
        student, teacher, flat_labels, _checks.valid_rows(mask), temperature, alpha,
        REDUCTIONS.index(reduction), resolved, needs_grad(student_logits),
        needs_grad(teacher_logits))
    if reduction == "none":
        return loss.reshape(student_logits.shape)
    return loss


def _check_labels(labels: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != student_logits.shape:
        raise ValueError(
            f"labels must have the logits' shape {tuple(student_logits.shape)}, got "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype.is_complex:
        raise TypeError(f"labels must be real multi-hot targets, got dtype {labels.dtype}")
    if not labels.dtype.is_floating_point:
        labels = labels.to(torch.float32)
    if not _checks.skip_data_checks() and labels.numel():
        if bool(((labels < 0) | (labels > 1) | labels.isnan()).any()):
            raise ValueError("labels must hold targets in [0, 1]")
    return labels
