"""kdcore: compiled-kernel accelerated knowledge distillation for audio models."""

from kdcore._backends import BACKENDS, BackendUnavailableError
from kdcore.losses import FeatureLoss, KDBCELoss, KDLoss
from kdcore.ops import feature_loss, kd_bce_loss, kd_loss

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FeatureLoss",
    "KDBCELoss",
    "KDLoss",
    "feature_loss",
    "kd_bce_loss",
    "kd_loss",
]
