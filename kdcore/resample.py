"""Device-side band-limited resampling: a polyphase Kaiser-windowed sinc filter as an
``nn.Module`` (:class:`Resample`).

Output sample ``m`` sits at input time ``t_m = m * orig_freq / new_freq`` (in input samples)::

    y[m] = sum_i x[i] * h(t_m - i),
    h(u) = 2 fc * sinc(2 fc u) * kaiser(u / half_width, beta),   |u| <= half_width

with ``fc = rolloff * min(orig, new) / (2 * orig)`` cycles per input sample (the cutoff sits at
``rolloff`` times the lower of the two Nyquist frequencies), ``half_width =
lowpass_filter_width / (2 fc)`` input samples (``lowpass_filter_width`` zero crossings of the
sinc on each side), ``sinc(v) = sin(pi v) / (pi v)`` and samples outside the clip taken as zero.
The two rates are reduced by their gcd; each of the ``new`` output phases has its own taps and
the whole filter runs as one strided ``conv1d``, so it runs wherever the input tensor lives.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Resample", "resampled_length"]


def resampled_length(num_samples: int, orig_freq: int, new_freq: int) -> int:
    """Output length ``ceil(num_samples * new_freq / orig_freq)`` (exact integer arithmetic)."""
    return -(-num_samples * new_freq // orig_freq)


def _check_rate(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        if isinstance(value, float) and value.is_integer() and value > 0:
            return int(value)
        raise ValueError(f"{name} must be a positive integer sample rate in Hz, got {value!r}")
    return int(value)


class Resample(nn.Module):
    """Resample waveforms ``(..., T)`` from ``orig_freq`` to ``new_freq`` Hz.

    Args:
        orig_freq: input sample rate in Hz (positive int).
        new_freq: output sample rate in Hz (positive int).
        lowpass_filter_width: zero crossings of the sinc kept on each side of the centre;
            longer filters give a sharper transition band. Default 64.
        rolloff: cutoff (the -6 dB point) as a fraction of the lower Nyquist frequency, in
            (0, 1]. Default 0.96: content up to 0.9 of the lower Nyquist passes unchanged and a
            tone at 1.1 times the new Nyquist is attenuated by more than 90 dB (see
            ``docs/data-and-metrics.md``).
        beta: Kaiser window shape parameter. Default 9.0.

    Input: float tensor ``(..., T)`` (float32 or float64, any device; float16/bfloat16 are
    computed in float32 and cast back). Output: ``(..., ceil(T * new_freq / orig_freq))``, same
    dtype and device. Equal rates return the input unchanged (the same tensor). The filter is a
    non-persistent buffer, so ``module.to(device)`` moves it and checkpoints do not store it.
    """

    def __init__(self, orig_freq: int, new_freq: int, *, lowpass_filter_width: int = 64,
                 rolloff: float = 0.96, beta: float = 9.0) -> None:
        super().__init__()
        orig_freq = _check_rate("orig_freq", orig_freq)
        new_freq = _check_rate("new_freq", new_freq)
        if isinstance(lowpass_filter_width, bool) or not isinstance(lowpass_filter_width, int) \
                or lowpass_filter_width < 1:
            raise ValueError(f"lowpass_filter_width must be a positive int, "
                             f"got {lowpass_filter_width!r}")
        if not 0.0 < float(rolloff) <= 1.0:
            raise ValueError(f"rolloff must be in (0, 1], got {rolloff!r}")
        if not math.isfinite(float(beta)) or float(beta) < 0.0:
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self.orig_freq, self.new_freq = orig_freq, new_freq
        self.lowpass_filter_width, self.rolloff, self.beta = (
            lowpass_filter_width, float(rolloff), float(beta))
        g = math.gcd(orig_freq, new_freq)
        self._up, self._down = new_freq // g, orig_freq // g
        kernel, self._left = self._design()
        self.register_buffer("kernel", kernel, persistent=False)

    def _design(self) -> tuple[torch.Tensor, int]:
        """Polyphase taps (up, 1, K) in float64 and the left zero padding."""
        up, down = self._up, self._down
        fc = self.rolloff * min(up, down) / (2.0 * down)
        half = self.lowpass_filter_width / (2.0 * fc)
        r_min = math.floor(-half)
        r_max = math.ceil((up - 1) * down / up + half)
        r = np.arange(r_min, r_max + 1, dtype=np.float64)
        phase_times = np.arange(up, dtype=np.float64)[:, None] * down / up
        u = phase_times - r[None, :]
        inside = np.abs(u) <= half
        ratio = np.clip(u / half, -1.0, 1.0)
        window = np.i0(self.beta * np.sqrt(1.0 - ratio * ratio)) / np.i0(self.beta)
        taps = 2.0 * fc * np.sinc(2.0 * fc * u) * window * inside
        return torch.from_numpy(taps[:, None, :].copy()), -r_min

    def extra_repr(self) -> str:
        return (f"orig_freq={self.orig_freq}, new_freq={self.new_freq}, "
                f"lowpass_filter_width={self.lowpass_filter_width}, rolloff={self.rolloff}, "
                f"beta={self.beta}")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or not waveform.is_floating_point():
            raise TypeError("waveform must be a floating-point tensor (..., T), got "
                            f"{getattr(waveform, 'dtype', type(waveform).__name__)}")
        if waveform.dim() < 1:
            raise ValueError("waveform must have at least one dimension (..., T)")
        if self.orig_freq == self.new_freq:
            return waveform
        up, down = self._up, self._down
        lead, total = waveform.shape[:-1], waveform.shape[-1]
        out_len = resampled_length(total, self.orig_freq, self.new_freq)
        if out_len == 0:
            return waveform.new_zeros(*lead, 0)
        work = waveform.dtype if waveform.dtype in (torch.float32, torch.float64) \
            else torch.float32
        x = waveform.reshape(-1, 1, total).to(work)
        kernel = self.kernel.to(device=x.device, dtype=work)
        blocks = -(-out_len // up)
        need = (blocks - 1) * down + kernel.shape[-1]
        right = max(0, need - total - self._left)
        x = F.pad(x, (self._left, right))
        y = F.conv1d(x, kernel, stride=down)[..., :blocks]
        y = y.transpose(1, 2).reshape(x.shape[0], blocks * up)[:, :out_len]
        return y.reshape(*lead, out_len).to(waveform.dtype)
