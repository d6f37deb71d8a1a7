"""Fused softmax distillation loss (KL, reverse KL, JSD, plus hard-label CE) with its gradient.

One program per row. With ``a = student/T``, ``b = teacher/T``, ``lp_s = a - lse(a)``,
``lp_t = b - lse(b)`` and ``p = exp(lp)``:

- kind 0 (kl):         ``KD = T^2 sum p_t (lp_t - lp_s)``; ``dKD/ds = T (p_s - p_t)``,
  ``dKD/dt = T p_t (lp_t - lp_s - KL)``.
- kind 1 (reverse_kl): the same with student and teacher swapped, the student restricted to
  the teacher's support (``a = -inf`` where ``b = -inf``): a finite loss, and zero gradient at
  classes the teacher rules out.
- kind 2 (jsd):        ``lm = log(beta p_t + (1-beta) p_s)``, ``g = (1-beta)(lp_s - lm)``,
  ``h = beta (lp_t - lm)``; ``KD = T^2 (sum p_t h + sum p_s g)``,
  ``dKD/ds = T p_s (g - sum p_s g)``, ``dKD/dt = T p_t (h - sum p_t h)``.
- CE at T = 1: ``lse(s) - s[y]``, gradient ``softmax(s) - onehot(y)``.

Every ``p * (...)`` term is taken as 0 where ``p == 0`` (``0 log 0 = 0``), so classes that both
distributions give no mass (``-inf`` logits, or underflow at small T) never make a NaN.

Rows up to ``SINGLE_BLOCK_MAX`` classes are read once and kept in registers. Longer rows are
streamed in chunks with an online log-sum-exp: kl/reverse_kl take two sweeps (the KL total for
the teacher gradient is accumulated online in the first), jsd three (its gradient needs the
final sums); a sweep that only writes gradients is skipped when none is requested.
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
    next_pow2,
    on_device,
    split_float,
)

KINDS = ("kl", "reverse_kl", "jsd")
# Launch configuration (module-level so that a GPU benchmark can sweep it):
SINGLE_BLOCK_MAX = 8192  # rows up to this many classes (next power of 2) stay in registers
CHUNK = 8192  # chunk width of the streamed path for longer rows
NUM_WARPS: dict[int, int] = {}  # block -> num_warps, overriding ``launch_config``'s choice

NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _shifted(x, row_max):
    """``x - max`` with ``-inf`` (not NaN) where ``x`` is ``-inf``."""
    return tl.where(x == NEG_INF, NEG_INF, x - row_max)


@triton.jit
def _online_lse(running_max, running_sum, x):
    """Fold the chunk ``x`` into a running max and a running ``sum exp(x - max)``.
    Returns the new max, new sum, the factor the old sum was rescaled by, and ``exp(x - max)``."""
    new_max = tl.maximum(running_max, tl.max(x, axis=0))
    rescale = tl.where(new_max == NEG_INF, 0.0, tl.exp(running_max - new_max))
    weights = tl.exp(_shifted(x, new_max))
    return new_max, running_sum * rescale + tl.sum(weights, axis=0), rescale, weights


@triton.jit
def _log_sum(row_sum):
    return tl.where(row_sum > 0, tl.log(row_sum), NEG_INF)


@triton.jit
def _log_softmax(x, row_max, log_sum):
    """``x - lse`` as ``(x - max) - log(sum)``: exact shifts keep precision at logits of 1e4."""
    return (x - row_max) - log_sum


@triton.jit
def _online_kl(acc, ref_sum_before, ref_rescale, ref_max_before, ref_max, other_max_before,
               other_max, ref_weights, ref_x, other_x):
    """Running ``sum e^{x - max_x} ((x - max_x) - (y - max_y))`` over the chunks, kept relative to
    the current maxes of both rows (``x`` the reference distribution, ``y`` the other)."""
    shift = (other_max - other_max_before) - (ref_max - ref_max_before)
    carried = tl.where(ref_sum_before > 0, acc + ref_sum_before * shift, acc)
    # +inf (reference mass where the other row is -inf) stays +inf, never inf * 0 or inf - inf.
    carried = tl.where(acc == float("inf"), acc, carried * ref_rescale)
    terms = _p_times(ref_weights, (ref_x - ref_max) - _shifted(other_x, other_max))
    return carried + tl.sum(terms, axis=0)


@triton.jit
def _p_times(p, value):
    """``p * value`` with 0 wherever ``p == 0``."""
    return tl.where(p > 0, p * value, 0.0)


@triton.jit
def _log_mixture(lp_t, lp_s, log_beta, log_rest):
    """``log(beta p_t + (1-beta) p_s)`` in log space; ``-inf`` when both terms are ``-inf``."""
    x = lp_t + log_beta
    y = lp_s + log_rest
    top = tl.maximum(x, y)
    low = tl.minimum(x, y)
    return tl.where(top == NEG_INF, NEG_INF, top + tl.log(1.0 + tl.exp(low - top)))


@triton.jit
def _load_scaled(student_row, teacher_row, cols, n_read, temperature, KIND: tl.constexpr,
                 ACC: tl.constexpr):
    """One chunk of ``student``, ``student/T`` and ``teacher/T``; columns at or past ``n_read``
    read as ``-inf`` without touching memory. reverse_kl (KIND 1) restricts ``student/T`` to the
    teacher's support (``-inf`` where the teacher is); ``student`` itself (for CE) is kept."""
    inside = cols < n_read
    s = tl.load(student_row + cols, mask=inside, other=NEG_INF).to(ACC)
    t = tl.load(teacher_row + cols, mask=inside, other=NEG_INF).to(ACC)
    a = s / temperature
    if KIND == 1:
        a = tl.where(t == NEG_INF, NEG_INF, a)
    return s, a, t / temperature


