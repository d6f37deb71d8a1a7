"""Independent float64 numpy log-mel, written from each library's documented recipe, not from
kdcore's code: numpy.pad for padding, a loop over frames that follows torch.stft's framing
(window centred in an n_fft frame), numpy.fft.rfft, filters built one triangle at a time."""

from __future__ import annotations

import math

import numpy as np

FLT_EPSILON = float(np.finfo(np.float32).eps)


def window64(name: str, size: int) -> np.ndarray:
    n = np.arange(size)
    if name == "hann":
        return np.hanning(size + 1)[:-1] if size > 1 else np.ones(1)
    if name == "hann_symmetric":
        return np.hanning(size) if size > 1 else np.ones(1)
    if name == "hamming":
        return np.hamming(size + 1)[:-1] if size > 1 else np.ones(1)
    if name == "povey":
        return (0.5 - 0.5 * np.cos(2 * math.pi * n / (size - 1))) ** 0.85
    raise ValueError(name)


def hz_to_mel64(hz, scale):
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    if scale == "kaldi":
        return 1127.0 * np.log(1.0 + hz / 700.0)
    out = hz * 3.0 / 200.0
    above = hz >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(hz, 1e-3) / 1000.0) * 27.0 / np.log(6.4), out)


def mel_to_hz64(mel, scale):
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if scale == "kaldi":
        return 700.0 * (np.exp(mel / 1127.0) - 1.0)
    out = mel * 200.0 / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0), out)


def filterbank64(n_fft, sample_rate, n_mels, f_min, f_max, scale="htk", norm=None):
    """(n_fft//2+1, n_mels): one triangle per filter, linear in Hz (htk, slaney) or in mel with a
    zero Nyquist bin (kaldi, as Kaldi's MelBanks)."""
    n_freqs = n_fft // 2 + 1
    freqs = np.arange(n_freqs) * sample_rate / n_fft
    points_mel = np.linspace(hz_to_mel64(f_min, scale), hz_to_mel64(f_max, scale), n_mels + 2)
    points_hz = mel_to_hz64(points_mel, scale)
    bank = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        if scale == "kaldi":
            lo, mid, hi = points_mel[m], points_mel[m + 1], points_mel[m + 2]
            where = hz_to_mel64(freqs, "kaldi")
        else:
            lo, mid, hi = points_hz[m], points_hz[m + 1], points_hz[m + 2]
            where = freqs
        for k in range(n_freqs):
            if scale == "kaldi" and k == n_freqs - 1:
                continue
            if lo < where[k] <= mid:
                bank[k, m] = (where[k] - lo) / (mid - lo)
            elif mid < where[k] < hi:
                bank[k, m] = (hi - where[k]) / (hi - mid)
        if norm == "slaney":
            bank[:, m] *= 2.0 / (points_hz[m + 2] - points_hz[m])
    return bank


NUMPY_PAD = {"reflect": "reflect", "constant": "constant", "replicate": "edge",
             "circular": "wrap"}


def power_frames64(x, *, n_fft, hop, win_length=None, window="hann", center=True,
                   pad_mode="reflect", power=2.0, preemphasis=0.0, remove_dc=False):
    """(frames, n_fft//2+1) |STFT|^power of one 1-D signal."""
    x = np.asarray(x, dtype=np.float64)
    win_length = win_length or n_fft
    w = window64(window, win_length)
    rows = []
    if center:
        padded = np.pad(x, n_fft // 2, mode=NUMPY_PAD[pad_mode])
        full = np.zeros(n_fft)
        left = (n_fft - win_length) // 2
        full[left:left + win_length] = w
        count = 1 + (len(padded) - n_fft) // hop
        for i in range(count):
            segment = padded[i * hop:i * hop + n_fft]
            body = segment[left:left + win_length].copy()
            body = _kaldi_steps(body, preemphasis, remove_dc)
            segment = segment.copy()
            segment[left:left + win_length] = body
            rows.append(np.fft.rfft(segment * full))
    else:
        count = 1 + (len(x) - win_length) // hop
        for i in range(count):
            body = _kaldi_steps(x[i * hop:i * hop + win_length].copy(), preemphasis, remove_dc)
            rows.append(np.fft.rfft(body * w, n=n_fft))
    spectrum = np.array(rows).reshape(-1, n_fft // 2 + 1)
    return np.abs(spectrum) ** power


def _kaldi_steps(frame, preemphasis, remove_dc):
    if remove_dc:
        frame = frame - frame.mean()
    if preemphasis:
        frame = frame - preemphasis * np.concatenate([frame[:1], frame[:-1]])
    return frame


def log64(mel, log, eps):
    if log == "ln":
        return np.log(mel + eps)
    if log == "ln_clamp":
        return np.log(np.maximum(mel, eps))
    if log == "log10_clamp":
        return np.log10(np.maximum(mel, eps))
    if log == "db":
        return 10.0 * np.log10(np.maximum(mel, 1e-10))
    return mel


def log_mel64(x, *, sample_rate=16000, n_fft=400, win_length=None, hop_length=160, n_mels=80,
              f_min=0.0, f_max=None, window="hann", center=True, pad_mode="reflect", power=2.0,
              mel_scale="htk", norm=None, log="ln", log_eps=1e-6, preemphasis=0.0,
              remove_dc_offset=False, shift=0.0, divisor=1.0):
    """(n_mels, frames) float64 features of one 1-D signal, and the mel power before the log."""
    f_max = sample_rate / 2 if f_max is None else f_max
    spectrum = power_frames64(x, n_fft=n_fft, hop=hop_length, win_length=win_length,
                              window=window, center=center, pad_mode=pad_mode, power=power,
                              preemphasis=preemphasis, remove_dc=remove_dc_offset)
    bank = filterbank64(n_fft, sample_rate, n_mels, f_min, f_max, mel_scale, norm)
    mel = (spectrum @ bank).T
    return (log64(mel, log, log_eps) + shift) / divisor, mel
