"""Task metrics as pure functions: pitch, enhancement, speaker verification, tagging, frame
classification and speech recognition.

Inputs may be torch tensors or numpy arrays; everything except :func:`crepe_decode` computes in
numpy float64 and returns Python floats (scalars) or numpy arrays (per class / per item).
Definitions, defaults and conventions are collected in ``docs/data-and-metrics.md``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "CREPE_BINS",
    "CREPE_CENTS_OFFSET",
    "CREPE_CENTS_PER_BIN",
    "MetricUnavailableError",
    "average_precision",
    "cents_rmse",
    "cents_to_hz",
    "character_error_rate",
    "cosine_scores",
    "crepe_bin_cents",
    "crepe_decode",
    "ctc_greedy_decode",
    "equal_error_rate",
    "f1_at_threshold",
    "frame_accuracy",
    "frame_f1",
    "hz_to_cents",
    "mean_average_precision",
    "mean_cosine_similarity",
    "micro_average_precision",
    "pesq_wb",
    "pitch_metrics",
    "raw_chroma_accuracy",
    "raw_pitch_accuracy",
    "si_sdr",
    "si_sdr_improvement",
    "stoi",
    "tokens_to_text",
    "verification_trials",
    "voicing_precision_recall_f1",
    "word_error_rate",
]

CREPE_BINS = 360
CREPE_CENTS_PER_BIN = 20.0
CREPE_CENTS_OFFSET = 1997.3794084376191  # cents re 10 Hz of CREPE's bin 0 (about 31.7 Hz)


class MetricUnavailableError(ImportError):
    """A metric's optional package is not installed (the message names it)."""


