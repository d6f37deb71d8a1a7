"""Wrap a local HuggingFace audio-classification model directory as a log-mel classifier
(``pip install kdcore[hf]``). Nothing is downloaded: loading uses ``local_files_only``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from kdcore.models.base import AudioClassifier, check_log_mel


class HFAudioClassifier(AudioClassifier):
    """A local ``AutoModelForAudioClassification`` whose input is log-mel features.

    Spectrogram models are supported: AST-style (``input_values`` (B, frames, n_mels)) and
    Whisper-style (``input_features`` (B, n_mels, frames)). Our (B, n_mels, frames) input is
    transposed as needed and zero-padded or cropped to the model's fixed frame count. Models
    that take raw waveforms (wav2vec2, HuBERT) are rejected. The features must follow the
    model's own log-mel recipe; this wrapper does not convert between recipes."""

    model_name = "hf"

    def __init__(self, num_classes: int, *, path: str | os.PathLike,
                 n_mels: int | None = None) -> None:
        """``path``: the model directory; ``n_mels`` (default None: the model's own
        ``num_mel_bins``): the caller's feature size, checked against the model's so that
        ``kdcore train --model hf --n-mels N`` fails with a clear message on a mismatch."""
        super().__init__()
        try:
            from transformers import AutoModelForAudioClassification
        except ImportError:
            raise ImportError("the 'hf' model needs transformers: pip install 'kdcore[hf]'") \
                from None
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise ValueError(f"path must be a local HuggingFace model directory with a "
                             f"config.json, got {str(path)!r}")
        model = AutoModelForAudioClassification.from_pretrained(directory, local_files_only=True)
        config = model.config
        if config.num_labels != num_classes:
            raise ValueError(f"num_classes={num_classes} but the model at {str(path)!r} has "
                             f"{config.num_labels} labels")
        main_input = getattr(model, "main_input_name", "input_values")
        model_mels = getattr(config, "num_mel_bins", None)
        if model_mels is None:
            raise ValueError(f"the model at {str(path)!r} takes raw waveforms "
                             f"({config.model_type}); only spectrogram models are supported")
        if main_input == "input_values":
            self.time_major, self.frames = True, getattr(config, "max_length", None)
        else:
            self.time_major = False
            positions = getattr(config, "max_source_positions", None)
            self.frames = 2 * positions if config.model_type == "whisper" and positions else None
        if n_mels is not None and int(n_mels) != int(model_mels):
            raise ValueError(f"n_mels={n_mels} but the model at {str(path)!r} takes "
                             f"{model_mels} mel bins: use n_mels={model_mels} "
                             f"(--n-mels {model_mels})")
        self.model, self.main_input = model, main_input
        self.num_classes, self.n_mels = num_classes, int(model_mels)
        self._config = {"path": str(directory)}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_log_mel("features", features, self.n_mels)
        if self.frames is not None:
            frames = features.shape[-1]
            features = (features[..., : self.frames] if frames >= self.frames
                        else F.pad(features, (0, self.frames - frames)))
        if self.time_major:
            features = features.transpose(1, 2)
        return self.model(**{self.main_input: features}).logits
