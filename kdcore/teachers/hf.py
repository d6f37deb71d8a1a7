"""``hf:PATH`` teachers: a local Hugging Face audio-classification directory (AST or Whisper
style) wrapped by :class:`kdcore.models.HFAudioClassifier`, with a frontend that reproduces the
model's own feature extractor from its ``preprocessor_config.json``:

- AST (``ASTFeatureExtractor``): Kaldi-style fbank at 16 kHz (25 ms symmetric-Hann frames
  every 10 ms without centring, DC removal, pre-emphasis 0.97, 512-point FFT, ``num_mel_bins``
  Kaldi mels from 20 Hz to Nyquist, ``ln(max(x, FLT_EPSILON))``), zero-padded or cropped to
  ``max_length`` frames, then ``(x - mean) / (2 std)`` when ``do_normalize``.
- Whisper (``WhisperFeatureExtractor``): the waveform zero-padded or cropped to ``n_samples``
  (30 s), then kdcore's ``"whisper"`` log-mel preset with ``feature_size`` mels.

Output: logits (B, num_labels), one per clip; task ``multiclass``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.frontend import LogMel
from kdcore.teachers import (
    OutputSpec,
    StudentSpec,
    TeacherBundle,
    TeacherSpec,
    fingerprint_files,
)


class ASTFrontend(nn.Module):
    """Waveform (B, T) -> AST input features (B, n_mels, max_length), normalised."""

    def __init__(self, n_mels: int, max_length: int, mean: float, std: float,
                 normalize: bool = True, sample_rate: int = 16000) -> None:
        super().__init__()
        self.fbank = LogMel.from_preset("kaldi", n_mels=n_mels, window="hann_symmetric",
                                        sample_rate=sample_rate, backend="reference")
        self.max_length, self.mean, self.std, self.normalize = max_length, mean, std, normalize

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.fbank(waveform)
        frames = features.shape[-1]
        features = (features[..., : self.max_length] if frames >= self.max_length
                    else F.pad(features, (0, self.max_length - frames)))
        return (features - self.mean) / (2 * self.std) if self.normalize else features


class WhisperFrontend(nn.Module):
    """Waveform (B, T) -> Whisper log-mel (B, n_mels, n_samples // hop)."""

    def __init__(self, n_mels: int, n_samples: int, sample_rate: int = 16000) -> None:
        super().__init__()
        self.melspec = LogMel.from_preset("whisper", n_mels=n_mels, sample_rate=sample_rate,
                                          backend="reference")
        self.n_samples = n_samples

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        samples = waveform.shape[-1]
        waveform = (waveform[..., : self.n_samples] if samples >= self.n_samples
                    else F.pad(waveform, (0, self.n_samples - samples)))
        return self.melspec(waveform)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _frontend(directory: Path, config: dict[str, Any]) -> tuple[nn.Module, int]:
    pre = _read_json(directory / "preprocessor_config.json")
    kind = pre.get("feature_extractor_type", "")
    model_type = config.get("model_type", "")
    rate = int(pre.get("sampling_rate", 16000))
    if kind == "WhisperFeatureExtractor" or (not kind and model_type == "whisper"):
        return WhisperFrontend(int(pre.get("feature_size", config.get("num_mel_bins", 80))),
                               int(pre.get("n_samples", 30 * rate)), rate), rate
    if kind == "ASTFeatureExtractor" or (not kind and
                                         model_type == "audio-spectrogram-transformer"):
        return ASTFrontend(int(pre.get("num_mel_bins", config.get("num_mel_bins", 128))),
                           int(pre.get("max_length", config.get("max_length", 1024))),
                           float(pre.get("mean", -4.2677393)), float(pre.get("std", 4.5689974)),
                           bool(pre.get("do_normalize", True)), rate), rate
    raise ValueError(f"hf teacher at {str(directory)!r}: unsupported feature extractor "
                     f"{kind or model_type!r}; AST and Whisper style directories are supported")


def frontend_for(path: str | Path) -> tuple[nn.Module, int]:
    """The feature frontend of the local model directory ``path`` and its sample rate: waveform
    (B, T) float32 -> the model's input features (B, n_mels, frames), as its own feature
    extractor computes them. ValueError for a directory without config.json or with another
    feature extractor."""
    directory = Path(path)
    config = _read_json(directory / "config.json")
    if not config:
        raise ValueError(f"path must be a local Hugging Face model directory with a "
                         f"config.json, got {str(directory)!r}")
    return _frontend(directory, config)


def bundle(spec: TeacherSpec) -> TeacherBundle:
    """The registry factory for ``hf:PATH`` (``spec.options["path"]``)."""
    from kdcore.models import create
    from kdcore.models.hf import HFAudioClassifier

    directory = Path(spec.options["path"])
    config = _read_json(directory / "config.json")
    if not config:
        raise ValueError(f"hf:PATH must name a local Hugging Face model directory with a "
                         f"config.json, got {str(directory)!r}")
    labels = config.get("id2label") or {}
    num_labels = len(labels) if labels else int(config.get("num_labels", 2))
    frontend, rate = _frontend(directory, config)
    model = HFAudioClassifier(num_labels, path=directory).eval()
    spec = dataclasses.replace(spec, sample_rate=rate)
    ordered = [labels[k] for k in sorted(labels, key=int)] if labels else None
    output = OutputSpec(kind="logits", size=num_labels, hop=None, shape="(B, num_labels)",
                        labels=ordered)
    student = StudentSpec(
        config={"model": "student_dscnn", "num_outputs": num_labels,
                "kwargs": {"n_mels": 64, "width": 24},
                "frontend": {"sample_rate": rate, "n_fft": 512, "win_length": 400,
                             "hop_length": 160, "n_mels": 64, "log": "ln"}},
        build=lambda: create("student_dscnn", num_labels, n_mels=64, width=24))
    weights = sorted(p for p in directory.iterdir()
                     if p.suffix in (".json", ".safetensors", ".bin") and p.is_file())
    return TeacherBundle(
        spec=spec, model=model, frontend=frontend, output=output, student=student,
        num_parameters=sum(p.numel() for p in model.parameters()),
        fingerprint=fingerprint_files(weights, salt=spec.name))
