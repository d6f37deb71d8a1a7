"""An ensemble of trained classifiers used as one teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdcore.models.base import AudioClassifier


class TeacherEnsemble(AudioClassifier):
    """Mean of the members' logits: ``logits = (1/M) sum_m member_m(features)``, (B, C).

    Every member maps log-mel (B, n_mels, frames) to (B, num_classes) with the same ``n_mels``
    and ``num_classes``. Averaging logits keeps temperature scaling linear: the KD target at
    temperature T is ``softmax(mean_m z_m / T)``. ``num_parameters`` and ``macs`` count all
    members. Not built by :func:`kdcore.models.create` (it holds trained models)."""

    model_name = "teacher_ensemble"

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members must hold at least one model")
        shapes = {(getattr(m, "n_mels", None), getattr(m, "num_classes", None))
                  for m in members}
        if len(shapes) != 1 or None in next(iter(shapes)):
            raise ValueError("members must all report the same n_mels and num_classes, got "
                             f"{sorted(shapes, key=str)}")
        self.n_mels, self.num_classes = next(iter(shapes))
        self.members = nn.ModuleList(members)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(features) for member in self.members]).mean(dim=0)

    def config(self) -> dict:
        raise NotImplementedError("a TeacherEnsemble is rebuilt from its members' "
                                  "checkpoints, not from a config")
