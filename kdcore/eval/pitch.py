"""Pitch evaluation of CREPE-style models against a reference model (e.g. ``crepe-full``).

Each model maps CREPE frames (1024 samples at 16 kHz, normalised per frame, see
:class:`kdcore.teachers.crepe.CrepeFrames`) to 360 pitch-bin activations. Pitch and confidence
come from :func:`kdcore.eval.metrics.crepe_decode` (activation-weighted mean of the bin cents
over argmax +- 4 bins; confidence = the largest activation), and the scores from
:func:`kdcore.eval.metrics.pitch_metrics`:

- the reference's frame is **voiced** when its confidence is ``>= threshold`` (default 0.5);
  the model's voicing decision is its own confidence ``>= threshold``;
- ``rpa`` / ``rca``: raw pitch / chroma accuracy within ``tolerance_cents`` (50) over the
  reference-voiced frames, whatever the model's voicing decision;
- ``cents_rmse``: RMS cents difference over the reference-voiced frames;
- ``voicing_precision``, ``voicing_recall``, ``voicing_f1``: of the model's decisions.

A "pitch source" is one of: a :class:`kdcore.teachers.TeacherBundle` of a CREPE teacher
(``crepe-full``, ``crepe-tiny``; its model gives probabilities); an ``nn.Module`` taking frames
(N, 1024) and returning (N, 360) logits (or probabilities if its ``output_kind`` attribute is
``"probabilities"``), such as :class:`kdcore.models.PitchStudent`; or a tensor (N, 360) of
activations already computed by :func:`pitch_activations` on the same clips and hop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.eval.metrics import CREPE_BINS, crepe_decode, pitch_metrics

SAMPLE_RATE = 16000
FRAME = 1024

PitchSource = Any  # TeacherBundle | nn.Module | torch.Tensor
Clip = Any  # torch.Tensor | np.ndarray | str | os.PathLike


def _frames_module(hop: int) -> nn.Module:
    from kdcore.teachers.crepe import CrepeFrames

    return CrepeFrames(hop)


def load_clips(clips: Sequence[Clip], *, sample_rate: int = SAMPLE_RATE) -> list[torch.Tensor]:
    """Clips as float32 (T,) tensors at 16 kHz.

    ``clips``: 1-D tensors or arrays at ``sample_rate`` Hz (default 16000), or audio file paths
    (read at their own rate). Anything not at 16 kHz is resampled with
    :class:`kdcore.Resample`."""
    from kdcore.resample import Resample

    if isinstance(clips, (str, os.PathLike, torch.Tensor, np.ndarray)):
        raise TypeError("clips must be a sequence of clips (tensors, arrays or paths)")
    resamplers: dict[int, nn.Module] = {}
    out = []
    for position, clip in enumerate(clips):
        rate = sample_rate
        if isinstance(clip, (str, os.PathLike)):
            import soundfile

            from kdcore.data.audio import read_audio

            rate = int(soundfile.info(str(clip)).samplerate)
            clip = read_audio(clip)
        wave = torch.as_tensor(np.asarray(clip) if not isinstance(clip, torch.Tensor) else clip)
        if wave.dim() != 1 or wave.numel() == 0 or not wave.is_floating_point():
            raise ValueError(f"clips[{position}] must be a non-empty 1-D float waveform, got "
                             f"shape {tuple(wave.shape)} and dtype {wave.dtype}")
        wave = wave.float()
        if rate != SAMPLE_RATE:
            if rate not in resamplers:
                resamplers[rate] = Resample(rate, SAMPLE_RATE)
            wave = resamplers[rate](wave)
        out.append(wave)
    if not out:
        raise ValueError("clips is empty")
    return out


def clip_frames(clips: Sequence[torch.Tensor], hop: int = 160) -> torch.Tensor:
    """Normalised CREPE frames of every clip (16 kHz, (T,) each), concatenated in clip order:
    (sum of ``1 + T // hop``, 1024) float32. ``hop`` in samples, default 160 (10 ms)."""
    frontend = _frames_module(hop)
    return torch.cat([frontend(clip[None])[0] for clip in clips])


def _kind(source: PitchSource) -> tuple[nn.Module, str]:
    from kdcore.teachers import TeacherBundle

    if isinstance(source, TeacherBundle):
        if source.output.size != CREPE_BINS or source.sample_rate != SAMPLE_RATE:
            raise ValueError(f"teacher {source.name!r} is not a CREPE-style pitch model "
                             f"({CREPE_BINS} bins at {SAMPLE_RATE} Hz)")
        return source.model, source.output.kind
    if isinstance(source, nn.Module):
        kind = getattr(source, "output_kind", "logits")
        if kind not in ("logits", "probabilities"):
            raise ValueError(f"output_kind must be 'logits' or 'probabilities', got {kind!r}")
        return source, kind
    raise TypeError(f"a pitch model must be a TeacherBundle, an nn.Module or a tensor of "
                    f"activations, got {type(source).__name__}")


def frame_activations(source: PitchSource, frames: torch.Tensor, *,
                      batch_size: int = 256) -> torch.Tensor:
    """Activations in [0, 1] (N, 360) float32 of ``source`` (a bundle or module, see the module
    docstring) on frames (N, 1024), in batches of ``batch_size`` (default 256), eval mode, no
    gradients. Logits go through a sigmoid."""
    model, kind = _kind(source)
    if frames.dim() != 2 or frames.shape[-1] != FRAME:
        raise ValueError(f"frames must be (N, {FRAME}), got {tuple(frames.shape)}")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, frames.shape[0], batch_size):
                out = model(frames[start:start + batch_size].to(device)).float()
                if kind == "logits":
                    out = torch.sigmoid(out)
                outputs.append(out.cpu())
    finally:
        model.train(training)
    result = torch.cat(outputs) if outputs else torch.empty(0, CREPE_BINS)
    if result.shape != (frames.shape[0], CREPE_BINS):
        raise ValueError(f"the pitch model must return ({frames.shape[0]}, {CREPE_BINS}) "
                         f"outputs, got {tuple(result.shape)}")
    return result


