"""CTC acoustic models: log-mel frames in, per-frame log-probabilities over blank + tokens out."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.models.base import AudioClassifier, check_log_mel
from kdcore.models.cnn import _check_dropout, _check_size


class CTCConvNet(AudioClassifier):
    """1-D convolutional CTC encoder, optionally followed by a bidirectional GRU.

    Layers: per-mel-bin input BatchNorm; a stem ``Conv1d(n_mels, width, kernel, stride)`` -
    BN - ReLU; ``depth`` residual blocks ``x + ReLU(BN(Conv1d(width, width, kernel)))``; with
    ``gru=True`` one bidirectional GRU of ``width // 2`` units per direction; dropout; a linear
    layer to ``num_classes``; ``log_softmax`` over classes. Convolutions are zero padded by
    ``kernel // 2`` so the frame count only changes by the stem's stride.

    Args:
        num_classes: blank + tokens. Default 11 (blank 0 and the digits 0..9 as 1..10).
        n_mels: input mel bins. Default 40.
        width: channels. Default 64. Parameters ~ ``(depth * kernel + 1) * width^2`` (+
            ``1.5 * width^2`` with the GRU): width 256 and depth 4 give ~1.4M, width 48 ~58k.
        depth: residual blocks. Default 4.
        kernel: odd temporal kernel size. Default 5.
        stride: the stem's temporal stride (output frame rate = input rate / stride).
            Default 2.
        gru: add the bidirectional GRU. Default False.
        dropout: before the classifier. Default 0.1.

    Input log-mel (B, n_mels, T) float; output (B, T', num_classes) log-probabilities with
    ``T' = output_frames(T) = (T - 1) // stride + 1``. Without the GRU, output frame ``t``
    depends only on input frames ``stride*t - r .. stride*t + r`` with
    ``r = receptive_radius()``. Stages for feature distillation: ``stem``, ``blocks.N``.
    """

    model_name = "ctc_conv"

    def __init__(self, num_classes: int = 11, *, n_mels: int = 40, width: int = 64,
                 depth: int = 4, kernel: int = 5, stride: int = 2, gru: bool = False,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = _check_size("num_classes", num_classes, 2)
        self.n_mels = _check_size("n_mels", n_mels, 1)
        _check_size("width", width, 2)
        _check_size("depth", depth, 0)
        _check_size("kernel", kernel, 1)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (centred frames), got {kernel}")
        self.stride = _check_size("stride", stride, 1)
        self.kernel, self.depth = kernel, depth
        if not isinstance(gru, bool):
            raise TypeError(f"gru must be a bool, got {type(gru).__name__}")
        self._config = {"n_mels": n_mels, "width": width, "depth": depth, "kernel": kernel,
                        "stride": stride, "gru": gru, "dropout": dropout}
        pad = kernel // 2
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.stem = nn.Sequential(nn.Conv1d(n_mels, width, kernel, stride, pad, bias=False),
                                  nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(width, width, kernel, padding=pad, bias=False),
                          nn.BatchNorm1d(width), nn.ReLU()) for _ in range(depth))
        self.gru = (nn.GRU(width, width // 2, batch_first=True, bidirectional=True)
                    if gru else None)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.classifier = nn.Linear(2 * (width // 2) if gru else width, num_classes)

    def output_frames(self, frames: torch.Tensor | int) -> torch.Tensor:
        """Output frames for inputs of ``frames`` frames (int64): ``(frames - 1) // stride + 1``
        (0 for 0)."""
        frames = torch.as_tensor(frames, dtype=torch.int64)
        return torch.where(frames > 0, (frames - 1) // self.stride + 1, 0)

    def receptive_radius(self) -> int:
        """Input frames on each side of ``stride * t`` that output frame ``t`` sees (no GRU):
        ``k//2 + depth * stride * (k//2)``."""
        half = self.kernel // 2
        return half + self.depth * self.stride * half

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's raw (B, T', num_classes) scores, before any ``log_softmax``."""
        check_log_mel("features", features, self.n_mels)
        x = self.stem(self.input_norm(features))
        for block in self.blocks:
            x = x + block(x)
        x = x.transpose(1, 2)
        if self.gru is not None:
            x = self.gru(x)[0]
        return self.classifier(self.dropout(x))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.scores(features), dim=-1)


class FrameConvNet(CTCConvNet):
    """Per-frame tagger: the :class:`CTCConvNet` encoder with raw scores out (no
    ``log_softmax``), for ``task="frame"`` (softmax per frame), ``"frame_multilabel"`` (one
    sigmoid per class and frame) and per-frame ``"regression"`` (D values per frame).

    Args as :class:`CTCConvNet` except the defaults ``num_classes`` [2] and ``stride`` [1]:
    with stride 1 there is one output frame per log-mel frame, ``T' = T``.
    Input log-mel (B, n_mels, T) float; output (B, T', num_classes) float scores.
    """

    model_name = "frame_conv"

    def __init__(self, num_classes: int = 2, *, n_mels: int = 40, width: int = 64,
                 depth: int = 4, kernel: int = 5, stride: int = 1, gru: bool = False,
                 dropout: float = 0.1) -> None:
        super().__init__(num_classes, n_mels=n_mels, width=width, depth=depth, kernel=kernel,
                         stride=stride, gru=gru, dropout=dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores(features)
