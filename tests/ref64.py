"""Independent float64 numpy references for the loss ops, written from the formulas in the
issue, not from kdcore's code. Gradients come from the chain rule through log-probabilities:
for ``lp = a - logsumexp(a)``, ``dL/da = g - softmax(a) * sum(g)`` with ``g = dL/dlp``."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return logits - logsumexp(logits, axis=-1, keepdims=True)


def _p_times(p: np.ndarray, value: np.ndarray) -> np.ndarray:
    """p * value with 0 wherever p == 0 (0 * log 0 = 0, 0 * inf = 0)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(p > 0, p * value, 0.0)


def _through_log_softmax(grad_log_p: np.ndarray, p: np.ndarray) -> np.ndarray:
    return grad_log_p - p * grad_log_p.sum(-1, keepdims=True)


def kd_loss64(student, teacher, *, temperature=1.0, kind="kl", beta=0.5, labels=None, alpha=1.0,
              ignore_index=-100, mask=None):
    """Per-row loss (N,) and gradients of sum(per-row loss) w.r.t. student and teacher (N, C).
    Inputs are float arrays shaped (N, C) (any leading shape flattened by the caller)."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    rows = s.shape[0]
    valid = np.ones(rows, dtype=bool)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    if labels is not None:
        labels = np.asarray(labels)
        valid &= labels != ignore_index
    s = np.where(valid[:, None], s, 0.0)
    t = np.where(valid[:, None], t, 0.0)

    if kind == "reverse_kl":
        # Convention: the student's softmax is taken over the teacher's support only.
        s_kd = np.where(np.isneginf(t), -np.inf, s)
    else:
        s_kd = s
    lps = _log_softmax(s_kd / temperature)
    lpt = _log_softmax(t / temperature)
    ps, pt = np.exp(lps), np.exp(lpt)
    with np.errstate(invalid="ignore"):
        diff_ts = lpt - lps
        diff_st = lps - lpt
    if kind == "kl":
        kd = _p_times(pt, diff_ts).sum(-1)
        g_lps = -pt
        g_lpt = _p_times(pt, diff_ts) + pt
    elif kind == "reverse_kl":
        kd = _p_times(ps, diff_st).sum(-1)
        g_lpt = -ps
        g_lps = _p_times(ps, diff_st) + ps
    elif kind == "jsd":
        with np.errstate(divide="ignore"):
            log_beta = np.log(beta) if beta > 0 else -np.inf
            log_rest = np.log(1 - beta) if beta < 1 else -np.inf
        lm = np.logaddexp(lpt + log_beta, lps + log_rest)
        kd, g_lps, g_lpt = np.zeros(rows), np.zeros_like(s), np.zeros_like(t)
        with np.errstate(invalid="ignore"):
            if beta > 0:  # a zero weight drops its term, even where that KL is infinite
                kd = kd + beta * _p_times(pt, lpt - lm).sum(-1)
                g_lpt = beta * _p_times(pt, lpt - lm)
            if beta < 1:
                kd = kd + (1 - beta) * _p_times(ps, lps - lm).sum(-1)
                g_lps = (1 - beta) * _p_times(ps, lps - lm)
    else:
        raise ValueError(kind)
    scale = temperature**2
    rows_loss = scale * kd
    grad_s = scale * _through_log_softmax(g_lps, ps) / temperature
    grad_t = scale * _through_log_softmax(g_lpt, pt) / temperature
    if labels is not None and alpha < 1:
        lq = _log_softmax(s)
        safe = np.where(valid, labels, 0)
        ce = -lq[np.arange(rows), safe]
        onehot = np.zeros_like(s)
        onehot[np.arange(rows), safe] = 1.0
        rows_loss = alpha * rows_loss + (1 - alpha) * ce
        grad_s = alpha * grad_s + (1 - alpha) * (np.exp(lq) - onehot)
        grad_t = alpha * grad_t
    rows_loss = np.where(valid, rows_loss, 0.0)
    grad_s = np.where(valid[:, None], grad_s, 0.0)
    grad_t = np.where(valid[:, None], grad_t, 0.0)
    return rows_loss, grad_s, grad_t, valid


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    # np.where evaluates both branches; the unused one may overflow (inf/inf) at huge |x|
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def _bce(x, q):
    """q*softplus(-x) + (1-q)*softplus(x), zero weights killing infinite terms; its x-gradient."""
    with np.errstate(invalid="ignore", over="ignore"):
        value = (np.where(q > 0, q * _softplus(-x), 0.0)
                 + np.where(q < 1, (1 - q) * _softplus(x), 0.0))
    return value, _sigmoid(x) - q


def kd_bce_loss64(student, teacher, *, temperature=1.0, labels=None, alpha=1.0, mask=None):
    """Per-element loss (N, C) and gradients of its sum."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    valid = np.ones(s.shape[0], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    s = np.where(valid[:, None], s, 0.0)
    t = np.where(valid[:, None], t, 0.0)
    x, b = s / temperature, t / temperature
    q = _sigmoid(b)
    value, dx = _bce(x, q)
    loss = temperature**2 * value
    grad_s = temperature * dx
    # d BCE / d q = softplus(-x) - softplus(x) = -x; d q / d b = q (1 - q).
    with np.errstate(invalid="ignore"):
        grad_t = np.where(q * (1 - q) > 0, temperature * (-x) * q * (1 - q), 0.0)
    if labels is not None and alpha < 1:
        y = np.asarray(labels, dtype=np.float64)
        hard, dhard = _bce(s, y)
        loss = alpha * loss + (1 - alpha) * hard
        grad_s = alpha * grad_s + (1 - alpha) * dhard
        grad_t = alpha * grad_t
    keep = valid[:, None]
    return (np.where(keep, loss, 0.0), np.where(keep, grad_s, 0.0), np.where(keep, grad_t, 0.0),
            valid)


def feature_loss64(student, teacher, *, kind="mse", mask=None, eps=1e-8):
    """Per-element (mse, l1) or per-row (cosine) loss and gradients of its sum."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    valid = np.ones(s.shape[0], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    s = np.where(valid[:, None], s, 0.0)
    t = np.where(valid[:, None], t, 0.0)
    if kind == "mse":
        loss, grad_s = (s - t) ** 2, 2 * (s - t)
        grad_t = -grad_s
        return (np.where(valid[:, None], loss, 0.0), grad_s * valid[:, None],
                grad_t * valid[:, None], valid)
    if kind == "l1":
        loss, grad_s = np.abs(s - t), np.sign(s - t)
        return (np.where(valid[:, None], loss, 0.0), grad_s * valid[:, None],
                -grad_s * valid[:, None], valid)
    norm_s = np.linalg.norm(s, axis=-1)
    norm_t = np.linalg.norm(t, axis=-1)
    den_s, den_t = np.maximum(norm_s, eps), np.maximum(norm_t, eps)
    dot = (s * t).sum(-1)
    cos = dot / (den_s * den_t)
    # d cos / d s = t / (den_s den_t) - [norm_s > eps] * cos * s / norm_s^2 (and likewise for t).
    with np.errstate(invalid="ignore", divide="ignore"):
        grad_s = -(t / (den_s * den_t)[:, None]
                   - np.where(norm_s > eps, cos / norm_s**2, 0.0)[:, None] * s)
        grad_t = -(s / (den_s * den_t)[:, None]
                   - np.where(norm_t > eps, cos / norm_t**2, 0.0)[:, None] * t)
    loss = 1 - cos
    return (np.where(valid, loss, 0.0), grad_s * valid[:, None], grad_t * valid[:, None], valid)
