"""``torch.library.opcheck`` with all its checks (schema, autograd registration, fake tensors,
AOT dispatch static and dynamic) for every custom op, scalar reductions included."""

from __future__ import annotations

import importlib

import pytest
import torch

from kdcore.ops._fused import scale_grad_
from tests.loss_helpers import require_backend

# The modules (``kdcore.ops.kd_loss`` is also the name of the function).
kd_module = importlib.import_module("kdcore.ops.kd_loss")
bce_module = importlib.import_module("kdcore.ops.kd_bce_loss")
feature_module = importlib.import_module("kdcore.ops.feature_loss")
log_mel_module = importlib.import_module("kdcore.ops.log_mel")

OPCHECK_BACKENDS = ["cpp", "triton"]


def _pair(rows=5, classes=7, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(rows, classes, generator=generator, dtype=dtype).requires_grad_()
    teacher = torch.randn(rows, classes, generator=generator, dtype=dtype)
    return student, teacher


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("reduction", kd_module.REDUCTIONS)
@pytest.mark.parametrize("kind", kd_module.KINDS)
def test_kd_loss_opcheck(backend, reduction, kind):
    require_backend(backend)
    student, teacher = _pair()
    labels = torch.tensor([0, 3, 6, 1, 2])
    valid = torch.tensor([True, True, False, True, True])
    torch.library.opcheck(kd_module._kd_loss_op, (
        student, teacher, labels, valid, 2.0, kd_module.KINDS.index(kind), 0.5, 0.7,
        kd_module.REDUCTIONS.index(reduction), backend, True, False))


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("reduction", bce_module.REDUCTIONS)
def test_kd_bce_loss_opcheck(backend, reduction):
    require_backend(backend)
    student, teacher = _pair()
    labels = (torch.rand(5, 7, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    valid = torch.tensor([True, False, True, True, True])
    torch.library.opcheck(bce_module._kd_bce_loss_op, (
        student, teacher, labels, valid, 2.0, 0.6, bce_module.REDUCTIONS.index(reduction),
        backend, True, False))


@pytest.mark.parametrize("backend", OPCHECK_BACKENDS)
@pytest.mark.parametrize("reduction", feature_module.REDUCTIONS)
@pytest.mark.parametrize("kind", feature_module.KINDS)
def test_feature_loss_opcheck(backend, reduction, kind):
    require_backend(backend)
    student, teacher = _pair()
    valid = torch.tensor([True, True, True, False, True])
    torch.library.opcheck(feature_module._feature_loss_op, (
        student, teacher, valid, feature_module.KINDS.index(kind),
        feature_module.REDUCTIONS.index(reduction), backend, True, False))


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_log_mel_opcheck(backend):
    if backend != "reference":
        require_backend(backend)
    config = log_mel_module.LogMelConfig(sample_rate=8000, n_fft=64, hop_length=16, n_mels=8)
    waveform = torch.randn(2, 300, generator=torch.Generator().manual_seed(3)).requires_grad_()
    lengths = torch.tensor([300, 200])
    valid_frames = config.frames(lengths)
    window, filterbank = log_mel_module._tables(config.key(), torch.device("cpu"),
                                                torch.float32)
    torch.library.opcheck(log_mel_module._log_mel_op, (
        waveform, lengths, valid_frames, window, filterbank, log_mel_module._pack(config),
        int(config.frames(300)), backend))


@pytest.mark.parametrize("grad_output_shape", [(), (4,), (4, 6)])
def test_scale_grad_opcheck(grad_output_shape):
    require_backend("triton")
    grad = torch.randn(4, 6)
    grad_output = torch.rand(grad_output_shape) + 0.5
    torch.library.opcheck(scale_grad_, (grad, grad_output))
