"""``nn.Module`` wrappers holding a loss's configuration; see the functions for the maths."""

from __future__ import annotations

import torch
from torch import nn

from kdcore import defaults
from kdcore._backends import BACKENDS
from kdcore.ops import _checks
from kdcore.ops.feature_loss import KINDS as FEATURE_KINDS
from kdcore.ops.feature_loss import REDUCTIONS as FEATURE_REDUCTIONS
from kdcore.ops.feature_loss import feature_loss
from kdcore.ops.kd_bce_loss import REDUCTIONS as KD_BCE_REDUCTIONS
from kdcore.ops.kd_bce_loss import kd_bce_loss
from kdcore.ops.kd_loss import KINDS as KD_KINDS
from kdcore.ops.kd_loss import REDUCTIONS as KD_REDUCTIONS
from kdcore.ops.kd_loss import kd_loss


class KDLoss(nn.Module):
    """Softmax distillation loss, :func:`kdcore.kd_loss`. Defaults: ``temperature`` =
    ``defaults.TEMPERATURE`` (2.0), ``kind="kl"``, ``beta=0.5``, ``alpha`` = ``defaults.ALPHA``
    (0.9; used only when labels are passed), ``reduction="batchmean"``."""

    def __init__(self, *, temperature: float = defaults.TEMPERATURE, kind: str = "kl",
                 beta: float = 0.5, alpha: float = defaults.ALPHA, ignore_index: int = -100,
                 reduction: str = "batchmean",
                 backend: str = "auto") -> None:
        super().__init__()
        self.temperature = _checks.check_temperature(temperature)
        _checks.check_choice("kind", kind, KD_KINDS)
        _checks.check_choice("reduction", reduction, KD_REDUCTIONS)
        _checks.check_choice("backend", backend, BACKENDS)
        self.kind, self.reduction, self.backend = kind, reduction, backend
        self.beta = _checks.check_number("beta", beta, low=0.0, high=1.0)
        self.alpha = _checks.check_number("alpha", alpha, low=0.0, high=1.0)
        self.ignore_index = ignore_index

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, temperature=self.temperature,
                           kind=self.kind, beta=self.beta, labels=labels, alpha=self.alpha,
                           ignore_index=self.ignore_index, mask=mask,
                           reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, kind={self.kind!r}, alpha={self.alpha}, "
                f"reduction={self.reduction!r}, backend={self.backend!r}")


class KDBCELoss(nn.Module):
    """Sigmoid (multi-label) distillation loss, :func:`kdcore.kd_bce_loss`. Defaults:
    ``temperature`` = ``defaults.TEMPERATURE`` (2.0), ``alpha`` = ``defaults.ALPHA`` (0.9; used
    only when labels are passed), ``reduction="mean"``."""

    def __init__(self, *, temperature: float = defaults.TEMPERATURE,
                 alpha: float = defaults.ALPHA, reduction: str = "mean",
                 backend: str = "auto") -> None:
        super().__init__()
        self.temperature = _checks.check_temperature(temperature)
        self.alpha = _checks.check_number("alpha", alpha, low=0.0, high=1.0)
        _checks.check_choice("reduction", reduction, KD_BCE_REDUCTIONS)
        _checks.check_choice("backend", backend, BACKENDS)
        self.reduction, self.backend = reduction, backend

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return kd_bce_loss(student_logits, teacher_logits,
                                   temperature=self.temperature, labels=labels,
                                   alpha=self.alpha, mask=mask, reduction=self.reduction,
                                   backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, "
                f"reduction={self.reduction!r}, backend={self.backend!r}")


class FeatureLoss(nn.Module):
    """Feature-distance loss, :func:`kdcore.feature_loss`. Defaults: ``kind="mse"``,
    ``reduction="mean"``."""

    def __init__(self, *, kind: str = "mse", reduction: str = "mean",
                 backend: str = "auto") -> None:
        super().__init__()
        _checks.check_choice("kind", kind, FEATURE_KINDS)
        _checks.check_choice("reduction", reduction, FEATURE_REDUCTIONS)
        _checks.check_choice("backend", backend, BACKENDS)
        self.kind, self.reduction, self.backend = kind, reduction, backend

    def forward(self, student_feats: torch.Tensor, teacher_feats: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return feature_loss(student_feats, teacher_feats, kind=self.kind, mask=mask,
                                     reduction=self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}, backend={self.backend!r}"
