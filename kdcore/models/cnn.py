"""Convolutional classifiers on log-mel input: a VGG-style teacher and a depthwise-separable
student."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.models.base import AudioClassifier, check_log_mel


def _check_size(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_dropout(dropout: object) -> float:
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _mean_max_over_time(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, C): mean over frequency, then mean + max over time."""
    over_frequency = maps.mean(dim=2)
    return over_frequency.mean(dim=-1) + over_frequency.amax(dim=-1)


class _ConvBlock(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers, then 2x2 average pooling when ``pool``."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        layers: list[nn.Module] = []
        for cin in (in_channels, out_channels):
            layers += [nn.Conv2d(cin, out_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.AvgPool2d(2, ceil_mode=True))
        super().__init__(*layers)


class TeacherCNN(AudioClassifier):
    """VGG-style CNN: per-mel-bin input BatchNorm, four double-conv blocks with channels
    ``width * (1, 2, 4, 8)`` and 2x2 pooling, mean over frequency, mean+max over time, dropout,
    linear. Parameters ~ 1150 * width^2: width 30 gives ~1M, 64 ~4.7M, 260 ~78M.

    Input log-mel (B, n_mels, frames) float; output logits (B, num_classes). Stages for feature
    distillation: ``blocks.0`` .. ``blocks.3`` (B, C, F', T')."""

    model_name = "teacher_cnn"

    def __init__(self, num_classes: int, *, n_mels: int = 64, width: int = 32,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = _check_size("num_classes", num_classes, 2)
        self.n_mels = _check_size("n_mels", n_mels, 8)
        _check_size("width", width, 1)
        self._config = {"n_mels": n_mels, "width": width, "dropout": dropout}
        channels = [width, 2 * width, 4 * width, 8 * width]
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.blocks = nn.ModuleList(
            _ConvBlock(cin, cout, pool=i < 3)
            for i, (cin, cout) in enumerate(zip([1] + channels[:-1], channels, strict=True)))
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_log_mel("features", features, self.n_mels)
        x = self.input_norm(features).unsqueeze(1)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.dropout(_mean_max_over_time(x)))


class _SeparableBlock(nn.Sequential):
    """Depthwise 3x3 conv (stride ``stride``) - BN - ReLU - pointwise 1x1 - BN - ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1,
                      groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


POOLINGS = ("mean", "meanmax")


class StudentDSCNN(AudioClassifier):
    """Depthwise-separable CNN (KWS-style): input BatchNorm, 3x3 stride-2 stem to ``width``
    channels, separable blocks to ``width * (1, 2, 4)`` channels (stride 2 at each widening)
    plus ``extra_blocks`` more at ``4 * width``, pooling, linear. ``pooling="mean"`` averages
    over frequency and time; ``"meanmax"`` averages over frequency, then adds the mean and the
    max over time, as :class:`TeacherCNN` does (no parameters either way).
    Parameters ~ 31 * width^2 (extra_blocks=1): width 24 gives ~21k, 64 ~130k, 176 ~0.87M.

    Input log-mel (B, n_mels, frames) float; output logits (B, num_classes). Stages for feature
    distillation: ``blocks.0`` .. ``blocks.N``."""

    model_name = "student_dscnn"

    def __init__(self, num_classes: int, *, n_mels: int = 64, width: int = 24,
                 extra_blocks: int = 1, dropout: float = 0.1, pooling: str = "mean") -> None:
        super().__init__()
        self.num_classes = _check_size("num_classes", num_classes, 2)
        self.n_mels = _check_size("n_mels", n_mels, 8)
        _check_size("width", width, 1)
        _check_size("extra_blocks", extra_blocks, 0)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self._config = {"n_mels": n_mels, "width": width, "extra_blocks": extra_blocks,
                        "dropout": dropout, "pooling": pooling}
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        plan = [(width, width, 1), (width, 2 * width, 2), (2 * width, 4 * width, 2)]
        plan += [(4 * width, 4 * width, 1)] * extra_blocks
        self.blocks = nn.ModuleList(_SeparableBlock(cin, cout, s) for cin, cout, s in plan)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_log_mel("features", features, self.n_mels)
        x = self.stem(self.input_norm(features).unsqueeze(1))
        for block in self.blocks:
            x = block(x)
        pooled = x.mean(dim=(2, 3)) if self.pooling == "mean" else _mean_max_over_time(x)
        return self.classifier(self.dropout(pooled))
