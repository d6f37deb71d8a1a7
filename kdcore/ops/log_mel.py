"""Log-mel spectrogram of a batch of waveforms: framing, window, DFT, power, mel projection, log.

For item ``b`` with ``L_b`` valid samples, frame ``i`` covers the ``win_length`` samples starting
at ``hop_length*i - lead``:

- ``center=True``: the waveform is padded by ``n_fft//2`` on each side (``pad_mode``), as
  ``torch.stft`` does, so ``lead = n_fft//2 - (n_fft - win_length)//2`` and there are
  ``1 + (L + 2*(n_fft//2) - n_fft)//hop`` frames (``1 + L//hop`` for even ``n_fft``).
- ``center=False`` (Kaldi's ``snip_edges``): ``lead = 0`` and ``1 + (L - win_length)//hop``
  frames. With ``win_length == n_fft`` this is ``torch.stft(center=False)``.

Each frame ``r`` (optionally DC-removed and pre-emphasised, Kaldi style:
``r[n] -= c*r[n-1]``, ``r[0] -= c*r[0]``) is multiplied by the window, zero-padded to ``n_fft``
and transformed: ``X[k] = sum_n w[n] r[n] exp(-2*pi*i*k*n/n_fft)`` for ``k < n_fft//2 + 1``.
The frame's position inside the ``n_fft`` buffer only changes the phase, never the power.
Then ``S = |X|^power``, ``mel = S @ filterbank`` and the log (``log``), followed by
``(y + shift) / divisor``. Frames at or beyond an item's valid frame count are ``pad_value``.

Backends: ``"triton"`` (one fused kernel: frames read straight from the waveform, DFT and mel as
two ``tl.dot``), ``"cpp"`` (ATen FFT per cache-sized chunk of frames plus a fused
power/mel/log epilogue, in C++), ``"reference"`` (plain torch). Gradients to the waveform
recompute the reference under autograd.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from kdcore import _backends
from kdcore.ops import _checks

WINDOWS = ("hann", "hann_symmetric", "hamming", "povey")
MEL_SCALES = ("htk", "slaney", "kaldi")
NORMS = (None, "slaney")
LOGS = (None, "ln", "ln_clamp", "log10_clamp", "db")
PAD_MODES = ("constant", "reflect", "replicate", "circular")
PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16")
DB_AMIN = 1e-10
WAVEFORM_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# --------------------------------------------------------------------------------------------
# Windows, filterbanks, frame counts (built in float64).
# --------------------------------------------------------------------------------------------


def make_window(window: str, win_length: int) -> torch.Tensor:
    """(win_length,) float64 window.

    - ``"hann"``: periodic, ``0.5 - 0.5*cos(2*pi*n/N)`` (``torch.hann_window`` default).
    - ``"hann_symmetric"``: ``0.5 - 0.5*cos(2*pi*n/(N-1))``.
    - ``"hamming"``: periodic, ``0.54 - 0.46*cos(2*pi*n/N)`` (``torch.hamming_window`` default).
    - ``"povey"``: Kaldi's, symmetric Hann to the power 0.85.
    """
    _checks.check_choice("window", window, WINDOWS)
    n = torch.arange(win_length, dtype=torch.float64)
    if window in ("hann", "hamming"):
        denominator = win_length
    else:
        denominator = max(win_length - 1, 1)
    phase = 2.0 * math.pi * n / denominator
    if window == "hamming":
        return 0.54 - 0.46 * torch.cos(phase)
    hann = 0.5 - 0.5 * torch.cos(phase)
    if win_length == 1 and window != "hann":
        hann = torch.ones(1, dtype=torch.float64)
    return hann.pow(0.85) if window == "povey" else hann


def _hz_to_mel(freq: np.ndarray, mel_scale: str) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    if mel_scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    if mel_scale == "kaldi":
        return 1127.0 * np.log(1.0 + freq / 700.0)
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
    linear = freq / (200.0 / 3.0)
    logarithmic = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray, mel_scale: str) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if mel_scale == "kaldi":
        return 700.0 * (np.exp(mel / 1127.0) - 1.0)
    min_log_hz, min_log_mel, logstep = 1000.0, 15.0, math.log(6.4) / 27.0
    linear = mel * (200.0 / 3.0)
    logarithmic = min_log_hz * np.exp(logstep * (mel - min_log_mel))
    return np.where(mel >= min_log_mel, logarithmic, linear)


def mel_filterbank(n_freqs: int, *, f_min: float, f_max: float, n_mels: int, sample_rate: int,
                   norm: str | None = None, mel_scale: str = "htk",
                   n_fft: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n_freqs, n_mels) triangular mel filters, built in float64 then cast to ``dtype``.

    Bin ``k`` sits at ``k * sample_rate / n_fft`` Hz; ``n_fft`` defaults to ``2*(n_freqs - 1)``
    (pass it for odd FFT sizes).
    ``n_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max`` give each
    filter's left edge, centre and right edge.

    - ``"htk"`` (``2595*log10(1+f/700)``) and ``"slaney"`` (librosa's scale): the triangles are
      linear in Hz, as in torchaudio and librosa.
    - ``"kaldi"`` (``1127*ln(1+f/700)``): the triangles are linear in mel and the Nyquist bin is
      zero, as in Kaldi's ``MelBanks``.

    ``norm="slaney"`` divides each filter by half its width in Hz: ``2/(f[m+2] - f[m])``.
    Warns (as torchaudio does) when a filter is empty because ``n_mels`` is too large.
    """
    _checks.check_choice("mel_scale", mel_scale, MEL_SCALES)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    n_fft = 2 * (n_freqs - 1) if n_fft is None else n_fft
    if n_fft // 2 + 1 != n_freqs:
        raise ValueError(f"n_freqs must be n_fft//2 + 1 = {n_fft // 2 + 1}, got {n_freqs}")
    bin_hz = np.arange(n_freqs, dtype=np.float64) * sample_rate / max(n_fft, 1)
    edges_mel = np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale),
                            n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel, mel_scale)
    if mel_scale == "kaldi":
        position, edges = _hz_to_mel(bin_hz, "kaldi"), edges_mel
    else:
        position, edges = bin_hz, edges_hz
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (position[:, None] - left[None, :]) / (centre - left)[None, :]
    falling = (right[None, :] - position[:, None]) / (right - centre)[None, :]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if mel_scale == "kaldi":
        weights[-1, :] = 0.0
    if norm == "slaney":
        weights = weights * (2.0 / (edges_hz[2:] - edges_hz[:-2]))[None, :]
    if (weights.max(axis=0) == 0.0).any():
        warnings.warn(
            "At least one mel filterbank has all zero values. The value for `n_mels` "
            f"({n_mels}) may be set too high. Or, the value for `n_freqs` ({n_freqs}) may be set "
            "too low.",
            UserWarning,
            stacklevel=2,
        )
    return torch.from_numpy(weights).to(dtype)


