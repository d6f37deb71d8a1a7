"""A small pre-norm transformer over log-mel frames."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcore.models.base import AudioClassifier, check_log_mel
from kdcore.models.cnn import _check_dropout, _check_size


def _sinusoids(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed sinusoidal position table (length, dim)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                      * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: dim // 2])
    return table


class _EncoderLayer(nn.Module):
    """Pre-norm multi-head self-attention + GELU MLP (4x)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = (self.qkv(self.norm1(x)).view(batch, tokens, 3, self.heads, dim // self.heads)
                   .permute(2, 0, 3, 1, 4))
        # Explicit matmuls rather than scaled_dot_product_attention: the CPU SDPA kernel is
        # invisible to torch.utils.flop_counter, and token counts here are small.
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        attended = self.dropout(weights) @ v
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim)))
        return x + self.dropout(self.mlp(self.norm2(x)))


class AudioTransformer(AudioClassifier):
    """Input BatchNorm over mel bins, a stride-2 1-D conv embedding frames to ``dim`` tokens,
    sinusoidal positions, ``depth`` pre-norm encoder layers, final LayerNorm, mean over tokens,
    linear. Parameters ~ 12.3 * dim^2 * depth: dim 128, depth 4 gives ~0.8M.

    Input log-mel (B, n_mels, frames) float; output logits (B, num_classes). Stages for feature
    distillation: ``layers.0`` .. ``layers.{depth-1}`` (B, tokens, dim)."""

    model_name = "transformer"

    def __init__(self, num_classes: int, *, n_mels: int = 64, dim: int = 128, depth: int = 4,
                 heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = _check_size("num_classes", num_classes, 2)
        self.n_mels = _check_size("n_mels", n_mels, 8)
        _check_size("dim", dim, 8)
        _check_size("depth", depth, 1)
        _check_size("heads", heads, 1)
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim must be a multiple of 2 * heads, got dim={dim}, heads={heads}")
        self._config = {"n_mels": n_mels, "dim": dim, "depth": depth, "heads": heads,
                        "dropout": dropout}
        dropout = _check_dropout(dropout)
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.embed = nn.Sequential(nn.Conv1d(n_mels, dim, 3, stride=2, padding=1), nn.GELU())
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_log_mel("features", features, self.n_mels)
        x = self.embed(self.input_norm(features)).transpose(1, 2)
        x = x + _sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.norm(x).mean(dim=1))
