"""Shared model interface: log-mel input (B, n_mels, frames) -> logits (B, num_classes), with
parameter and multiply-accumulate counts."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def check_log_mel(name: str, features: torch.Tensor, n_mels: int) -> None:
    """Raise when ``features`` is not a float (B, n_mels, frames) tensor."""
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor (B, n_mels, frames)")
    if features.dim() != 3 or features.shape[1] != n_mels:
        raise ValueError(f"{name} must have shape (B, {n_mels}, frames), got "
                         f"{tuple(features.shape)}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``, counted by
    ``torch.utils.flop_counter`` (convolutions, matmuls, attention) as FLOPs / 2. Element-wise
    ops (activations, norms) are not counted."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


class AudioClassifier(nn.Module):
    """Base class: subclasses set ``model_name`` (their :func:`kdcore.models.create` name),
    ``n_mels`` and ``num_classes`` and implement ``forward``
    on log-mel (B, n_mels, frames) float tensors returning logits (B, num_classes)."""

    model_name: str = ""
    n_mels: int
    num_classes: int

    def num_parameters(self, trainable_only: bool = False) -> int:
        return count_parameters(self, trainable_only)

    def macs(self, frames: int = 101, batch_size: int = 1) -> int:
        """MACs of one forward pass on a (batch_size, n_mels, frames) input."""
        reference = next(self.parameters())
        example = torch.zeros(batch_size, self.n_mels, frames, dtype=reference.dtype,
                              device=reference.device)
        return count_macs(self, example)

    def config(self) -> dict:
        """Constructor keyword arguments: ``create(model_name, num_classes, **config())``
        rebuilds the model (for checkpoints)."""
        return dict(self._config)