def _frame_geometry(n_fft: int, win_length: int, center: bool) -> tuple[int, int]:
    """(lead, extra): frame i starts at ``hop*i - lead``; frames = 1 + (L + extra)//hop."""
    if center:
        return n_fft // 2 - (n_fft - win_length) // 2, 2 * (n_fft // 2) - n_fft
    return 0, -win_length


def num_frames(lengths: torch.Tensor | int, *, n_fft: int, hop_length: int, center: bool,
               win_length: int | None = None) -> torch.Tensor:
    """Frames per item (int64, same shape as ``lengths``): ``1 + (L + 2*(n_fft//2) - n_fft)//hop``
    with ``center``, else ``1 + (L - win_length)//hop``; never negative."""
    win_length = n_fft if win_length is None else win_length
    _check_int("n_fft", n_fft, low=1)
    _check_int("hop_length", hop_length, low=1)
    _check_int("win_length", win_length, low=1, high=n_fft)
    _, extra = _frame_geometry(n_fft, win_length, center)
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    return (1 + torch.div(lengths + extra, hop_length, rounding_mode="floor")).clamp(min=0)


# --------------------------------------------------------------------------------------------
# Argument checks.
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


_CONFIG_KEYS: dict[str, tuple] = {}


class LogMelConfig:
    """Checked, hashable settings of one log-mel computation (see :func:`log_mel`)."""

    FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
              "window", "center", "pad_mode", "power", "mel_scale", "norm", "log", "log_eps",
              "pad_value", "precision", "preemphasis", "remove_dc_offset", "shift", "divisor")
    __slots__ = FIELDS + ("token",)

    def __init__(self, *, sample_rate: int = 16000, n_fft: int = 400, win_length: int | None = None,
                 hop_length: int = 160, n_mels: int = 80, f_min: float = 0.0,
                 f_max: float | None = None, window: str = "hann", center: bool = True,
                 pad_mode: str = "reflect", power: float = 2.0, mel_scale: str = "htk",
                 norm: str | None = None, log: str | None = "ln", log_eps: float = 1e-6,
                 pad_value: float = 0.0, precision: str = "ieee", preemphasis: float = 0.0,
                 remove_dc_offset: bool = False, shift: float = 0.0, divisor: float = 1.0):
        self.sample_rate = _check_int("sample_rate", sample_rate, low=1)
        self.n_fft = _check_int("n_fft", n_fft, low=2)
        win_length = n_fft if win_length is None else win_length
        self.win_length = _check_int("win_length", win_length, low=1, high=n_fft)
        self.hop_length = _check_int("hop_length", hop_length, low=1)
        self.n_mels = _check_int("n_mels", n_mels, low=1)
        nyquist = sample_rate / 2.0
        self.f_min = _checks.check_number("f_min", f_min, low=0.0, high=nyquist)
        f_max = nyquist if f_max is None else f_max
        if isinstance(f_max, (int, float)) and not isinstance(f_max, bool) and f_max > nyquist:
            raise ValueError(f"f_max must not exceed the Nyquist frequency sample_rate/2 = "
                             f"{nyquist}, got {f_max}")
        self.f_max = _checks.check_number("f_max", f_max, low=0.0, high=nyquist)
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min must be below f_max, got f_min={self.f_min}, "
                             f"f_max={self.f_max}")
        _checks.check_choice("window", window, WINDOWS)
        self.window = window
        if not isinstance(center, bool):
            raise TypeError(f"center must be a bool, got {type(center).__name__}")
        self.center = center
        _checks.check_choice("pad_mode", pad_mode, PAD_MODES)
        self.pad_mode = pad_mode
        self.power = _checks.check_number("power", power, low=0.0, high=math.inf, low_open=True)
        _checks.check_choice("mel_scale", mel_scale, MEL_SCALES)
        self.mel_scale = mel_scale
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        if log not in LOGS:
            raise ValueError(f"log must be one of {LOGS}, got {log!r}")
        self.log = log
        self.log_eps = _checks.check_number("log_eps", log_eps, low=0.0, high=math.inf,
                                            low_open=True)
        if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)):
            raise TypeError(f"pad_value must be a real number, got {type(pad_value).__name__}")
        self.pad_value = float(pad_value)
        _checks.check_choice("precision", precision, PRECISIONS)
        self.precision = precision
        self.preemphasis = _checks.check_number("preemphasis", preemphasis, low=0.0, high=1.0)
        if not isinstance(remove_dc_offset, bool):
            raise TypeError(f"remove_dc_offset must be a bool, got "
                            f"{type(remove_dc_offset).__name__}")
        self.remove_dc_offset = remove_dc_offset
        self.shift = _checks.check_number("shift", shift, low=-math.inf, high=math.inf)
        self.divisor = _checks.check_number("divisor", divisor, low=0.0, high=math.inf,
                                            low_open=True)
        # A string names the settings inside torch.compile'd code: a string stays a constant
        # there, while ints and floats read from an object may be traced as symbols.
        key = self.key()
        self.token = repr(key)
        _CONFIG_KEYS[self.token] = key

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.FIELDS)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def lead(self) -> int:
        return _frame_geometry(self.n_fft, self.win_length, self.center)[0]

    def frames(self, lengths: torch.Tensor | int) -> torch.Tensor:
        return num_frames(lengths, n_fft=self.n_fft, hop_length=self.hop_length,
                          center=self.center, win_length=self.win_length)


