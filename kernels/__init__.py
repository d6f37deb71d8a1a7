"""Triton kernels and their launchers (installed as ``kdcore.kernels``).

Imported lazily by :mod:`kdcore._backends`; set ``TRITON_INTERPRET=1`` before the first import
to run the kernels on CPU tensors through Triton's interpreter.

Launchers (each computes the loss and the gradients of the reduced loss in one fused pass):

- :func:`kd_loss_forward`: softmax KD (kl / reverse_kl / jsd) plus hard-label CE, per row.
- :func:`kd_bce_loss_forward`: sigmoid KD plus multi-hot BCE, per element.
- :func:`feature_loss_forward`: mse / l1 per element, cosine per row.
- :func:`log_mel_forward`: waveform to log-mel (DFT and mel as two ``tl.dot``), one write.
- :func:`scale_grad_`: in-place ``grad *= grad_output`` for the backward pass.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")

from .feature_loss import feature_loss_forward  # noqa: E402
from .kd_bce_loss import kd_bce_loss_forward  # noqa: E402
from .kd_loss import kd_loss_forward  # noqa: E402
from .log_mel import log_mel_forward, log_mel_split_tables, log_mel_tables  # noqa: E402
from .scale_grad import scale_grad_  # noqa: E402

__all__ = [
    "INTERPRET",
    "feature_loss_forward",
    "kd_bce_loss_forward",
    "kd_loss_forward",
    "log_mel_forward",
    "log_mel_split_tables",
    "log_mel_tables",
    "scale_grad_",
]