def _require(module: str, package: str, metric: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MetricUnavailableError(
            f"{metric} needs the '{package}' package, which is not installed: "
            f"pip install {package}") from None


def _np(x: object, name: str, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array or tensor of numbers") from None


def _mask(mask: object | None, shape: tuple, name: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = _np(mask, name, bool)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {m.shape}")
    return m


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


# ---------------------------------------------------------------------------------------------
# Pitch


def hz_to_cents(hz: object) -> np.ndarray:
    """``1200 * log2(hz / 10)`` (cents re 10 Hz); non-positive Hz give NaN."""
    f = _np(hz, "hz")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, 1200.0 * np.log2(np.where(f > 0, f, 1.0) / 10.0), np.nan)


def cents_to_hz(cents: object) -> np.ndarray:
    """``10 * 2 ** (cents / 1200)`` Hz."""
    return 10.0 * np.power(2.0, _np(cents, "cents") / 1200.0)


def crepe_bin_cents(num_bins: int = CREPE_BINS) -> torch.Tensor:
    """Cents re 10 Hz of CREPE's bins, float64 (num_bins,): ``1997.3794084376191 + 20 i``
    (bin 0 is about 31.7 Hz, bin 359 about 2005.5 Hz). Default ``num_bins`` 360."""
    return CREPE_CENTS_OFFSET + CREPE_CENTS_PER_BIN * torch.arange(num_bins,
                                                                   dtype=torch.float64)


def crepe_decode(activations: torch.Tensor, *, weighted: bool = True,
                 window: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Pitch in Hz and confidence from CREPE-style bin activations.

    Args:
        activations: (..., 360) non-negative scores (CREPE's sigmoid outputs), any float dtype
            and device.
        weighted: True (default) takes the activation-weighted mean of the bin cents over
            ``argmax - window .. argmax + window`` (clipped to the bins); False the argmax bin.
        window: half-width of the weighted average in bins. Default 4 (9 bins).

    Returns ``(hz, confidence)``, each (...,) in float64 on the input's device; confidence is
    the maximum activation. Where the window's activations sum to zero the argmax bin is used.
    """
    if activations.shape[-1] != CREPE_BINS:
        raise ValueError(f"activations must have {CREPE_BINS} bins on the last axis, got "
                         f"shape {tuple(activations.shape)}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    a = activations.detach().to(torch.float64)
    cents = crepe_bin_cents().to(a.device)
    confidence, centre = a.max(dim=-1)
    if not weighted:
        return 10.0 * torch.pow(2.0, cents[centre] / 1200.0), confidence
    offsets = torch.arange(-window, window + 1, device=a.device)
    idx = centre.unsqueeze(-1) + offsets
    inside = (idx >= 0) & (idx < CREPE_BINS)
    idx = idx.clamp(0, CREPE_BINS - 1)
    weights = torch.gather(a, -1, idx) * inside
    total = weights.sum(-1)
    mean = (weights * cents[idx]).sum(-1) / torch.where(total > 0, total, 1.0)
    mean = torch.where(total > 0, mean, cents[centre])
    return 10.0 * torch.pow(2.0, mean / 1200.0), confidence


def _pitch_inputs(ref_hz: object, est_hz: object, ref_voiced: object | None,
                  mask: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref, est = _np(ref_hz, "ref_hz"), _np(est_hz, "est_hz")
    _same_shape(ref, est, "ref_hz and est_hz")
    voiced = ref > 0 if ref_voiced is None else _mask(ref_voiced, ref.shape, "ref_voiced")
    if np.any(voiced & ~(ref > 0)):
        raise ValueError("ref_voiced marks frames whose ref_hz is not positive")
    voiced = voiced & _mask(mask, ref.shape)
    return ref, est, voiced


def _cents_error(ref: np.ndarray, est: np.ndarray) -> np.ndarray:
    """Absolute cents difference; inf where the estimate has no positive pitch."""
    with np.errstate(invalid="ignore"):
        diff = np.abs(hz_to_cents(est) - hz_to_cents(ref))
    return np.where(np.isnan(diff), np.inf, diff)


def raw_pitch_accuracy(ref_hz: object, est_hz: object, *, ref_voiced: object | None = None,
                       mask: object | None = None, tolerance_cents: float = 50.0) -> float:
    """Fraction of reference-voiced frames whose estimated pitch is within ``tolerance_cents``
    (default 50; strictly less than) of the reference, whatever the estimate's voicing decision.
    Shapes: ``ref_hz``, ``est_hz`` (...) in Hz, one value per frame; ``ref_voiced`` (...) bool,
    default ``ref_hz > 0``; ``mask`` (...) bool valid frames, default all. An estimate <= 0 Hz
    counts as wrong. NaN when no frame is voiced."""
    ref, est, voiced = _pitch_inputs(ref_hz, est_hz, ref_voiced, mask)
    if not voiced.any():
        return float("nan")
    return float(np.mean(_cents_error(ref, est)[voiced] < tolerance_cents))


def raw_chroma_accuracy(ref_hz: object, est_hz: object, *, ref_voiced: object | None = None,
                        mask: object | None = None, tolerance_cents: float = 50.0) -> float:
    """As :func:`raw_pitch_accuracy` with octave errors forgiven: the cents difference ``d`` is
    folded to ``|d - 1200 round(d / 1200)|`` before the comparison."""
    ref, est, voiced = _pitch_inputs(ref_hz, est_hz, ref_voiced, mask)
    if not voiced.any():
        return float("nan")
    diff = _cents_error(ref, est)[voiced]
    folded = np.full_like(diff, np.inf)
    finite = np.isfinite(diff)
    folded[finite] = np.abs(diff[finite] - 1200.0 * np.floor(diff[finite] / 1200.0 + 0.5))
    return float(np.mean(folded < tolerance_cents))


def cents_rmse(ref_hz: object, est_hz: object, *, ref_voiced: object | None = None,
               mask: object | None = None) -> float:
    """Root mean square cents difference over frames voiced in the reference where the
    estimate has a positive pitch. Shapes as :func:`raw_pitch_accuracy`. NaN if none."""
    ref, est, voiced = _pitch_inputs(ref_hz, est_hz, ref_voiced, mask)
    diff = _cents_error(ref, est)[voiced]
    diff = diff[np.isfinite(diff)]
    return float(np.sqrt(np.mean(diff ** 2))) if diff.size else float("nan")


def voicing_precision_recall_f1(ref_voiced: object, est_voiced: object, *,
                                mask: object | None = None) -> tuple[float, float, float]:
    """Precision, recall and F1 of the estimated voicing decisions (voiced = positive class),
    over valid frames. Shapes: (...) bool each. A zero denominator gives 0."""
    ref, est = _np(ref_voiced, "ref_voiced", bool), _np(est_voiced, "est_voiced", bool)
    _same_shape(ref, est, "ref_voiced and est_voiced")
    valid = _mask(mask, ref.shape)
    return _prf(int(np.sum(ref & est & valid)), int(np.sum(~ref & est & valid)),
                int(np.sum(ref & ~est & valid)))


def _prf(tp: int | np.ndarray, fp: int | np.ndarray, fn: int | np.ndarray):
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    if precision.ndim == 0:
        return float(precision), float(recall), float(f1)
    return precision, recall, f1


def pitch_metrics(ref_hz: object, est_hz: object, *, ref_voiced: object | None = None,
                  est_voiced: object | None = None, mask: object | None = None,
                  tolerance_cents: float = 50.0) -> dict[str, float]:
    """Raw pitch and chroma accuracy, cents RMSE and voicing precision/recall/F1 in one dict
    (keys ``rpa``, ``rca``, ``cents_rmse``, ``voicing_precision``, ``voicing_recall``,
    ``voicing_f1``). ``est_voiced`` defaults to ``est_hz > 0``; ``ref_voiced`` to
    ``ref_hz > 0``."""
    ref = _np(ref_hz, "ref_hz")
    rv = ref > 0 if ref_voiced is None else _mask(ref_voiced, ref.shape, "ref_voiced")
    ev = _np(est_hz, "est_hz") > 0 if est_voiced is None else est_voiced
    p, r, f = voicing_precision_recall_f1(rv, ev, mask=mask)
    kw = {"ref_voiced": rv, "mask": mask}
    return {"rpa": raw_pitch_accuracy(ref, est_hz, tolerance_cents=tolerance_cents, **kw),
            "rca": raw_chroma_accuracy(ref, est_hz, tolerance_cents=tolerance_cents, **kw),
            "cents_rmse": cents_rmse(ref, est_hz, **kw),
            "voicing_precision": p, "voicing_recall": r, "voicing_f1": f}


# ---------------------------------------------------------------------------------------------
# Enhancement


def si_sdr(estimate: object, reference: object, *, zero_mean: bool = True) -> float | np.ndarray:
    """Scale-invariant SDR in dB over the last axis (Le Roux et al. 2019)::

        a = <est, ref> / <ref, ref>,   SI-SDR = 10 log10(|a ref|^2 / |a ref - est|^2)

    after removing each signal's mean when ``zero_mean`` (default True). Shapes: (..., T) each;
    returns a float for 1-D input, else (...). A perfect estimate gives +inf."""
    est, ref = _np(estimate, "estimate"), _np(reference, "reference")
    _same_shape(est, ref, "estimate and reference")
    if est.ndim == 0 or est.shape[-1] == 0:
        raise ValueError("estimate and reference must be (..., T) with T >= 1")
    if zero_mean:
        est = est - est.mean(-1, keepdims=True)
        ref = ref - ref.mean(-1, keepdims=True)
    energy = np.sum(ref * ref, -1, keepdims=True)
    if np.any(energy == 0):
        raise ValueError("reference is silent (zero energy after mean removal): SI-SDR is "
                         "undefined")
    target = np.sum(est * ref, -1, keepdims=True) / energy * ref
    residual = target - est
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(np.sum(target ** 2, -1) / np.sum(residual ** 2, -1))
    return float(out) if out.ndim == 0 else out


def si_sdr_improvement(estimate: object, noisy: object, reference: object, *,
                       zero_mean: bool = True) -> float | np.ndarray:
    """``si_sdr(estimate, reference) - si_sdr(noisy, reference)`` in dB, shapes as
    :func:`si_sdr`."""
    return si_sdr(estimate, reference, zero_mean=zero_mean) - si_sdr(noisy, reference,
                                                                     zero_mean=zero_mean)


def _batched(reference: object, degraded: object, fn) -> float | np.ndarray:
    ref, deg = _np(reference, "reference"), _np(degraded, "degraded")
    _same_shape(ref, deg, "reference and degraded")
    if ref.ndim == 1:
        return float(fn(ref, deg))
    flat = [float(fn(r, d)) for r, d in zip(ref.reshape(-1, ref.shape[-1]),
                                           deg.reshape(-1, deg.shape[-1]), strict=True)]
    return np.asarray(flat).reshape(ref.shape[:-1])


def pesq_wb(reference: object, degraded: object, sample_rate: int = 16000) -> float | np.ndarray:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO, about 1.0 to 4.64) from the ``pesq`` package.
    Shapes: (..., T) each at 16 kHz (the only rate wide-band PESQ defines: resample with
    :class:`kdcore.Resample` first). Returns a float for 1-D input, else (...). Raises
    :class:`MetricUnavailableError` when ``pesq`` is not installed."""
    module = _require("pesq", "pesq", "PESQ")
    if sample_rate != 16000:
        raise ValueError(f"wide-band PESQ needs sample_rate 16000, got {sample_rate}; "
                         "resample first (kdcore.Resample)")
    return _batched(reference, degraded, lambda r, d: module.pesq(16000, r, d, "wb"))


def stoi(reference: object, degraded: object, sample_rate: int, *,
         extended: bool = False) -> float | np.ndarray:
    """Short-time objective intelligibility (Taal et al. 2011; ``extended`` default False, True
    for ESTOI) from the ``pystoi`` package, which resamples to 10 kHz internally. Shapes:
    (..., T) each; returns a float for 1-D input, else (...). Raises
    :class:`MetricUnavailableError` when ``pystoi`` is not installed."""
    module = _require("pystoi", "pystoi", "STOI")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return _batched(reference, degraded,
                    lambda r, d: module.stoi(r, d, sample_rate, extended=extended))


# ---------------------------------------------------------------------------------------------
# Speaker verification


def equal_error_rate(scores: object, labels: object) -> tuple[float, float]:
    """Equal error rate of a verification system and its threshold.

    Shapes: ``scores`` (N,) float, higher meaning "same speaker"; ``labels`` (N,) bool or 0/1,
    True for same-speaker (target) trials. A trial is accepted when ``score >= threshold``.
    The false-accept rate (FAR) and false-reject rate (FRR) are evaluated at every distinct
    score; the EER is where the straight line between the last threshold with FAR < FRR and
    the first with FAR >= FRR crosses FAR = FRR. Returns ``(eer, threshold)`` with the
    threshold the first score at which FAR >= FRR. Needs both kinds of trial.
    """
    s, y = _np(scores, "scores"), _np(labels, "labels", bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be 1-D of one length, got {s.shape} and "
                         f"{y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n_target, n_nontarget = int(y.sum()), int((~y).sum())
    if n_target == 0 or n_nontarget == 0:
        raise ValueError("labels need at least one same-speaker and one different-speaker "
                         "trial")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last trial of each distinct score
    accepted_targets = np.cumsum(y)[last]
    accepted_nontargets = np.cumsum(~y)[last]
    far = np.r_[0.0, accepted_nontargets / n_nontarget]
    frr = np.r_[1.0, 1.0 - accepted_targets / n_target]
    thresholds = np.r_[np.inf, s[last]]
    k = int(np.argmax(far >= frr))  # exists: the last point has FRR 0
    d0, d1 = frr[k - 1] - far[k - 1], frr[k] - far[k]
    w = d0 / (d0 - d1)
    return float(far[k - 1] + w * (far[k] - far[k - 1])), float(thresholds[k])


def verification_trials(speakers: Sequence[object], *, max_trials: int | None = None,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trial pairs from a speaker per item: ``(first, second, same)``, each (P,), with
    ``first < second`` item indices and ``same`` bool. All unordered pairs when ``max_trials``
    is None (default) or not smaller; otherwise ``max_trials`` pairs drawn without replacement
    (``seed``, default 0), half same-speaker (as many as exist) and the rest different."""
    spk = np.asarray([str(s) for s in speakers])
    if spk.size < 2:
        raise ValueError("speakers needs at least two items")
    first, second = np.triu_indices(spk.size, k=1)
    same = spk[first] == spk[second]
    if max_trials is not None:
        if max_trials < 1:
            raise ValueError(f"max_trials must be positive, got {max_trials}")
        if max_trials < first.size:
            rng = np.random.default_rng(seed)
            pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
            n_pos = min(pos.size, max_trials // 2)
            n_neg = min(neg.size, max_trials - n_pos)
            n_pos = min(pos.size, max_trials - n_neg)
            keep = np.sort(np.r_[rng.choice(pos, n_pos, replace=False),
                                 rng.choice(neg, n_neg, replace=False)])
            first, second, same = first[keep], second[keep], same[keep]
    return first, second, same


def cosine_scores(embeddings: object, first: object, second: object) -> np.ndarray:
    """Cosine similarity of the embedding pairs: ``embeddings`` (N, D), ``first``/``second``
    (P,) item indices; returns (P,)."""
    e = _np(embeddings, "embeddings")
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {e.shape}")
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("embeddings contain a zero vector: cosine is undefined")
    e = e / norm
    a, b = _np(first, "first", np.int64), _np(second, "second", np.int64)
    return np.sum(e[a] * e[b], axis=1)


def mean_cosine_similarity(estimate: object, reference: object) -> float:
    """Mean over rows of the cosine between ``estimate`` and ``reference`` embeddings, each
    (N, D) (e.g. a student's and its teacher's). Zero vectors raise an error."""
    a, b = _np(estimate, "estimate"), _np(reference, "reference")
    _same_shape(a, b, "estimate and reference")
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"estimate and reference must be (N, D) with N >= 1, got {a.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("an embedding is the zero vector: cosine is undefined")
    return float(np.mean(np.sum(a * b, axis=1) / (na * nb)))


# ---------------------------------------------------------------------------------------------
# Tagging and frame classification


def _rows(scores: object, targets: object, mask: object | None) -> tuple[np.ndarray, np.ndarray]:
    """(..., C) scores and 0/1 targets with a (...) mask -> (valid rows, C)."""
    s, t = _np(scores, "scores"), _np(targets, "targets")
    _same_shape(s, t, "scores and targets")
    if s.ndim == 0:
        raise ValueError("scores must be at least 1-D")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("targets must be 0/1 (or bool)")
    if s.ndim == 1:
        s, t = s[:, None], t[:, None]
        valid = _mask(mask, s.shape[:1])
    else:
        valid = _mask(mask, s.shape[:-1])
    return s[valid].reshape(-1, s.shape[-1]), t[valid].reshape(-1, s.shape[-1]).astype(bool)


def _ap_column(score: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tp = np.cumsum(positive)[last]
    fp = np.cumsum(~positive)[last]
    precision, recall = tp / (tp + fp), tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores: object, targets: object, *,
                      mask: object | None = None) -> float | np.ndarray:
    """Average precision (area under the precision-recall steps, no interpolation):
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores as thresholds, descending.
    Shapes: ``scores`` and 0/1 ``targets`` (N,) -> float, or (..., C) -> (C,) per class with
    ``mask`` (...) selecting valid rows (frames). A class with no positive gives NaN."""
    s, t = _rows(scores, targets, mask)
    per_class = np.asarray([_ap_column(s[:, c], t[:, c]) for c in range(s.shape[1])])
    return float(per_class[0]) if _np(scores, "scores").ndim == 1 else per_class


def mean_average_precision(scores: object, targets: object, *,
                           mask: object | None = None) -> float:
    """Mean of :func:`average_precision` over the classes that have a positive (macro mAP).
    Shapes: (..., C) with ``mask`` (...). NaN if no class has a positive."""
    per_class = np.atleast_1d(average_precision(scores, targets, mask=mask))
    present = per_class[~np.isnan(per_class)]
    return float(present.mean()) if present.size else float("nan")


def micro_average_precision(scores: object, targets: object, *,
                            mask: object | None = None) -> float:
    """Average precision of all (row, class) decisions pooled. Shapes: (..., C), mask (...)."""
    s, t = _rows(scores, targets, mask)
    return _ap_column(s.ravel(), t.ravel())


def f1_at_threshold(scores: object, targets: object, threshold: float = 0.5, *,
                    average: str = "micro", mask: object | None = None) -> float | np.ndarray:
    """F1 of the decisions ``score >= threshold`` (default 0.5) for multi-label outputs.
    Shapes: (..., C) each, ``mask`` (...). ``average``: ``"micro"`` (default; pooled counts),
    ``"macro"`` (mean of per-class F1) or ``"none"`` (per class, (C,)). A zero denominator
    gives 0."""
    if average not in ("micro", "macro", "none"):
        raise ValueError(f"average must be 'micro', 'macro' or 'none', got {average!r}")
    s, t = _rows(scores, targets, mask)
    pred = s >= threshold
    tp, fp, fn = ((pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0))
    if average == "micro":
        return _prf(tp.sum(), fp.sum(), fn.sum())[2]
    f1 = np.atleast_1d(_prf(tp, fp, fn)[2])
    return float(f1.mean()) if average == "macro" else f1


def _frame_labels(predictions: object, targets: object,
                  mask: object | None) -> tuple[np.ndarray, np.ndarray]:
    t = _np(targets, "targets", np.int64)
    p = _np(predictions, "predictions")
    if p.ndim == t.ndim + 1:
        p = p.argmax(-1)
    elif p.shape == t.shape:
        p = p.astype(np.int64)
    if p.shape != t.shape:
        raise ValueError(f"predictions must be (..., T) labels or (..., T, C) scores matching "
                         f"targets {t.shape}, got {_np(predictions, 'predictions').shape}")
    valid = _mask(mask, t.shape)
    return p[valid], t[valid]


def frame_accuracy(predictions: object, targets: object, *, mask: object | None = None) -> float:
    """Fraction of valid frames whose predicted class equals the target. Shapes:
    ``predictions`` (B, T) class indices or (B, T, C) scores (argmax taken), ``targets`` (B, T)
    ints, ``mask`` (B, T) bool (True = valid; default all). NaN with no valid frame."""
    p, t = _frame_labels(predictions, targets, mask)
    return float(np.mean(p == t)) if t.size else float("nan")


def frame_f1(predictions: object, targets: object, *, mask: object | None = None,
             average: str = "macro", num_classes: int | None = None,
             positive: int = 1) -> float | np.ndarray:
    """Frame-level F1 over valid frames; shapes as :func:`frame_accuracy`.

    ``average``: ``"macro"`` (default; mean over classes ``0..num_classes-1``, or over the
    classes present in targets or predictions when ``num_classes`` is None), ``"micro"`` (equal
    to accuracy for single-label frames), ``"binary"`` (F1 of class ``positive``, default 1, as
    for voice activity) or ``"none"`` (per class). A zero denominator gives 0."""
    p, t = _frame_labels(predictions, targets, mask)
    if average == "binary":
        return _prf(int(np.sum((p == positive) & (t == positive))),
                    int(np.sum((p == positive) & (t != positive))),
                    int(np.sum((p != positive) & (t == positive))))[2]
    if average not in ("macro", "micro", "none"):
        raise ValueError(f"average must be 'macro', 'micro', 'binary' or 'none', got "
                         f"{average!r}")
    classes = (np.arange(num_classes) if num_classes is not None
               else np.union1d(np.unique(p), np.unique(t)))
    tp = np.asarray([np.sum((p == c) & (t == c)) for c in classes])
    fp = np.asarray([np.sum((p == c) & (t != c)) for c in classes])
    fn = np.asarray([np.sum((p != c) & (t == c)) for c in classes])
    if average == "micro":
        return _prf(tp.sum(), fp.sum(), fn.sum())[2]
    f1 = np.atleast_1d(_prf(tp, fp, fn)[2])
    return float(f1.mean()) if average == "macro" else f1


# ---------------------------------------------------------------------------------------------
# CTC and recognition


def ctc_greedy_decode(log_probs: object, lengths: object | None = None, *,
                      blank: int = 0) -> list[list[int]]:
    """Best-path CTC decoding: the argmax class per frame, consecutive repeats collapsed, then
    ``blank`` (default 0) removed. Shapes: ``log_probs`` (B, T, C) or (T, C) (any scores with
    the same argmax); ``lengths`` (B,) valid frames per item, default all. Returns one token
    list per item (a single list wrapped in a list for (T, C))."""
    x = _np(log_probs, "log_probs")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"log_probs must be (B, T, C) or (T, C), got {x.shape}")
    if not 0 <= blank < x.shape[-1]:
        raise ValueError(f"blank {blank} is not a class index of {x.shape[-1]} classes")
    n = (np.full(x.shape[0], x.shape[1]) if lengths is None
         else _np(lengths, "lengths", np.int64).reshape(-1))
    if n.shape != (x.shape[0],) or np.any(n < 0) or np.any(n > x.shape[1]):
        raise ValueError(f"lengths must be (B,) in [0, {x.shape[1]}], got {n.tolist()}")
    best = x.argmax(-1)
    out = []
    for row, length in zip(best, n, strict=True):
        path = row[:length]
        keep = np.r_[True, path[1:] != path[:-1]] if length else np.zeros(0, bool)
        out.append([int(v) for v in path[keep] if v != blank])
    return out


def tokens_to_text(tokens: Sequence[int], vocabulary: Sequence[str], sep: str = " ") -> str:
    """Join ``vocabulary[token]`` with ``sep`` (default a space: the ``transcript`` format of
    :class:`kdcore.data.ConnectedDigits`)."""
    try:
        return sep.join(vocabulary[int(t)] for t in tokens)
    except IndexError:
        raise ValueError(f"a token is outside the vocabulary of {len(vocabulary)} entries: "
                         f"{list(tokens)}") from None


def _texts(references: str | Sequence[str], hypotheses: str | Sequence[str]):
    refs = [references] if isinstance(references, str) else list(references)
    hyps = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"references and hypotheses differ in count: {len(refs)} and "
                         f"{len(hyps)}")
    if not refs or any(not r.strip() for r in refs):
        raise ValueError("references must be non-empty strings (error rates divide by the "
                         "reference length)")
    return refs, hyps


def word_error_rate(references: str | Sequence[str], hypotheses: str | Sequence[str]) -> float:
    """Corpus WER from ``jiwer``: (substitutions + deletions + insertions) / reference words,
    summed over all pairs. Words are split on whitespace. Raises
    :class:`MetricUnavailableError` when ``jiwer`` is not installed."""
    jiwer = _require("jiwer", "jiwer", "WER")
    refs, hyps = _texts(references, hypotheses)
    return float(jiwer.wer(refs, hyps))


def character_error_rate(references: str | Sequence[str],
                         hypotheses: str | Sequence[str]) -> float:
    """Corpus CER from ``jiwer``: character edit distance / reference characters (spaces
    count as characters). Raises :class:`MetricUnavailableError` without ``jiwer``."""
    jiwer = _require("jiwer", "jiwer", "CER")
    refs, hyps = _texts(references, hypotheses)
    return float(jiwer.cer(refs, hyps))
