"""Batch augmentations that run on the batch's device (no host round trips).

Waveform ops take (B, T) float tensors; :func:`spec_augment` takes log-mel (B, n_mels, frames).
Every op draws from ``generator`` (a ``torch.Generator`` on the batch's device) when given.
For distillation in online mode, run the teacher on the augmented batch the student sees.
:func:`mixup` returns ``lam`` and ``perm`` so that labels and cached teacher targets can be
mixed with the same weights (:func:`mix_targets`), as EfficientAT does.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_batch(name: str, tensor: torch.Tensor, dims: int) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(tensor.shape)}")


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    if len(value) != 2 or not value[0] <= value[1]:
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _uniform(shape: tuple[int, ...], low: float, high: float, like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    draw = torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)
    return (low + (high - low) * draw).to(like.dtype)


def random_gain(waveforms: torch.Tensor, db_range: tuple[float, float] = (-6.0, 6.0),
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each row of (B, T) by ``10^(g/20)``, ``g ~ U(db_range)`` dB."""
    _check_batch("waveforms", waveforms, 2)
    low, high = _check_range("db_range", db_range)
    gain_db = _uniform((waveforms.shape[0], 1), low, high, waveforms, generator)
    return waveforms * torch.pow(10.0, gain_db / 20.0)


def random_shift(waveforms: torch.Tensor, max_shift: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each row of (B, T) by an integer ``s ~ U{-max_shift..max_shift}`` samples
    (positive = later), zero-filling the vacated samples."""
    _check_batch("waveforms", waveforms, 2)
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
    batch, length = waveforms.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (batch, 1), generator=generator,
                           device=waveforms.device)
    source = torch.arange(length, device=waveforms.device)[None, :] - shifts
    valid = (source >= 0) & (source < length)
    gathered = waveforms.gather(1, source.clamp(0, length - 1))
    return torch.where(valid, gathered, torch.zeros((), dtype=waveforms.dtype,
                                                    device=waveforms.device))


def add_noise(waveforms: torch.Tensor, snr_db: tuple[float, float] = (10.0, 40.0),
              lengths: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Add white Gaussian noise to each row of (B, T) at ``snr ~ U(snr_db)`` dB relative to
    the row's mean power over its first ``lengths[b]`` samples (all when None); padding stays
    zero."""
    _check_batch("waveforms", waveforms, 2)
    low, high = _check_range("snr_db", snr_db)
    batch, length = waveforms.shape
    if lengths is None:
        valid = torch.ones_like(waveforms, dtype=torch.bool)
    else:
        valid = torch.arange(length, device=waveforms.device)[None, :] < lengths[:, None]
    count = valid.sum(dim=1, keepdim=True).clamp_min(1)
    power = (waveforms.square() * valid).sum(dim=1, keepdim=True) / count
    snr = _uniform((batch, 1), low, high, waveforms, generator)
    scale = torch.sqrt(power / torch.pow(10.0, snr / 10.0))
    noise = torch.randn(waveforms.shape, generator=generator, device=waveforms.device,
                        dtype=waveforms.dtype)
    return waveforms + noise * scale * valid


def mixup(inputs: torch.Tensor, alpha: float = 0.3, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each row with a random partner: ``x'[b] = lam[b]*x[b] + (1-lam[b])*x[perm[b]]``,
    ``lam ~ Beta(alpha, alpha)`` per row, folded to ``max(lam, 1-lam)`` so row ``b`` stays the
    dominant source. Works on any (B, ...) tensor. Returns ``(mixed, lam (B,) float32,
    perm (B,) int64)``; mix targets with :func:`mix_targets`."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError("inputs must be a floating torch.Tensor")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    batch = inputs.shape[0]
    if generator is None:
        concentration = torch.full((batch,), float(alpha), device=inputs.device)
        lam = torch.distributions.Beta(concentration, concentration,
                                        validate_args=False).sample()  # no host sync
    else:
        # Beta(a, a) = X / (X + Y) with X, Y ~ Gamma(a), drawn by inverse CDF from the
        # generator (torch's gamma sampler takes no generator).
        uniforms = torch.rand(2, batch, generator=generator, device=inputs.device)
        draws = _gamma_from_uniform(float(alpha), uniforms)
        lam = draws[0] / (draws[0] + draws[1]).clamp_min(1e-12)
    lam = torch.maximum(lam, 1.0 - lam).float()
    perm = torch.randperm(batch, generator=generator, device=inputs.device)
    weight = lam.to(inputs.dtype).view(batch, *([1] * (inputs.dim() - 1)))
    return weight * inputs + (1.0 - weight) * inputs[perm], lam, perm


def _gamma_from_uniform(alpha: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Gamma(alpha, 1) quantiles of ``uniforms`` by bisection on the regularised incomplete
    gamma function (64 steps; exact to float32)."""
    low = torch.zeros_like(uniforms, dtype=torch.float64)
    high = torch.full_like(low, max(50.0, 20.0 * alpha))
    shape = torch.tensor(alpha, dtype=torch.float64, device=uniforms.device)
    target = uniforms.double().clamp(1e-12, 1 - 1e-12)
    for _ in range(64):
        middle = 0.5 * (low + high)
        below = torch.special.gammainc(shape, middle) < target
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    return (0.5 * (low + high)).float()


def mix_targets(targets: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Mix per-row targets (B, ...) like :func:`mixup` mixed the inputs:
    ``lam[b]*t[b] + (1-lam[b])*t[perm[b]]``. Pass probabilities (one-hot labels, teacher
    softmax at the KD temperature), not logits: mixing logits is not mixing distributions."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
        raise TypeError("targets must be a floating torch.Tensor (probabilities)")
    if lam.shape != (targets.shape[0],) or perm.shape != (targets.shape[0],):
        raise ValueError(f"lam and perm must have shape ({targets.shape[0]},), got "
                         f"{tuple(lam.shape)} and {tuple(perm.shape)}")
    weight = lam.to(targets.dtype).view(-1, *([1] * (targets.dim() - 1)))
    return weight * targets + (1.0 - weight) * targets[perm]


def spec_augment(features: torch.Tensor, *, freq_masks: int = 2, freq_width: int = 8,
                 time_masks: int = 2, time_width: int = 10,
                 lengths: torch.Tensor | None = None, fill: str = "mean",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SpecAugment masking on log-mel (B, n_mels, frames): ``freq_masks`` bands of width
    ``U{0..freq_width}`` mel bins and ``time_masks`` spans of ``U{0..time_width}`` frames per
    row, placed uniformly (time spans within the first ``lengths[b]`` frames when given).
    Masked cells become the row's mean (``fill="mean"``) or 0 (``fill="zero"``)."""
    _check_batch("features", features, 3)
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
    for name, value in (("freq_masks", freq_masks), ("freq_width", freq_width),
                        ("time_masks", time_masks), ("time_width", time_width)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    batch, n_mels, frames = features.shape
    device = features.device
    if lengths is None:
        valid_frames = torch.full((batch,), frames, device=device)
    else:
        valid_frames = lengths.to(device).clamp(1, frames)
    mask = torch.zeros(batch, n_mels, frames, dtype=torch.bool, device=device)
    mel_axis = torch.arange(n_mels, device=device).view(1, n_mels, 1)
    time_axis = torch.arange(frames, device=device).view(1, 1, frames)

    def spans(count: int, width: int, extent: torch.Tensor) -> torch.Tensor:
        size = torch.randint(0, width + 1, (count, batch), generator=generator, device=device)
        size = torch.minimum(size, extent)
        start = (torch.rand(count, batch, generator=generator, device=device)
                 * (extent - size + 1)).floor().long()
        return torch.stack([start, start + size])

    for start, end in spans(freq_masks, freq_width,
                            torch.full((batch,), n_mels, device=device)).unbind(1):
        mask |= (mel_axis >= start.view(-1, 1, 1)) & (mel_axis < end.view(-1, 1, 1))
    for start, end in spans(time_masks, time_width, valid_frames).unbind(1):
        mask |= (time_axis >= start.view(-1, 1, 1)) & (time_axis < end.view(-1, 1, 1))
    if fill == "zero":
        value = torch.zeros((), dtype=features.dtype, device=device)
    else:
        value = features.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask, value, features)


class WaveAugment(nn.Module):
    """Gain, shift and noise on waveforms (B, T) as a module, active only in training mode,
    so it can sit in front of the log-mel frontend (``nn.Sequential(WaveAugment(), LogMel())``)
    and teacher and student see the same view. ``None``/0 switches an op off."""

    def __init__(self, *, gain_db: tuple[float, float] | None = (-6.0, 6.0),
                 max_shift: int = 0, noise_snr_db: tuple[float, float] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.gain_db = None if gain_db is None else _check_range("gain_db", gain_db)
        if not isinstance(max_shift, int) or max_shift < 0:
            raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
        self.max_shift = max_shift
        self.noise_snr_db = (None if noise_snr_db is None
                             else _check_range("noise_snr_db", noise_snr_db))
        self.generator = generator

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return waveforms
        if self.gain_db is not None:
            waveforms = random_gain(waveforms, self.gain_db, self.generator)
        if self.max_shift > 0:
            waveforms = random_shift(waveforms, self.max_shift, self.generator)
        if self.noise_snr_db is not None:
            waveforms = add_noise(waveforms, self.noise_snr_db, generator=self.generator)
        return waveforms


class SpecAugment(nn.Module):
    """:func:`spec_augment` on log-mel (B, n_mels, frames) as a module, active only in
    training mode (place it after the frontend)."""

    def __init__(self, *, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2,
                 time_width: int = 10, fill: str = "mean",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.options = {"freq_masks": freq_masks, "freq_width": freq_width,
                        "time_masks": time_masks, "time_width": time_width, "fill": fill}
        spec_augment(torch.zeros(1, max(freq_width, 1), max(time_width, 1)), **self.options)
        self.generator = generator

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        return spec_augment(features, generator=self.generator, **self.options)
