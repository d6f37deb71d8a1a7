"""Seeded procedural noises (no downloads) and mixing at an exact SNR.

Every generator has the signature ``(num_samples, sample_rate, seed=None, ...) -> Tensor`` and
returns a 1-D tensor of ``num_samples`` samples scaled to unit RMS (``dtype`` default float32,
computed in float64). ``seed`` is an int (a fresh ``torch.Generator`` seeded with it), a CPU
``torch.Generator`` (consumed), or None (torch's global generator). The same int seed gives
bitwise the same noise on every run.

Kinds (:data:`NOISE_KINDS`): ``white``, ``pink`` (power ~ 1/f), ``brown`` (power ~ 1/f^2),
``babble`` (several talkers from clips passed in), ``hum`` (mains 50/60 Hz with harmonics) and
``bursts`` (short broadband bursts in silence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "NOISE_KINDS",
    "babble_noise",
    "brown_noise",
    "bursts_noise",
    "hum_noise",
    "make_noise",
    "mix_at_snr",
    "pink_noise",
    "scale_to_snr",
    "white_noise",
]

NOISE_KINDS = ("white", "pink", "brown", "babble", "hum", "bursts")
Seed = int | torch.Generator | None


def _generator(seed: Seed) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _check(num_samples: int, sample_rate: int) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int in Hz, got {sample_rate!r}")


def _unit_rms(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    rms = x.square().mean().sqrt()
    if not rms > 0:
        raise ValueError("generated noise is all zeros (num_samples too small?)")
    return (x / rms).to(dtype)


def _uniform(gen: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))


def white_noise(num_samples: int, sample_rate: int, seed: Seed = None, *,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian white noise (flat power spectrum), unit RMS, shape (num_samples,)."""
    _check(num_samples, sample_rate)
    gen = _generator(seed)
    return _unit_rms(torch.randn(num_samples, generator=gen, dtype=torch.float64), dtype)


def _coloured(num_samples: int, sample_rate: int, seed: Seed, exponent: float,
              low_hz: float, dtype: torch.dtype) -> torch.Tensor:
    _check(num_samples, sample_rate)
    if not low_hz > 0:
        raise ValueError(f"low_hz must be > 0, got {low_hz!r}")
    gen = _generator(seed)
    spectrum = torch.fft.rfft(torch.randn(num_samples, generator=gen, dtype=torch.float64))
    freqs = torch.fft.rfftfreq(num_samples, d=1.0 / sample_rate, dtype=torch.float64)
    gain = freqs.clamp(min=low_hz).pow(-exponent / 2.0)
    gain[0] = 0.0  # zero mean
    return _unit_rms(torch.fft.irfft(spectrum * gain, n=num_samples), dtype)


