"""kdcore: compiled-kernel accelerated knowledge distillation for audio models."""

from kdcore._backends import BACKENDS, BackendUnavailableError
from kdcore.engine import Distiller, History
from kdcore.export import export_model
from kdcore.frontend import LogMel
from kdcore.losses import FeatureLoss, KDBCELoss, KDLoss
from kdcore.ops import feature_loss, kd_bce_loss, kd_loss
from kdcore.ops.log_mel import log_mel, mel_filterbank, num_frames
from kdcore.resample import Resample

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "Distiller",
    "FeatureLoss",
    "History",
    "KDBCELoss",
    "KDLoss",
    "LogMel",
    "Resample",
    "export_model",
    "feature_loss",
    "kd_bce_loss",
    "kd_loss",
    "log_mel",
    "mel_filterbank",
    "num_frames",
]