def _check_waveform(waveform: object) -> None:
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.dtype not in WAVEFORM_DTYPES:
        raise TypeError(f"waveform must be a float32, bfloat16 or float16 tensor (float64 for "
                        f"checks), got dtype {waveform.dtype}")
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be shaped (B, T) or (T,), got shape "
                         f"{tuple(waveform.shape)}")
    if waveform.shape[-1] == 0:
        raise ValueError(f"waveform must hold at least one sample, got shape "
                         f"{tuple(waveform.shape)}")


def _check_lengths(lengths: object, batch: int, samples: int, config: LogMelConfig,
                   device: torch.device) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        if isinstance(lengths, (list, tuple)):
            lengths = torch.tensor(lengths)
        else:
            raise TypeError(f"lengths must be an integer tensor shaped (B,), got "
                            f"{type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integer sample counts, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be shaped (B,) = ({batch},) to fit the batch, got "
                         f"{tuple(lengths.shape)}")
    lengths = lengths.to(device=device, dtype=torch.int64)
    if not _checks.skip_data_checks() and batch:
        shortest, longest = int(lengths.min()), int(lengths.max())
        low = 1 if config.center else config.win_length
        if shortest < low or longest > samples:
            raise ValueError(f"lengths must be in [{low}, {samples}] (at least one "
                             f"{'sample' if config.center else 'frame of win_length samples'}, "
                             f"at most the waveform's T), got values in [{shortest}, {longest}]")
    return lengths