@triton.jit
def _kd_loss_kernel(
    student_ptr, teacher_ptr, labels_ptr, valid_ptr, grad_scale_ptr,
    row_loss_ptr, grad_student_ptr, grad_teacher_ptr,
    n_cols, student_row_stride, teacher_row_stride,
    temperature_hi, temperature_lo, beta_hi, beta_lo, kd_weight_hi, kd_weight_lo,
    ce_weight_hi, ce_weight_lo,
    KIND: tl.constexpr, HAS_CE: tl.constexpr, CE_SEPARATE: tl.constexpr,
    HAS_VALID: tl.constexpr, HAS_SCALE: tl.constexpr,
    STUDENT_GRAD: tl.constexpr, TEACHER_GRAD: tl.constexpr,
    SINGLE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    zero = tl.full((), 0.0, ACC)
    # Scalars arrive as fp32 pairs (see ``split_float``); adding ``zero`` promotes them to ACC.
    temperature = (zero + temperature_hi) + temperature_lo
    beta = (zero + beta_hi) + beta_lo
    kd_weight = (zero + kd_weight_hi) + kd_weight_lo
    ce_weight = (zero + ce_weight_hi) + ce_weight_lo
    # From the parts: 1 - beta_hi is exact for beta_hi in [0.5, 1], so 1 - beta keeps its
    # digits when beta is near 1 (fp32 1 - beta would keep about 7 - log10(1/(1-beta))).
    one_minus_beta = ((zero + 1.0) - beta_hi) - beta_lo
    log_beta = tl.where(beta > 0, tl.log(beta), NEG_INF)
    log_rest = tl.where(one_minus_beta > 0, tl.log(one_minus_beta), NEG_INF)

    if HAS_VALID:
        row_valid = tl.load(valid_ptr + row) != 0
    else:
        row_valid = True
    # Invalid rows are never read: every load below is masked by ``cols < n_read``.
    n_read = tl.where(row_valid, n_cols, 0)
    student_row = student_ptr + row * student_row_stride
    teacher_row = teacher_ptr + row * teacher_row_stride
    grad_student_row = grad_student_ptr + row * n_cols
    grad_teacher_row = grad_teacher_ptr + row * n_cols
    cols0 = tl.arange(0, BLOCK)

    grad_factor = temperature * kd_weight
    if HAS_SCALE:
        grad_scale = tl.load(grad_scale_ptr).to(ACC)
        grad_factor = grad_factor * grad_scale
        ce_grad_factor = ce_weight * grad_scale
    else:
        ce_grad_factor = ce_weight

    if HAS_CE:
        label = tl.load(labels_ptr + row, mask=row_valid, other=0)
        label_ok = (label >= 0) & (label < n_cols)
        label_logit = tl.load(student_row + label, mask=row_valid & label_ok, other=0.0).to(ACC)

    if SINGLE:
        # ---- whole row in registers: one read ----
        s, a, b = _load_scaled(student_row, teacher_row, cols0, n_read, temperature, KIND, ACC)
        max_a = tl.max(a, axis=0)
        max_b = tl.max(b, axis=0)
        e_a = tl.exp(_shifted(a, max_a))
        e_b = tl.exp(_shifted(b, max_b))
        sum_a = tl.sum(e_a, axis=0)
        sum_b = tl.sum(e_b, axis=0)
        log_sum_a = _log_sum(sum_a)
        log_sum_b = _log_sum(sum_b)
        lp_s = _log_softmax(a, max_a, log_sum_a)
        lp_t = _log_softmax(b, max_b, log_sum_b)
        p_s = e_a * (1.0 / sum_a)  # reuses the exponentials: two fewer exp per class
        p_t = e_b * (1.0 / sum_b)
        if KIND == 0:
            kd = tl.sum(_p_times(p_t, lp_t - lp_s), axis=0)
            grad_s = p_s - p_t
            grad_t = _p_times(p_t, lp_t - lp_s - kd)
        elif KIND == 1:
            kd = tl.sum(_p_times(p_s, lp_s - lp_t), axis=0)
            grad_s = _p_times(p_s, lp_s - lp_t - kd)
            grad_t = p_t - p_s
        else:
            lm = _log_mixture(lp_t, lp_s, log_beta, log_rest)
            g = tl.where(one_minus_beta > 0, _p_times(p_s, one_minus_beta * (lp_s - lm)), 0.0)
            h = tl.where(beta > 0, _p_times(p_t, beta * (lp_t - lm)), 0.0)
            sum_g = tl.sum(g, axis=0)
            sum_h = tl.sum(h, axis=0)
            kd = sum_g + sum_h
            grad_s = g - p_s * sum_g
            grad_t = h - p_t * sum_h
        if HAS_CE:
            if CE_SEPARATE:
                max_s = tl.max(s, axis=0)
                log_sum_s = _log_sum(tl.sum(tl.exp(_shifted(s, max_s)), axis=0))
                q = tl.exp(_log_softmax(s, max_s, log_sum_s))
            else:
                max_s = max_a
                log_sum_s = log_sum_a
                q = p_s
        if STUDENT_GRAD:
            grad = grad_factor * grad_s
            if HAS_CE:
                grad += ce_grad_factor * (q - tl.where(cols0 == label, 1.0, 0.0))
            grad = tl.where(row_valid, grad, 0.0)
            tl.store(grad_student_row + cols0, grad.to(grad_student_ptr.dtype.element_ty),
                     mask=cols0 < n_cols)
        if TEACHER_GRAD:
            grad = tl.where(row_valid, grad_factor * grad_t, 0.0)
            tl.store(grad_teacher_row + cols0, grad.to(grad_teacher_ptr.dtype.element_ty),
                     mask=cols0 < n_cols)
    else:
        # ---- sweep 1: online max / sum-exp (and the KL total for kl / reverse_kl) ----
        max_a = zero + NEG_INF
        sum_a = zero
        max_b = zero + NEG_INF
        sum_b = zero
        max_s = zero + NEG_INF
        sum_s = zero
        kl_acc = zero
        for start in range(0, n_read, BLOCK):
            s, a, b = _load_scaled(student_row, teacher_row, start + cols0, n_read, temperature,
                                   KIND, ACC)
            prev_max_a = max_a
            prev_sum_a = sum_a
            prev_max_b = max_b
            prev_sum_b = sum_b
            max_a, sum_a, rescale_a, e_a = _online_lse(max_a, sum_a, a)
            max_b, sum_b, rescale_b, e_b = _online_lse(max_b, sum_b, b)
            if KIND == 0:
                kl_acc = _online_kl(kl_acc, prev_sum_b, rescale_b, prev_max_b, max_b, prev_max_a,
                                    max_a, e_b, b, a)
            elif KIND == 1:
                kl_acc = _online_kl(kl_acc, prev_sum_a, rescale_a, prev_max_a, max_a, prev_max_b,
                                    max_b, e_a, a, b)
            if CE_SEPARATE:
                max_s, sum_s, _, _ = _online_lse(max_s, sum_s, s)
        log_sum_a = _log_sum(sum_a)
        log_sum_b = _log_sum(sum_b)
        if CE_SEPARATE:
            log_sum_s = _log_sum(sum_s)
        else:
            max_s = max_a
            log_sum_s = log_sum_a
        if KIND == 0:
            kd = kl_acc / sum_b + (log_sum_a - log_sum_b)
        elif KIND == 1:
            kd = kl_acc / sum_a + (log_sum_b - log_sum_a)
        else:
            # ---- jsd sweep 2: the sums its loss and gradients need ----
            sum_g = zero
            sum_h = zero
            for start in range(0, n_read, BLOCK):
                s, a, b = _load_scaled(student_row, teacher_row, start + cols0, n_read,
                                       temperature, KIND, ACC)
                lp_s = _log_softmax(a, max_a, log_sum_a)
                lp_t = _log_softmax(b, max_b, log_sum_b)
                lm = _log_mixture(lp_t, lp_s, log_beta, log_rest)
                g = _p_times(tl.exp(lp_s), one_minus_beta * (lp_s - lm))
                h = _p_times(tl.exp(lp_t), beta * (lp_t - lm))
                sum_g += tl.sum(tl.where(one_minus_beta > 0, g, 0.0), axis=0)
                sum_h += tl.sum(tl.where(beta > 0, h, 0.0), axis=0)
            kd = sum_g + sum_h

        # ---- last sweep: gradients ----
        if STUDENT_GRAD or TEACHER_GRAD:
            for start in range(0, n_cols, BLOCK):
                cols = start + cols0
                s, a, b = _load_scaled(student_row, teacher_row, cols, n_read, temperature,
                                       KIND, ACC)
                lp_s = _log_softmax(a, max_a, log_sum_a)
                lp_t = _log_softmax(b, max_b, log_sum_b)
                p_s = tl.exp(lp_s)
                p_t = tl.exp(lp_t)
                if KIND == 0:
                    grad_s = p_s - p_t
                    grad_t = _p_times(p_t, lp_t - lp_s - kd)
                elif KIND == 1:
                    grad_s = _p_times(p_s, lp_s - lp_t - kd)
                    grad_t = p_t - p_s
                else:
                    lm = _log_mixture(lp_t, lp_s, log_beta, log_rest)
                    g = _p_times(p_s, one_minus_beta * (lp_s - lm))
                    h = _p_times(p_t, beta * (lp_t - lm))
                    grad_s = tl.where(one_minus_beta > 0, g, 0.0) - p_s * sum_g
                    grad_t = tl.where(beta > 0, h, 0.0) - p_t * sum_h
                if STUDENT_GRAD:
                    grad = grad_factor * grad_s
                    if HAS_CE:
                        if CE_SEPARATE:
                            q = tl.exp(_log_softmax(s, max_s, log_sum_s))
                        else:
                            q = p_s
                        grad += ce_grad_factor * (q - tl.where(cols == label, 1.0, 0.0))
                    grad = tl.where(row_valid, grad, 0.0)
                    tl.store(grad_student_row + cols,
                             grad.to(grad_student_ptr.dtype.element_ty), mask=cols < n_cols)
                if TEACHER_GRAD:
                    grad = tl.where(row_valid, grad_factor * grad_t, 0.0)
                    tl.store(grad_teacher_row + cols,
                             grad.to(grad_teacher_ptr.dtype.element_ty), mask=cols < n_cols)

    loss = kd_weight * temperature * temperature * kd
    if HAS_CE:
        cross_entropy = log_sum_s - (label_logit - max_s)
        loss += tl.where(ce_weight > 0, ce_weight * cross_entropy, 0.0)
        loss = tl.where(label_ok, loss, float("nan"))
    tl.store(row_loss_ptr + row, tl.where(row_valid, loss, 0.0))


def launch_config(n_cols: int) -> tuple[bool, int, int]:
    """(whole row in registers?, block width, num_warps) for rows of ``n_cols`` classes."""
    single = next_pow2(n_cols) <= SINGLE_BLOCK_MAX
    block = next_pow2(n_cols) if single else CHUNK
    # About 8 classes a thread: 50-64 registers on sm_90 for every kind, no spills.
    return single, block, NUM_WARPS.get(block, min(32, max(1, block // 256)))


def kd_loss_forward(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                    valid: torch.Tensor | None, grad_scale: torch.Tensor | None,
                    temperature: float, kind: int, beta: float, alpha: float,
                    student_grad: bool, teacher_grad: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row distillation loss and the gradients of ``grad_scale * sum(row_loss)``.

    Args:
        student, teacher: (N, C) fp32/bf16/fp16/fp64, ``stride(-1) == 1``.
        labels: (N,) int64 class ids, or None (no CE term; ``alpha`` is then ignored).
        valid: (N,) bool, or None (all rows valid). Invalid rows are not read.
        grad_scale: one-element tensor on the device (the batchmean ``1/count``), or None (1).
        temperature: T > 0. kind: 0 kl, 1 reverse_kl, 2 jsd (mixture weight ``beta``).
        alpha: ``row_loss = alpha*KD + (1-alpha)*CE`` when ``labels`` is given.
        student_grad, teacher_grad: which gradients to compute.

    Returns:
        row_loss (N,) fp32 (fp64 for fp64 inputs), 0 on invalid rows and NaN for a label outside
        [0, C); grad_student, grad_teacher (N, C) in the input dtype, or empty when not requested.
    """
    check_logit_pair("kd_loss_forward", student, teacher)
    if kind not in (0, 1, 2):
        raise ValueError(f"kind must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got {kind!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows, n_cols = student.shape
    device = student.device
    acc_dtype, loss_dtype = compute_dtypes(student.dtype)
    check_rows("labels", labels, rows, torch.int64, device)
    check_rows("valid", valid, rows, torch.bool, device)
    check_grad_scale(grad_scale, device)

    row_loss = torch.empty(rows, dtype=loss_dtype, device=device)
    grad_student = (torch.empty((rows, n_cols), dtype=student.dtype, device=device)
                    if student_grad else student.new_empty(0))
    grad_teacher = (torch.empty((rows, n_cols), dtype=teacher.dtype, device=device)
                    if teacher_grad else teacher.new_empty(0))
    if rows == 0:
        return row_loss, grad_student, grad_teacher

    has_ce = labels is not None
    single, block, num_warps = launch_config(n_cols)
    kd_weight = float(alpha) if has_ce else 1.0
    with on_device(student):
        _kd_loss_kernel[(rows,)](
            student, teacher,
            labels.contiguous() if has_ce else student,
            valid.contiguous().view(torch.uint8) if valid is not None else student,
            grad_scale if grad_scale is not None else student,
            row_loss,
            grad_student if student_grad else row_loss,
            grad_teacher if teacher_grad else row_loss,
            n_cols, student.stride(0), teacher.stride(0),
            *split_float(float(temperature)), *split_float(float(beta)),
            *split_float(kd_weight), *split_float(1.0 - kd_weight if has_ce else 0.0),
            KIND=int(kind), HAS_CE=has_ce,
            # reverse_kl's restricted student/T cannot serve the CE term, even at T = 1
            CE_SEPARATE=has_ce and (float(temperature) != 1.0 or int(kind) == 1),
            HAS_VALID=valid is not None, HAS_SCALE=grad_scale is not None,
            STUDENT_GRAD=bool(student_grad), TEACHER_GRAD=bool(teacher_grad),
            SINGLE=single, BLOCK=block, ACC=acc_dtype, num_warps=num_warps,
        )
    return row_loss, grad_student, grad_teacher
