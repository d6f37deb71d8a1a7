"""A small CREPE-style pitch student on CREPE's own normalised frames.

:class:`PitchStudent` takes the frames of :class:`kdcore.teachers.crepe.CrepeFrames` (1024
samples at 16 kHz, each minus its mean and divided by its standard deviation) and returns 360
pitch-bin **logits** (before the sigmoid), the layout of CREPE's output, so it distils from a
CREPE teacher frame by frame (``task="multilabel"`` with :func:`kdcore.kd_bce_loss`).

Architecture, as CREPE's but narrower: six blocks of [Conv1d with Keras-style "same" padding
(the odd extra zero on the right), ReLU, BatchNorm, max-pool 2]; the first convolution has
stride ``stride`` (default 4), the others stride 1. The last block leaves ``1024 / stride / 64``
positions (4 by default), flattened position-major into a Linear layer to ``num_outputs`` bins.
The defaults give 120,600 parameters, under a quarter of crepe-tiny's 486,552.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kdcore.models.base import AudioClassifier, count_macs

FRAME = 1024
BINS = 360

DEFAULT_WIDTHS = (32, 16, 16, 16, 32, 32)
DEFAULT_KERNELS = (512, 16, 32, 32, 32, 16)


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """(left, right) zeros of Keras/TensorFlow "same" padding: output ``ceil(length / stride)``
    positions, total padding ``max((out - 1) * stride + kernel - length, 0)``, the odd one on
    the right."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


class _Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride)
        self.norm = nn.BatchNorm1d(out_channels)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, same_padding(x.shape[-1], self.kernel, self.stride))
        return F.max_pool1d(self.norm(torch.relu(self.conv(x))), 2)


class PitchStudent(AudioClassifier):
    """CREPE frames (N, 1024) or (B, frames, 1024) float -> pitch-bin logits (..., num_outputs).

    Args:
        num_outputs: bins per frame. Default 360 (CREPE's).
        widths: output channels of the six blocks. Default ``(32, 16, 16, 16, 32, 32)``.
        kernels: kernel sizes of the six blocks. Default ``(512, 16, 32, 32, 32, 16)``.
        stride: stride of the first convolution. Default 4; ``1024 / stride`` must be divisible
            by 64 (six halvings).

    ``output_kind = "logits"``: apply a sigmoid for CREPE-style activations."""

    model_name = "pitch_student"
    output_kind = "logits"
    n_mels = 0  # not a log-mel model: the input is raw normalised frames

    def __init__(self, num_outputs: int = BINS, *, widths: Sequence[int] = DEFAULT_WIDTHS,
                 kernels: Sequence[int] = DEFAULT_KERNELS, stride: int = 4) -> None:
        super().__init__()
        widths, kernels = tuple(widths), tuple(kernels)
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs must be an int >= 1, got {num_outputs!r}")
        for name, values in (("widths", widths), ("kernels", kernels)):
            if len(values) != 6 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                       for v in values):
                raise ValueError(f"{name} must be six ints >= 1, got {values!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 \
                or FRAME % stride or (FRAME // stride) % 64:
            raise ValueError(f"stride must be an int with 1024 / stride divisible by 64, "
                             f"got {stride!r}")
        self.num_classes = num_outputs
        self._config = {"widths": list(widths), "kernels": list(kernels), "stride": stride}
        channels = (1, *widths)
        self.blocks = nn.ModuleList(
            _Block(channels[i], channels[i + 1], kernels[i], stride if i == 0 else 1)
            for i in range(6))
        self.positions = FRAME // stride // 64
        self.classifier = nn.Linear(widths[-1] * self.positions, num_outputs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
            raise TypeError("frames must be a floating torch.Tensor (..., 1024)")
        if frames.dim() < 2 or frames.shape[-1] != FRAME:
            raise ValueError(f"frames must have shape (N, {FRAME}) or (B, frames, {FRAME}), "
                             f"got {tuple(frames.shape)}")
        x = frames.reshape(-1, 1, FRAME)
        for block in self.blocks:
            x = block(x)
        logits = self.classifier(x.transpose(1, 2).flatten(1))
        return logits.reshape(*frames.shape[:-1], self.num_classes)

    def macs(self, frames: int = 1, batch_size: int = 1) -> int:
        """MACs of one forward pass on ``batch_size * frames`` frames (convolutions and the
        Linear layer)."""
        reference = next(self.parameters())
        example = torch.zeros(batch_size * frames, FRAME, dtype=reference.dtype,
                              device=reference.device)
        return count_macs(self, example)

    def config(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}


class CrepeLogits(nn.Module):
    """A CREPE model's pre-sigmoid outputs: frames (..., 1024) -> logits (..., 360), the input
    of the output sigmoid, captured by a forward hook on ``crepe.classifier`` (an ``nn.Linear``
    whose output goes through the sigmoid). The distillation teacher for
    ``task="multilabel"``: :func:`kdcore.kd_bce_loss` applies ``sigmoid(teacher / T)``, so at
    T = 1 the targets are exactly CREPE's probabilities, without the precision lost by
    ``logit(sigmoid(z))`` on saturated bins."""

    output_kind = "logits"

    def __init__(self, crepe: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(crepe, "classifier", None), nn.Linear):
            raise TypeError("crepe must be a CREPE model with a Linear 'classifier' layer "
                            "(kdcore.teachers.crepe.Crepe)")
        self.crepe = crepe

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.crepe.classifier.register_forward_hook(
            lambda _module, _inputs, output: captured.append(output))
        try:
            self.crepe(frames)
        finally:
            handle.remove()
        return captured[0].reshape(*frames.shape[:-1], -1)


class FrameSet(Dataset):
    """Frames (N, 1024) as a map-style dataset of ``{"input": (1024,), "index": int}`` items
    (the ``index`` keys the engine's teacher cache)."""

    def __init__(self, frames: torch.Tensor) -> None:
        if not isinstance(frames, torch.Tensor) or frames.dim() != 2 \
                or frames.shape[-1] != FRAME:
            raise ValueError(f"frames must be a (N, {FRAME}) tensor")
        self.frames = frames

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input": self.frames[index], "index": index}