def pink_noise(num_samples: int, sample_rate: int, seed: Seed = None, *, low_hz: float = 20.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pink noise: power spectral density ~ 1/f (-10 dB/decade, -3 dB/octave) above ``low_hz``
    (default 20 Hz; flat below it, no DC). White Gaussian noise shaped in the frequency domain
    by ``f^-1/2``. Unit RMS, shape (num_samples,)."""
    return _coloured(num_samples, sample_rate, seed, 1.0, low_hz, dtype)


def brown_noise(num_samples: int, sample_rate: int, seed: Seed = None, *, low_hz: float = 20.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Brown (red) noise: power spectral density ~ 1/f^2 (-20 dB/decade) above ``low_hz``
    (default 20 Hz; flat below it, no DC). Unit RMS, shape (num_samples,)."""
    return _coloured(num_samples, sample_rate, seed, 2.0, low_hz, dtype)


def _as_clip(clip: object, where: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
    x = x.detach().to("cpu", torch.float64)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"{where} must be a non-empty 1-D waveform, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{where} contains NaN or infinite samples")
    rms = x.square().mean().sqrt()
    if not rms > 0:
        raise ValueError(f"{where} is silent (all zeros)")
    return x / rms


def babble_noise(num_samples: int, sample_rate: int, seed: Seed = None, *,
                 clips: Sequence[torch.Tensor | np.ndarray], num_talkers: int = 4,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Babble: the sum of ``num_talkers`` (default 4) talker streams. Each stream concatenates
    randomly chosen ``clips`` (each scaled to unit RMS), starting at a random offset in its
    first clip. ``clips`` are 1-D waveforms already at ``sample_rate``: pass other speakers'
    speech (kdcore cannot tell whose voice a clip is). Unit RMS, shape (num_samples,)."""
    _check(num_samples, sample_rate)
    if isinstance(num_talkers, bool) or not isinstance(num_talkers, int) or num_talkers < 1:
        raise ValueError(f"num_talkers must be a positive int, got {num_talkers!r}")
    if clips is None or len(clips) == 0:
        raise ValueError("babble_noise needs clips: a non-empty sequence of speech waveforms")
    pool = [_as_clip(c, f"clips[{i}]") for i, c in enumerate(clips)]
    gen = _generator(seed)
    total = torch.zeros(num_samples, dtype=torch.float64)
    for _ in range(num_talkers):
        pieces, have = [], 0
        first = True
        while have < num_samples:
            clip = pool[int(torch.randint(len(pool), (), generator=gen))]
            if first:
                clip = clip[int(torch.randint(clip.numel(), (), generator=gen)):]
                first = False
            pieces.append(clip)
            have += clip.numel()
        total += torch.cat(pieces)[:num_samples]
    return _unit_rms(total, dtype)


def hum_noise(num_samples: int, sample_rate: int, seed: Seed = None, *,
              mains_hz: float | None = None, harmonics: int = 5,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mains hum: ``sum_k a_k sin(2 pi k f0 t + phi_k)`` for k = 1..``harmonics`` (default 5)
    below Nyquist, with ``f0 = mains_hz`` (default None: 50 or 60 Hz drawn from the seed),
    ``a_k = u_k / k`` with ``u_k ~ U(0.3, 1)`` and ``phi_k ~ U(0, 2 pi)``. Unit RMS, shape
    (num_samples,)."""
    _check(num_samples, sample_rate)
    if isinstance(harmonics, bool) or not isinstance(harmonics, int) or harmonics < 1:
        raise ValueError(f"harmonics must be a positive int, got {harmonics!r}")
    gen = _generator(seed)
    if mains_hz is None:
        mains_hz = 50.0 if _uniform(gen, 0.0, 1.0) < 0.5 else 60.0
    if not 0 < mains_hz < sample_rate / 2:
        raise ValueError(f"mains_hz must be in (0, {sample_rate / 2}) Hz, got {mains_hz!r}")
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    out = torch.zeros(num_samples, dtype=torch.float64)
    for k in range(1, harmonics + 1):
        amplitude, phase = _uniform(gen, 0.3, 1.0) / k, _uniform(gen, 0.0, 2 * np.pi)
        if k * mains_hz < sample_rate / 2:
            out += amplitude * torch.sin(2 * np.pi * k * mains_hz * t + phase)
    return _unit_rms(out, dtype)


def bursts_noise(num_samples: int, sample_rate: int, seed: Seed = None, *,
                 rate_hz: float = 2.0, min_ms: float = 5.0, max_ms: float = 50.0,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Short broadband bursts in silence: ``max(1, Poisson(rate_hz * duration))`` bursts
    (``rate_hz`` default 2 per second) at uniform random starts, each white Gaussian noise of
    ``U(min_ms, max_ms)`` milliseconds (defaults 5 and 50) under a Hann envelope with amplitude
    ``U(0.3, 1)``. Unit RMS, shape (num_samples,)."""
    _check(num_samples, sample_rate)
    if not (rate_hz >= 0 and 0 < min_ms <= max_ms):
        raise ValueError(f"need rate_hz >= 0 and 0 < min_ms <= max_ms, got rate_hz={rate_hz}, "
                         f"min_ms={min_ms}, max_ms={max_ms}")
    gen = _generator(seed)
    mean = torch.tensor(rate_hz * num_samples / sample_rate, dtype=torch.float64)
    count = max(1, int(torch.poisson(mean, generator=gen)))
    out = torch.zeros(num_samples, dtype=torch.float64)
    for _ in range(count):
        length = max(3, round(_uniform(gen, min_ms, max_ms) * sample_rate / 1000.0))
        length = min(length, num_samples)
        start = int(torch.randint(num_samples - length + 1, (), generator=gen))
        burst = torch.randn(length, generator=gen, dtype=torch.float64)
        window = torch.hann_window(length + 2, periodic=False, dtype=torch.float64)[1:-1]
        out[start:start + length] += _uniform(gen, 0.3, 1.0) * window * burst
    return _unit_rms(out, dtype)


_MAKERS = {"white": white_noise, "pink": pink_noise, "brown": brown_noise,
           "hum": hum_noise, "bursts": bursts_noise}


def make_noise(kind: str, num_samples: int, sample_rate: int, seed: Seed = None, *,
               babble_clips: Sequence[torch.Tensor | np.ndarray] | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The noise generator named ``kind`` (one of :data:`NOISE_KINDS`); ``babble_clips`` is
    required for ``babble``."""
    if kind == "babble":
        return babble_noise(num_samples, sample_rate, seed, clips=babble_clips, dtype=dtype)
    if kind not in _MAKERS:
        raise ValueError(f"unknown noise kind {kind!r}; choose from {list(NOISE_KINDS)}")
    return _MAKERS[kind](num_samples, sample_rate, seed, dtype=dtype)


def scale_to_snr(speech: torch.Tensor, noise: torch.Tensor,
                 snr_db: float | torch.Tensor) -> torch.Tensor:
    """``noise`` scaled so that ``10 log10(P_speech / P_noise) == snr_db``, where ``P`` is the
    mean square over the last axis. Shapes: ``speech`` and ``noise`` (..., T) of one shape;
    ``snr_db`` a float or a tensor broadcastable to (...). Returns (..., T) in the dtype of
    ``noise`` (float64 keeps the SNR exact to about 1e-12 dB)."""
    if speech.shape != noise.shape:
        raise ValueError(f"speech and noise must have the same shape, got {tuple(speech.shape)} "
                         f"and {tuple(noise.shape)}")
    p_speech = speech.double().square().mean(dim=-1, keepdim=True)
    p_noise = noise.double().square().mean(dim=-1, keepdim=True)
    if not bool((p_speech > 0).all()):
        raise ValueError("speech is silent (zero power): the SNR is undefined")
    if not bool((p_noise > 0).all()):
        raise ValueError("noise is silent (zero power): it cannot be scaled to an SNR")
    snr = torch.as_tensor(snr_db, dtype=torch.float64, device=speech.device)
    if not bool(torch.isfinite(snr).all()):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}")
    snr = snr.unsqueeze(-1) if snr.dim() > 0 else snr
    scale = torch.sqrt(p_speech / (p_noise * torch.pow(10.0, snr / 10.0)))
    return (noise.double() * scale).to(noise.dtype)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor,
               snr_db: float | torch.Tensor) -> torch.Tensor:
    """``speech + scale_to_snr(speech, noise, snr_db)``: noisy speech (..., T) whose noise part
    has exactly the requested SNR (see :func:`scale_to_snr`)."""
    return speech + scale_to_snr(speech, noise, snr_db).to(speech.dtype)