def pitch_activations(source: PitchSource, clips: Sequence[Clip], *,
                      sample_rate: int = SAMPLE_RATE, hop: int = 160,
                      batch_size: int = 256) -> torch.Tensor:
    """Activations (N, 360) of ``source`` on the frames of ``clips`` (see :func:`load_clips`),
    every ``hop`` samples at 16 kHz (default 160), concatenated in clip order."""
    return frame_activations(source, clip_frames(load_clips(clips, sample_rate=sample_rate),
                                                 hop), batch_size=batch_size)


def score_activations(activations: torch.Tensor, reference: torch.Tensor, *,
                      threshold: float = 0.5, tolerance_cents: float = 50.0) -> dict[str, float]:
    """Pitch scores of ``activations`` against ``reference``, both (..., 360) in [0, 1] on the
    same frames.

    Returns ``rpa``, ``rca``, ``cents_rmse``, ``voicing_precision``, ``voicing_recall``,
    ``voicing_f1`` (see the module docstring), plus ``frames``, ``reference_voiced_frames``
    and ``threshold``. ``threshold`` (default 0.5) is the confidence at which a frame counts
    as voiced, for the reference and for the model; ``tolerance_cents`` default 50."""
    for name, value in (("activations", activations), ("reference", reference)):
        if not isinstance(value, torch.Tensor) or value.shape[-1:] != (CREPE_BINS,):
            raise ValueError(f"{name} must be a (..., {CREPE_BINS}) tensor")
    if activations.shape != reference.shape:
        raise ValueError(f"activations and reference must have the same shape, got "
                         f"{tuple(activations.shape)} and {tuple(reference.shape)}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    ref_hz, ref_conf = crepe_decode(reference)
    est_hz, est_conf = crepe_decode(activations)
    ref_voiced = (ref_conf >= threshold).numpy()
    est_voiced = (est_conf >= threshold).numpy()
    scores = pitch_metrics(ref_hz.numpy(), est_hz.numpy(), ref_voiced=ref_voiced,
                           est_voiced=est_voiced, tolerance_cents=tolerance_cents)
    scores.update(frames=int(ref_voiced.size), reference_voiced_frames=int(ref_voiced.sum()),
                  threshold=float(threshold))
    return scores


def evaluate_pitch(model: PitchSource, reference: PitchSource, clips: Sequence[Clip], *,
                   sample_rate: int = SAMPLE_RATE, hop: int = 160, threshold: float = 0.5,
                   tolerance_cents: float = 50.0, batch_size: int = 256) -> dict[str, float]:
    """Score ``model`` against ``reference`` (pitch sources, see the module docstring) on the
    frames of ``clips`` every ``hop`` samples (default 160 = 10 ms at 16 kHz).

    ``clips``: waveforms (T,) at ``sample_rate`` (default 16000; resampled to 16 kHz with
    :class:`kdcore.Resample`) or audio paths. A tensor source must hold the activations of
    exactly these frames. Returns :func:`score_activations`'s dict plus ``hop``.
    ``kdcore eval --against crepe-full`` calls this with the loaded bundles."""
    frames = None

    def activations(source: PitchSource) -> torch.Tensor:
        nonlocal frames
        if isinstance(source, torch.Tensor):
            return source
        if frames is None:
            frames = clip_frames(load_clips(clips, sample_rate=sample_rate), hop)
        return frame_activations(source, frames, batch_size=batch_size)

    scores = score_activations(activations(model), activations(reference), threshold=threshold,
                               tolerance_cents=tolerance_cents)
    scores["hop"] = hop
    return scores
