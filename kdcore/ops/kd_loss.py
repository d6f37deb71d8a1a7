"""Temperature-scaled softmax distillation loss (Hinton KD, reverse KL, JSD) with a hard-label
cross-entropy mix, masks and ignored rows.

With ``p_t = softmax(teacher/T)`` and ``p_s = softmax(student/T)`` over the last dimension:

- ``kind="kl"``:         ``T^2 * KL(p_t || p_s)``
- ``kind="reverse_kl"``: ``T^2 * KL(p_s' || p_t)``, where ``p_s'`` is the student's softmax
  restricted to the teacher's support: classes whose teacher logit is ``-inf`` are dropped
  from the student's softmax too. The loss stays finite where KL(p_s || p_t) would be infinite,
  and those classes get zero gradient (no NaN). Penalising student mass there is the job of
  ``kind="kl"``/``"jsd"`` or the label term; where the student is ``-inf`` too, nothing changes.
- ``kind="jsd"``:        ``T^2 * (beta*KL(p_t||m) + (1-beta)*KL(p_s||m))``,
  ``m = beta*p_t + (1-beta)*p_s``

With ``labels``: ``alpha*KD + (1-alpha)*CE(student, labels)``, the CE at temperature 1.
``0*log 0`` counts as 0. Rows where ``mask`` is False or ``labels == ignore_index`` drop out of
every term.
"""

from __future__ import annotations

import math

import torch

from kdcore import _backends, defaults
from kdcore.ops import _checks
from kdcore.ops._fused import needs_grad, reduce_items, register_fused_autograd

KINDS = ("kl", "reverse_kl", "jsd")
REDUCTIONS = ("batchmean", "sum", "none")


# --------------------------------------------------------------------------------------------
# Reference: plain torch, the specification.
# --------------------------------------------------------------------------------------------