# --------------------------------------------------------------------------------------------
# Reference: plain torch, the specification (also the gradient path).
# --------------------------------------------------------------------------------------------


def fold_index(index: torch.Tensor, length: torch.Tensor, pad_mode: str) -> torch.Tensor:
    """Map sample positions (any integers) onto [0, length) as ``pad_mode`` pads: ``reflect``
    mirrors without repeating the edge (like ``numpy.pad``, any pad size), ``replicate``
    clamps, ``circular`` wraps. ``constant`` clamps too; the caller zeroes outside samples."""
    if pad_mode == "reflect":
        period = (2 * (length - 1)).clamp(min=1)
        folded = torch.remainder(index, period)
        return torch.where(folded < length, folded, period - folded).clamp(max=length - 1)
    if pad_mode == "circular":
        return torch.remainder(index, length)
    return torch.minimum(index.clamp(min=0), length - 1)


def _frames_reference(waveform: torch.Tensor, lengths: torch.Tensor, config: LogMelConfig,
                      n_frames: int) -> torch.Tensor:
    """(B, n_frames, win_length) frames, padding each item at its own length."""
    span = (n_frames - 1) * config.hop_length + config.win_length
    position = torch.arange(span, device=waveform.device) - config.lead
    source = fold_index(position[None, :], lengths[:, None], config.pad_mode)
    padded = waveform.gather(1, source)
    if config.pad_mode == "constant":
        inside = (position[None, :] >= 0) & (position[None, :] < lengths[:, None])
        padded = torch.where(inside, padded, 0.0)
    return padded.unfold(-1, config.win_length, config.hop_length)


def _apply_log(mel: torch.Tensor, config: LogMelConfig) -> torch.Tensor:
    if config.log == "ln":
        out = torch.log(mel + config.log_eps)
    elif config.log == "ln_clamp":
        out = torch.log(mel.clamp(min=config.log_eps))
    elif config.log == "log10_clamp":
        out = torch.log10(mel.clamp(min=config.log_eps))
    elif config.log == "db":
        out = 10.0 * torch.log10(mel.clamp(min=DB_AMIN))
    else:
        out = mel
    if config.shift != 0.0 or config.divisor != 1.0:
        out = (out + config.shift) / config.divisor
    return out


