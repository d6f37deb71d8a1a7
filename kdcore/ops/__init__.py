"""Fused ops: one module per op, each with its reference, dispatch, autograd and checks."""

from kdcore.ops._checks import data_checks
from kdcore.ops.feature_loss import feature_loss, feature_loss_reference
from kdcore.ops.kd_bce_loss import kd_bce_loss, kd_bce_loss_reference
from kdcore.ops.kd_loss import kd_loss, kd_loss_reference

__all__ = [
    "data_checks",
    "feature_loss",
    "feature_loss_reference",
    "kd_bce_loss",
    "kd_bce_loss_reference",
    "kd_loss",
    "kd_loss_reference",
]