def _log(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _log_mixture(weighted_log_p: torch.Tensor, weighted_log_q: torch.Tensor) -> torch.Tensor:
    """``log(exp(a) + exp(b))``, -inf where both are -inf, with a finite gradient there too."""
    empty = (weighted_log_p == -math.inf) & (weighted_log_q == -math.inf)
    mixed = torch.logaddexp(torch.where(empty, 0.0, weighted_log_p),
                            torch.where(empty, 0.0, weighted_log_q))
    return torch.where(empty, -math.inf, mixed)


def _kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_c p*(log p - log q)`` over the last dim, with ``0*log 0 = 0`` (also in the grad)."""
    has_mass = log_p > -math.inf
    log_p_safe = torch.where(has_mass, log_p, 0.0)
    log_q_safe = torch.where(has_mass, log_q, 0.0)
    return (log_p_safe.exp() * has_mass * (log_p_safe - log_q_safe)).sum(-1)


def kd_loss_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float = defaults.TEMPERATURE, kind: str = "kl",
                      beta: float = 0.5, labels: torch.Tensor | None = None,
                      alpha: float = defaults.ALPHA,
                      ignore_index: int = -100, mask: torch.Tensor | None = None,
                      reduction: str = "batchmean") -> torch.Tensor:
    """Plain-torch :func:`kd_loss` (arguments checked by the caller). Maths in fp32 (fp64 for
    fp64 inputs)."""
    compute_dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    valid = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
    if mask is not None:
        valid = valid & mask
    if labels is not None:
        valid = valid & (labels != ignore_index)
    # Excluded rows may hold anything (padding); zero them so nothing leaks into the gradient.
    student = torch.where(valid[..., None], student_logits.to(compute_dtype), 0.0)
    teacher = torch.where(valid[..., None], teacher_logits.to(compute_dtype), 0.0)

    log_p_s = torch.log_softmax(student / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher / temperature, dim=-1)
    if kind == "kl":
        distill = _kl_from_log_probs(log_p_t, log_p_s)
    elif kind == "reverse_kl":
        # The student restricted to the teacher's support (see the module doc).
        excluded = teacher == -math.inf
        restricted = torch.where(excluded, -math.inf, student)
        log_p_r = torch.log_softmax(restricted / temperature, dim=-1)
        distill = _kl_from_log_probs(log_p_r, log_p_t)
    else:
        log_m = _log_mixture(log_p_t + _log(beta), log_p_s + _log(1.0 - beta))
        distill = torch.zeros_like(log_m[..., 0])
        if beta > 0:
            distill = distill + beta * _kl_from_log_probs(log_p_t, log_m)
        if beta < 1:
            distill = distill + (1.0 - beta) * _kl_from_log_probs(log_p_s, log_m)
    per_row = temperature**2 * distill
    if labels is not None and alpha < 1.0:
        safe_labels = torch.where(valid, labels, 0)
        log_q = torch.log_softmax(student, dim=-1)
        cross_entropy = -log_q.gather(-1, safe_labels[..., None]).squeeze(-1)
        per_row = alpha * per_row + (1.0 - alpha) * cross_entropy
    per_row = torch.where(valid, per_row, 0.0)

    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------
# Fused op: C++ on CPU, Triton on GPU (or the CPU interpreter).
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("kdcore::kd_loss", mutates_args=())
def _kd_loss_op(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                valid: torch.Tensor | None, temperature: float, kind: int, beta: float,
                alpha: float, reduction: int, backend: str, student_grad: bool,
                teacher_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """student/teacher (N, C); labels (N,) int64 or None; valid (N,) bool or None.
    kind: index into KINDS; reduction: index into REDUCTIONS.
    Returns (loss, d loss/d student, d loss/d teacher); an unrequested gradient is empty."""
    rows = student.shape[0]
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    if REDUCTIONS[reduction] == "batchmean":
        count = valid.sum() if valid is not None else torch.tensor(rows, device=student.device)
        grad_scale = 1.0 / count.clamp(min=1).to(loss_dtype)
    else:
        grad_scale = None
    if backend == "triton":
        launch = _backends.triton_kernels().kd_loss_forward
    else:
        launch = _backends.cpp_ops().kd_loss_forward
    row_loss, grad_student, grad_teacher = launch(
        student, teacher, labels, valid, grad_scale, temperature, kind, beta, alpha,
        student_grad, teacher_grad)
    loss = reduce_items(row_loss, grad_scale, keep_items=REDUCTIONS[reduction] == "none")
    return loss, grad_student, grad_teacher


@_kd_loss_op.register_fake
def _(student, teacher, labels, valid, temperature, kind, beta, alpha, reduction, backend,
      student_grad, teacher_grad):
    loss_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss_shape = (student.shape[0],) if REDUCTIONS[reduction] == "none" else ()
    return (student.new_empty(loss_shape, dtype=loss_dtype),
            torch.empty_like(student) if student_grad else student.new_empty(0),
            torch.empty_like(teacher) if teacher_grad else teacher.new_empty(0))


register_fused_autograd(_kd_loss_op, num_inputs=12, backend_index=9)


# --------------------------------------------------------------------------------------------
# Public function.
# --------------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
            temperature: float = defaults.TEMPERATURE, kind: str = "kl", beta: float = 0.5,
            labels: torch.Tensor | None = None, alpha: float = defaults.ALPHA,
            ignore_index: int = -100,
            mask: torch.Tensor | None = None, reduction: str = "batchmean",
            backend: str = "auto") -> torch.Tensor:
    """Distillation loss between logits shaped (..., C), softmax over the last dim.

    Args:
        student_logits, teacher_logits: (..., C), fp32/bf16/fp16 (fp64 for checks); same shape.
        temperature: T > 0 (default ``kdcore.defaults.TEMPERATURE`` = 2.0). The KD term is
            scaled by T^2 (always).
        kind: ``"kl"`` (Hinton), ``"reverse_kl"`` or ``"jsd"`` (mixture weight ``beta``).
        labels: (...) int class ids; adds ``(1-alpha)*CE(student, labels)`` at T=1 (default
            None: the KD term alone, whatever ``alpha``).
        alpha: weight of the KD term in [0, 1] when ``labels`` are given (default
            ``kdcore.defaults.ALPHA`` = 0.9).
        ignore_index: label value whose rows drop out of both terms.
        mask: (...) bool; False rows drop out of every term (padded frames).
        reduction: ``"batchmean"`` (sum over valid rows / number of valid rows, 0 if none),
            ``"sum"`` or ``"none"`` (per-row loss, 0 for excluded rows).
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"reference"``.

    Returns:
        fp32 loss (fp64 for fp64 inputs): a scalar, or shaped (...) for ``"none"``. Gradients
        flow to ``student_logits`` and, when it requires grad, ``teacher_logits``, in their dtype.
    """
    _checks.check_pair("student_logits", student_logits, "teacher_logits", teacher_logits)
    _checks.check_devices(student_logits=student_logits, teacher_logits=teacher_logits,
                          labels=labels, mask=mask)
    temperature = _checks.check_temperature(temperature)
    _checks.check_choice("kind", kind, KINDS)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    beta = _checks.check_number("beta", beta, low=0.0, high=1.0)
    alpha = _checks.check_number("alpha", alpha, low=0.0, high=1.0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    lead_shape = student_logits.shape[:-1]
    num_classes = student_logits.shape[-1]
    _checks.check_mask(mask, lead_shape)
    if labels is not None:
        _check_labels(labels, lead_shape, num_classes, ignore_index)
    resolved = _backends.resolve_backend(backend, student_logits.device)

    if resolved == "reference":
        return kd_loss_reference(student_logits, teacher_logits, temperature=temperature,
                                 kind=kind, beta=beta, labels=labels, alpha=alpha,
                                 ignore_index=ignore_index, mask=mask, reduction=reduction)

    student = student_logits.reshape(-1, num_classes)
    teacher = teacher_logits.reshape(-1, num_classes)
    if student.stride(-1) != 1:
        student = student.contiguous()
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    flat_labels = labels.reshape(-1).long() if labels is not None else None
    ignored = flat_labels != ignore_index if flat_labels is not None else None
    valid = _checks.valid_rows(mask, ignored)
    loss, _, _ = _kd_loss_op(
        student, teacher, flat_labels if alpha < 1.0 else None, valid, temperature,
        KINDS.index(kind), beta, alpha, REDUCTIONS.index(reduction), resolved,
        needs_grad(student_logits), needs_grad(teacher_logits))
    if reduction == "none":
        return loss.reshape(lead_shape)
    return loss


def _check_labels(labels: torch.Tensor, lead_shape: torch.Size, num_classes: int,
                  ignore_index: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be an integer torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    if labels.shape != lead_shape:
        raise ValueError(
            f"labels must have the logits' leading shape {tuple(lead_shape)}, got "
            f"{tuple(labels.shape)}"
        )
    if _checks.skip_data_checks() or labels.numel() == 0:
        return
    kept = labels[labels != ignore_index]
    if kept.numel() and (bool(kept.min() < 0) or bool(kept.max() >= num_classes)):
        bad = kept[(kept < 0) | (kept >= num_classes)][0].item()
        raise ValueError(
            f"labels must be class ids in [0, {num_classes}) or ignore_index={ignore_index}, "
            f"got {bad}"
        )
