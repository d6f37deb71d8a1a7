"""Small frame-level students suggested by the teacher registry.

:class:`FrameStudent` maps log-mel features (B, n_mels, frames) to per-frame logits
(B, frames, num_outputs): a pointwise stem, ``depth`` depthwise-separable 1-D convolution
blocks (kernel ``kernel``, same padding, BatchNorm, ReLU, residual) and a pointwise head. Its
receptive field is ``1 + depth * (kernel - 1)`` frames, centred.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdcore import defaults
from kdcore.models.base import check_log_mel, count_parameters


class _SeparableBlock(nn.Module):
    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2,
                                   groups=channels, bias=False)
        self.pointwise = nn.Conv1d(channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.pointwise(self.depthwise(x))))


class FrameStudent(nn.Module):
    """Log-mel (B, n_mels, frames) float -> logits (B, frames, num_outputs).

    Args: ``num_outputs`` (bins or classes per frame), ``n_mels`` (default 64), ``width``
    (channels, default 64), ``depth`` (blocks, default 4), ``kernel`` (odd, default 5)."""

    model_name = "frame_student"

    def __init__(self, num_outputs: int, *, n_mels: int = defaults.N_MELS, width: int = 64,
                 depth: int = 4, kernel: int = 5) -> None:
        super().__init__()
        for name, value, low in (("num_outputs", num_outputs, 1), ("n_mels", n_mels, 1),
                                 ("width", width, 1), ("depth", depth, 0), ("kernel", kernel, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.num_outputs, self.n_mels = num_outputs, n_mels
        self._config = {"n_mels": n_mels, "width": width, "depth": depth, "kernel": kernel}
        self.stem = nn.Sequential(nn.Conv1d(n_mels, width, 1, bias=False),
                                  nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[_SeparableBlock(width, kernel) for _ in range(depth)])
        self.head = nn.Conv1d(width, num_outputs, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_log_mel("features", features, self.n_mels)
        return self.head(self.blocks(self.stem(features))).transpose(1, 2)

    def num_parameters(self) -> int:
        return count_parameters(self)

    def config(self) -> dict[str, Any]:
        return dict(self._config)
