"""``LogMel``: the log-mel frontend as an ``nn.Module``, with presets that reproduce the feature
recipes teachers are commonly trained with.

Presets (``LogMel.from_preset(name, **overrides)``), each from its library's documented
defaults:

- ``"torchaudio"``: ``torchaudio.transforms.MelSpectrogram()`` defaults: 16 kHz, n_fft 400,
  win 400, hop 200 (win//2), periodic Hann, center reflect, power 2, HTK scale, no norm,
  128 mels, 0 Hz to Nyquist, no log (mel power). 128 HTK mels on 201 bins leave some filters
  empty, so it warns exactly as torchaudio does.
- ``"librosa"``: ``librosa.feature.melspectrogram()`` defaults: 22.05 kHz, n_fft 2048, hop 512,
  Hann, center with **constant** (zero) padding, Slaney scale and norm, 128 mels, mel power.
  ``log="db"`` with ``floor_below_max=80`` gives ``power_to_db(ref=1, amin=1e-10, top_db=80)``.
- ``"whisper"``: 16 kHz, n_fft 400, hop 160, periodic Hann, center reflect, Slaney scale and norm,
  80 mels (pass ``n_mels=128`` for large-v3), ``log10(max(x, 1e-10))``, then
  ``max(x, x.max() - 8)`` with the max taken **per sample** over its valid frames, then
  ``(x + 4)/4``; the last frame is dropped (30 s gives 3000 frames).
- ``"kaldi"``: ``torchaudio.compliance.kaldi.fbank`` defaults: 16 kHz, 25 ms frames (400) every
  10 ms (160), ``snip_edges`` (``center=False``, ``1 + (T - 400)//160`` frames), per frame DC
  removal then pre-emphasis 0.97 (replicated first sample), povey window, zero-padded to a
  512-point FFT, 23 Kaldi mels (``1127 ln(1 + f/700)``, triangles in mel) from 20 Hz to Nyquist,
  ``ln(max(x, FLT_EPSILON = 1.1920929e-07))``, dither 0.
- ``"passt"``: PaSST's ``AugmentMelSTFT`` in eval mode: 32 kHz, pre-emphasis on the waveform
  with the kernel ``[-0.97, 1]`` (T - 1 samples), n_fft 1024, win 800 symmetric Hann, hop 320,
  center reflect, 128 Kaldi mels from 0 to 15500 Hz (``sr//2 - fmax_aug_range//2`` with
  ``fmax_aug_range = 1000``; EfficientAT uses 15000: override ``f_max``), ``ln(x + 1e-5)``,
  then ``(x + 4.5)/5``.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from kdcore.ops import _checks
from kdcore.ops.log_mel import LogMelConfig, _log_mel, mel_filterbank

FLT_EPSILON = 1.1920928955078125e-07

PRESETS: dict[str, dict[str, object]] = {
    "torchaudio": dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=200, n_mels=128,
                       f_min=0.0, f_max=None, window="hann", center=True, pad_mode="reflect",
                       power=2.0, mel_scale="htk", norm=None, log=None),
    "librosa": dict(sample_rate=22050, n_fft=2048, win_length=2048, hop_length=512, n_mels=128,
                    f_min=0.0, f_max=None, window="hann", center=True, pad_mode="constant",
                    power=2.0, mel_scale="slaney", norm="slaney", log=None),
    "whisper": dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80,
                    f_min=0.0, f_max=None, window="hann", center=True, pad_mode="reflect",
                    power=2.0, mel_scale="slaney", norm="slaney", log="log10_clamp",
                    log_eps=1e-10, shift=4.0, divisor=4.0, floor_below_max=8.0,
                    drop_last_frame=True),
    "kaldi": dict(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=23,
                  f_min=20.0, f_max=None, window="povey", center=False, power=2.0,
                  mel_scale="kaldi", norm=None, log="ln_clamp", log_eps=FLT_EPSILON,
                  preemphasis=0.97, remove_dc_offset=True),
    "passt": dict(sample_rate=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
                  f_min=0.0, f_max=15500.0, window="hann_symmetric", center=True,
                  pad_mode="reflect", power=2.0, mel_scale="kaldi", norm=None, log="ln",
                  log_eps=1e-5, shift=4.5, divisor=5.0, waveform_preemphasis=0.97),
}

_CONFIG_NAMES = tuple(inspect.signature(LogMelConfig).parameters)


class LogMel(nn.Module):
    """Waveforms (B, T) or (T,) to log-mel features (B, n_mels, frames), fp32.

    Takes every keyword of :func:`kdcore.log_mel` except ``waveform`` and ``lengths``, plus:

    - ``waveform_preemphasis``: ``c`` of the waveform filter ``y[t] = x[t+1] - c*x[t]`` (PaSST),
      applied before framing; it shortens every item by one sample. 0 turns it off.
    - ``floor_below_max``: per-sample floor ``max(y, y.max() - floor_below_max)`` over each item's
      valid frames, in log units before ``shift``/``divisor`` (Whisper: 8; librosa's top_db: 80).

    ``forward(waveform, lengths=None)``: ``lengths`` (B,) valid samples per item; frames past an
    item's valid frames are ``pad_value``. :meth:`frames` gives the valid frame counts.
    The buffer ``filterbank`` (n_freqs, n_mels) fp32 is the mel matrix in use.
    """

    def __init__(self, *, backend: str = "auto", waveform_preemphasis: float = 0.0,
                 floor_below_max: float | None = None, drop_last_frame: bool = False,
                 **kwargs: object):
        super().__init__()
        unknown = sorted(set(kwargs) - set(_CONFIG_NAMES))
        if unknown:
            raise TypeError(f"LogMel got unknown arguments {unknown}; it takes "
                            f"{sorted(_CONFIG_NAMES)} and backend, waveform_preemphasis, "
                            "floor_below_max, drop_last_frame")
        self.config = LogMelConfig(**kwargs)
        _checks.check_choice("backend", backend, ("auto", "triton", "cpp", "reference"))
        self.backend = backend
        self.waveform_preemphasis = _checks.check_number(
            "waveform_preemphasis", waveform_preemphasis, low=0.0, high=1.0)
        if floor_below_max is not None:
            floor_below_max = _checks.check_number("floor_below_max", floor_below_max, low=0.0,
                                                   high=float("inf"), low_open=True)
            if self.config.log is None:
                raise ValueError("floor_below_max needs a log (log is None)")
        self.floor_below_max = floor_below_max
        if not isinstance(drop_last_frame, bool):
            raise TypeError(f"drop_last_frame must be a bool, got "
                            f"{type(drop_last_frame).__name__}")
        self.drop_last_frame = drop_last_frame
        config = self.config
        self.register_buffer("filterbank", mel_filterbank(
            config.n_freqs, f_min=config.f_min, f_max=config.f_max, n_mels=config.n_mels,
            sample_rate=config.sample_rate, norm=config.norm, mel_scale=config.mel_scale,
            n_fft=config.n_fft, dtype=torch.float32), persistent=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> LogMel:
        """A frontend set up as recipe ``name`` (see the module doc), with ``overrides``."""
        _checks.check_choice("preset", name, tuple(PRESETS))
        settings = copy.deepcopy(PRESETS[name])
        settings.update(overrides)
        return cls(**settings)

    def frames(self, lengths: torch.Tensor | int) -> torch.Tensor:
        """Valid output frames for items of ``lengths`` samples (int64)."""
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        if self.waveform_preemphasis:
            lengths = lengths - 1
        return (self.config.frames(lengths) - int(self.drop_last_frame)).clamp(min=0)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> torch.Tensor:
        if self.waveform_preemphasis:
            if not isinstance(waveform, torch.Tensor) or waveform.shape[-1] < 2:
                raise ValueError("waveform_preemphasis needs waveforms of at least 2 samples")
            waveform = waveform[..., 1:] - self.waveform_preemphasis * waveform[..., :-1]
            if lengths is not None:
                lengths = torch.as_tensor(lengths) - 1
        features = _log_mel(waveform, self.config, lengths, self.backend, self.drop_last_frame)
        if self.floor_below_max is None:
            return features
        return self._floor_below_max(features, lengths)

    def _floor_below_max(self, features: torch.Tensor, lengths: torch.Tensor | None
                         ) -> torch.Tensor:
        """``max(y, peak - floor_below_max/divisor)`` per item over its valid frames, in place
        on the fresh output (two light passes: a max over mels, then the clamp); out of place
        when gradients are recorded, so the floor is differentiable like Whisper's formula."""
        batched = features if features.dim() == 3 else features.unsqueeze(0)
        frame_peaks = batched.amax(dim=1)  # (B, frames)
        valid = None
        if lengths is not None:
            counts = self.config.frames(torch.as_tensor(lengths, device=batched.device))
            counts = counts - int(self.drop_last_frame)
            frames = torch.arange(batched.shape[-1], device=batched.device)
            valid = frames[None, :] < counts[:, None]
            frame_peaks = frame_peaks.masked_fill(~valid, -torch.inf)
        floor = frame_peaks.amax(dim=1) - self.floor_below_max / self.config.divisor
        if torch.is_grad_enabled() and batched.requires_grad:
            out = torch.maximum(batched, floor[:, None, None])
            if valid is not None:
                out = torch.where(valid[:, None, :], out, self.config.pad_value)
            return out if features.dim() == 3 else out[0]
        batched.clamp_(min=floor[:, None, None])
        if valid is not None:
            batched.masked_fill_(~valid[:, None, :], self.config.pad_value)
        return features

    def extra_repr(self) -> str:
        config = self.config
        return (f"sample_rate={config.sample_rate}, n_fft={config.n_fft}, "
                f"win_length={config.win_length}, hop_length={config.hop_length}, "
                f"n_mels={config.n_mels}, mel_scale={config.mel_scale!r}, norm={config.norm!r}, "
                f"log={config.log!r}, backend={self.backend!r}")
