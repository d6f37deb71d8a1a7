"""The launchers of kdcore's Triton kernels, in one module (``kdcore.kernels.launchers``).

``kernels/`` has no ``__init__.py`` on purpose: installed, it is the namespace subpackage
``kdcore.kernels``; from a checkout whose root is on ``sys.path`` it is at most a namespace
portion named ``kernels``, which any installed ``kernels`` package (a regular package) wins over.
So it never shadows the PyPI package ``kernels`` that transformers imports.

Imported lazily by :mod:`kdcore._backends`; set ``TRITON_INTERPRET=1`` before the first import
to run the kernels on CPU tensors through Triton's interpreter.

Launchers (each computes the loss and the gradients of the reduced loss in one fused pass):

- :func:`kd_loss_forward`: softmax KD (kl / reverse_kl / jsd) plus hard-label CE, per row.
- :func:`kd_bce_loss_forward`: sigmoid KD plus multi-hot BCE, per element.
- :func:`feature_loss_forward`: mse / l1 per element, cosine per row.
- :func:`log_mel_forward`: waveform to log-mel (DFT and mel as two ``tl.dot``), one write.
- :func:`scale_grad_`: in-place ``grad *= grad_output`` for the backward pass.
"""

from ._common import INTERPRET
from .feature_loss import feature_loss_forward
from .kd_bce_loss import kd_bce_loss_forward
from .kd_loss import kd_loss_forward
from .log_mel import log_mel_forward, log_mel_split_tables, log_mel_tables
from .scale_grad import scale_grad_

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