def log_mel_reference(waveform: torch.Tensor, lengths: torch.Tensor, window: torch.Tensor,
                      filterbank: torch.Tensor, config: LogMelConfig, n_frames: int,
                      valid_frames: torch.Tensor) -> torch.Tensor:
    """Plain-torch log-mel of (B, T) ``waveform``: (B, n_mels, n_frames) in fp32 (fp64 for fp64
    input). ``window`` (win,) and ``filterbank`` (n_freqs, n_mels) in the compute dtype."""
    compute_dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    frames = _frames_reference(waveform.to(compute_dtype), lengths, config, n_frames)
    if config.remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    if config.preemphasis != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - config.preemphasis * previous
    spectrum = torch.fft.rfft(frames * window, n=config.n_fft)
    power = torch.view_as_real(spectrum).square().sum(-1)
    if config.power != 2.0:
        power = power.pow(config.power / 2.0)
    out = _apply_log(power @ filterbank, config).transpose(1, 2)
    valid = torch.arange(n_frames, device=waveform.device)[None, :] < valid_frames[:, None]
    return torch.where(valid[:, None, :], out, config.pad_value)


# --------------------------------------------------------------------------------------------
# Fused op: C++ on CPU, Triton on GPU (or the CPU interpreter); autograd through the reference.
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _tables(config_key: tuple, device: torch.device, dtype: torch.dtype) -> tuple:
    """(window (win,), filterbank (n_freqs, n_mels)) for ``config_key`` on ``device``."""
    config = LogMelConfig(**dict(zip(LogMelConfig.FIELDS, config_key, strict=True)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the public call has warned already
        filterbank = mel_filterbank(config.n_freqs, f_min=config.f_min, f_max=config.f_max,
                                    n_mels=config.n_mels, sample_rate=config.sample_rate,
                                    norm=config.norm, mel_scale=config.mel_scale,
                                    n_fft=config.n_fft)
    window = make_window(config.window, config.win_length)
    return window.to(device, dtype), filterbank.to(device, dtype)


@torch.compiler.assume_constant_result
def _constant_tables(token: str, device: torch.device, dtype: torch.dtype) -> tuple:
    """:func:`_tables` of the config named ``token``; under ``torch.compile`` built once at
    trace time (numpy, a warnings filter) and used as constants of the graph."""
    return _tables(_CONFIG_KEYS[token], device, dtype)


@torch.compiler.assume_constant_result
def _geometry(token: str) -> tuple:
    """(n_fft, win_length, hop_length, extra, n_mels, center, packed config) of the config named
    ``token``: constants under ``torch.compile``."""
    config = LogMelConfig(**dict(zip(LogMelConfig.FIELDS, _CONFIG_KEYS[token], strict=True)))
    _, extra = _frame_geometry(config.n_fft, config.win_length, config.center)
    return (config.n_fft, config.win_length, config.hop_length, extra, config.n_mels,
            config.center, _pack(config))


def dft_basis(window: torch.Tensor, n_fft: int, *, preemphasis: float = 0.0,
              remove_dc_offset: bool = False) -> torch.Tensor:
    """(2, win, n_fft//2+1) float64 basis with the frame transform folded in:
    ``basis[0] = (diag(w) P D)^T C^T`` and ``basis[1]`` likewise with ``-sin``, where
    ``C[k, n] = cos(2*pi*k*n/n_fft)``, ``D`` removes the frame mean and ``P`` pre-emphasises, so
    that ``frame @ basis[0]`` and ``frame @ basis[1]`` are the real and imaginary DFT."""
    win = window.shape[0]
    transform = torch.eye(win, dtype=torch.float64)
    if remove_dc_offset:
        transform = transform - 1.0 / win
    if preemphasis != 0.0:
        emphasis = torch.eye(win, dtype=torch.float64)
        emphasis[1:, :-1] -= preemphasis * torch.eye(win - 1, dtype=torch.float64)
        emphasis[0, 0] -= preemphasis
        transform = emphasis @ transform
    transform = window.double()[:, None] * transform
    n = torch.arange(win, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2.0 * math.pi * torch.remainder(k[:, None] * n[None, :], n_fft) / n_fft
    cos_rows, sin_rows = torch.cos(angle) @ transform, -torch.sin(angle) @ transform
    return torch.stack([cos_rows.T, sin_rows.T])


@functools.lru_cache(maxsize=32)
def _triton_tables(config_key: tuple, device: torch.device) -> tuple:
    config = LogMelConfig(**dict(zip(LogMelConfig.FIELDS, config_key, strict=True)))
    window, filterbank = _tables(config_key, torch.device("cpu"), torch.float64)
    kernels = _backends.triton_kernels()
    if config.n_fft % 2 == 0 and config.preemphasis == 0.0 and not config.remove_dc_offset:
        # only windowed frames: the even/odd split kernel does half the multiply-adds
        return kernels.log_mel_split_tables(window, config.n_fft, filterbank.to(device))
    basis = dft_basis(window, config.n_fft, preemphasis=config.preemphasis,
                      remove_dc_offset=config.remove_dc_offset)
    return kernels.log_mel_tables(basis.to(device), filterbank.to(device))


@torch.library.custom_op("kdcore::log_mel", mutates_args=())
def _log_mel_op(waveform: torch.Tensor, lengths: torch.Tensor, valid_frames: torch.Tensor,
                window: torch.Tensor, filterbank: torch.Tensor, config_values: list[float],
                n_frames: int, backend: str) -> torch.Tensor:
    """waveform (B, T) float; lengths, valid_frames (B,) int64; window (win,), filterbank
    (n_freqs, n_mels) in the compute dtype; ``config_values`` = ``_pack(config)``.
    Returns (B, n_mels, n_frames)."""
    config = _unpack(config_values)
    compute_dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    if backend == "cpp":
        return _backends.cpp_ops().log_mel(
            waveform.to(compute_dtype).contiguous(), lengths, valid_frames, window, filterbank,
            config.n_fft, config.hop_length, config.lead, PAD_MODES.index(config.pad_mode),
            n_frames, config.preemphasis, config.remove_dc_offset, config.power,
            LOGS.index(config.log), config.log_eps, config.shift, config.divisor,
            config.pad_value)
    if backend == "triton":
        return _backends.triton_kernels().log_mel_forward(
            waveform.contiguous(), lengths, valid_frames,
            _triton_tables(config.key(), waveform.device),
            n_fft=config.n_fft, win_length=config.win_length, hop_length=config.hop_length,
            lead=config.lead, n_mels=config.n_mels, n_frames=n_frames,
            pad_mode=PAD_MODES.index(config.pad_mode), power=config.power,
            log_mode=LOGS.index(config.log), log_eps=config.log_eps, shift=config.shift,
            divisor=config.divisor, pad_value=config.pad_value, precision=config.precision)
    # Contiguous, as the fake kernel and the other backends return it.
    return log_mel_reference(waveform, lengths, window, filterbank, config, n_frames,
                             valid_frames).contiguous()


@_log_mel_op.register_fake
def _(waveform, lengths, valid_frames, window, filterbank, config_values, n_frames, backend):
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    return waveform.new_empty((waveform.shape[0], filterbank.shape[1], n_frames), dtype=dtype)


def _setup_context(ctx, inputs, output):
    waveform, lengths, valid_frames, window, filterbank, config_values, n_frames, _ = inputs
    ctx.save_for_backward(waveform, lengths, valid_frames, window, filterbank)
    ctx.kdcore_config = (config_values, n_frames)


def _backward(ctx, grad_output):
    waveform, lengths, valid_frames, window, filterbank = ctx.saved_tensors
    config_values, n_frames = ctx.kdcore_config
    with torch.enable_grad():
        leaf = waveform.detach().requires_grad_(True)
        out = log_mel_reference(leaf, lengths, window, filterbank, _unpack(config_values),
                                n_frames, valid_frames)
        (grad_waveform,) = torch.autograd.grad(out, leaf, grad_output.to(out.dtype))
    return grad_waveform.to(waveform.dtype), None, None, None, None, None, None, None


_log_mel_op.register_autograd(_backward, setup_context=_setup_context)

_PACKED = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max",
           "center", "pad_mode", "power", "mel_scale", "norm", "log", "log_eps", "pad_value",
           "precision", "preemphasis", "remove_dc_offset", "shift", "divisor", "window")
_CHOICES = {"pad_mode": PAD_MODES, "mel_scale": MEL_SCALES, "norm": NORMS, "log": LOGS,
            "precision": PRECISIONS, "window": WINDOWS}
_INTS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")


def _pack(config: LogMelConfig) -> list[float]:
    """The config as floats (a custom op takes no Python objects); choices become indices."""
    values = []
    for name in _PACKED:
        value = getattr(config, name)
        values.append(float(_CHOICES[name].index(value)) if name in _CHOICES else float(value))
    return values


def _unpack(values: list[float]) -> LogMelConfig:
    kwargs = {}
    for name, value in zip(_PACKED, values, strict=True):
        if name in _CHOICES:
            kwargs[name] = _CHOICES[name][int(value)]
        elif name in _INTS:
            kwargs[name] = int(value)
        elif name in ("center", "remove_dc_offset"):
            kwargs[name] = bool(value)
        else:
            kwargs[name] = value
    return LogMelConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# Public function.
# --------------------------------------------------------------------------------------------


def log_mel(waveform: torch.Tensor, *, sample_rate: int = 16000, n_fft: int = 400,
            win_length: int | None = None, hop_length: int = 160, n_mels: int = 80,
            f_min: float = 0.0, f_max: float | None = None, window: str = "hann",
            center: bool = True, pad_mode: str = "reflect", power: float = 2.0,
            mel_scale: str = "htk", norm: str | None = None, log: str | None = "ln",
            log_eps: float = 1e-6, lengths: torch.Tensor | None = None, pad_value: float = 0.0,
            precision: str = "ieee", backend: str = "auto", preemphasis: float = 0.0,
            remove_dc_offset: bool = False, shift: float = 0.0, divisor: float = 1.0,
            drop_last_frame: bool = False) -> torch.Tensor:
    """Log-mel features of ``waveform`` (B, T) or (T,), fp32/bf16/fp16 (fp64 for checks).

    Args:
        sample_rate, n_fft, win_length (default n_fft), hop_length: STFT geometry (module doc).
        n_mels, f_min, f_max (default Nyquist), mel_scale (``"htk"``, ``"slaney"``, ``"kaldi"``),
            norm (``None`` or ``"slaney"``): the filterbank, see :func:`mel_filterbank`.
        window: ``"hann"`` (periodic), ``"hann_symmetric"``, ``"hamming"`` or ``"povey"``.
        center, pad_mode: ``center=True`` pads ``n_fft//2`` per side with ``pad_mode``
            (``"reflect"``, ``"constant"`` zeros, ``"replicate"``, ``"circular"``).
        power: exponent on ``|X|`` (2 = power, 1 = magnitude).
        log: ``"ln"`` ``ln(x+eps)``, ``"ln_clamp"`` ``ln(max(x,eps))``, ``"log10_clamp"``
            ``log10(max(x,eps))``, ``"db"`` ``10*log10(max(x,1e-10))``, ``None`` (mel power).
        log_eps: the guard ``eps`` above.
        lengths: (B,) valid samples per item; each item is padded at its own end and frames at or
            beyond its frame count are set to ``pad_value``. Items never influence each other.
        precision: Triton's ``tl.dot`` mode: ``"ieee"`` (near fp32), ``"tf32x3"``, ``"tf32"``,
            ``"bf16"`` (fast). The CPU backends always compute in fp32.
        backend: ``"auto"``, ``"triton"``, ``"cpp"`` or ``"reference"``.
        preemphasis, remove_dc_offset: per-frame Kaldi steps (before the window).
        shift, divisor: output ``(log + shift) / divisor`` (Whisper, PaSST normalisation).
        drop_last_frame: drop each item's last frame (Whisper).

    Returns:
        (B, n_mels, frames) or (n_mels, frames) fp32 (fp64 for fp64 input), with
        ``frames = num_frames(T) - drop_last_frame``. Differentiable w.r.t. ``waveform``.
    """
    _check_waveform(waveform)
    config = LogMelConfig(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
                          hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max,
                          window=window, center=center, pad_mode=pad_mode, power=power,
                          mel_scale=mel_scale, norm=norm, log=log, log_eps=log_eps,
                          pad_value=pad_value, precision=precision, preemphasis=preemphasis,
                          remove_dc_offset=remove_dc_offset, shift=shift, divisor=divisor)
    if not isinstance(drop_last_frame, bool):
        raise TypeError(f"drop_last_frame must be a bool, got {type(drop_last_frame).__name__}")
    warn_if_empty_filters(config)
    return _log_mel(waveform, config, lengths, backend, drop_last_frame)


def warn_if_empty_filters(config: LogMelConfig) -> None:
    """Warn (as torchaudio does) when some mel filter covers no FFT bin (under
    ``torch.compile``: once, while tracing)."""
    _warn_if_empty_filters(config.token)


@torch.compiler.assume_constant_result
def _warn_if_empty_filters(token: str) -> bool:
    config_key = _CONFIG_KEYS[token]
    if not _empty_filters(config_key):
        return False
    config = LogMelConfig(**dict(zip(LogMelConfig.FIELDS, config_key, strict=True)))
    warnings.warn(
        "At least one mel filterbank has all zero values. The value for `n_mels` "
        f"({config.n_mels}) may be set too high. Or, the value for `n_freqs` "
        f"({config.n_freqs}) may be set too low.",
        UserWarning,
        stacklevel=4,
    )
    return True


@functools.lru_cache(maxsize=64)
def _empty_filters(config_key: tuple) -> bool:
    _, filterbank = _tables(config_key, torch.device("cpu"), torch.float64)
    return bool((filterbank.amax(0) == 0).any())


def _log_mel(waveform: torch.Tensor, config: LogMelConfig, lengths: torch.Tensor | None,
             backend: str, drop_last_frame: bool = False) -> torch.Tensor:
    """:func:`log_mel` on checked ``config`` (used by :class:`kdcore.LogMel`)."""
    _check_waveform(waveform)
    unbatched = waveform.dim() == 1
    batch = waveform.unsqueeze(0) if unbatched else waveform
    size, samples = batch.shape
    device = batch.device
    _, win_length, hop_length, extra, n_mels, center, packed = _geometry(config.token)
    if not center and samples < win_length:
        raise ValueError(f"waveform is shorter than one frame: center=False needs at least "
                         f"win_length={win_length} samples, got {samples}")
    if lengths is None:
        item_lengths = torch.full((size,), samples, dtype=torch.int64, device=device)
    else:
        if unbatched:
            raise ValueError("lengths needs a batched waveform shaped (B, T)")
        item_lengths = _check_lengths(lengths, size, samples, config, device)
    resolved = _backends.resolve_backend(backend, device)
    if batch.dtype == torch.float64 and resolved == "triton":
        if backend == "triton":
            raise TypeError("backend='triton' takes float32, bfloat16 or float16 waveforms; "
                            "use backend='reference' or 'cpp' for float64")
        resolved = "reference"

    drop = int(drop_last_frame)
    n_frames = max(1 + (samples + extra) // hop_length - drop, 0)
    item_frames = 1 + torch.div(item_lengths + extra, hop_length, rounding_mode="floor")
    valid_frames = (item_frames - drop).clamp(min=0)
    compute_dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
    if size == 0:
        return batch.new_zeros((0, n_mels, n_frames), dtype=compute_dtype)
    window, filterbank = _constant_tables(config.token, device, compute_dtype)
    out = _log_mel_op(batch, item_lengths, valid_frames, window, filterbank, packed, n_frames,
                      resolved)
    return out[0] if unbatched else out
