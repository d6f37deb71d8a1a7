"""kd_bce_loss: every backend against the independent float64 reference in ``ref64``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdcore
from tests.loss_helpers import (
    BACKENDS,
    TOLERANCES,
    assert_close,
    assert_grad_close,
    reduce_reference,
    require_backend,
    to64,
)
from tests.ref64 import kd_bce_loss64


def _logits(shape, dtype, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()


def check_bce(backend, student, teacher, *, reduction="mean", grad_output=None, **options):
    # The old op defaults, explicitly (the ops now default to kdcore.defaults).
    options.setdefault("temperature", 1.0)
    options.setdefault("alpha", 1.0)
    dtype = student.dtype
    classes = student.shape[-1]
    loss = kdcore.kd_bce_loss(student, teacher, reduction=reduction, backend=backend, **options)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if grad_output is None:
        grad_output = torch.ones_like(loss) if reduction == "none" else torch.tensor(1.0)
    loss.backward(grad_output.to(loss.dtype))
    labels, mask = options.get("labels"), options.get("mask")
    values, grad_s, grad_t, valid = kd_bce_loss64(
        to64(student).reshape(-1, classes), to64(teacher).reshape(-1, classes),
        temperature=options.get("temperature", 1.0), alpha=options.get("alpha", 1.0),
        labels=None if labels is None else to64(labels).reshape(-1, classes),
        mask=None if mask is None else mask.reshape(-1).numpy())
    go = to64(grad_output).reshape(-1, classes) if reduction == "none" else float(grad_output)
    expected, (exp_gs, exp_gt) = reduce_reference(values, [grad_s, grad_t], valid, reduction,
                                                  float(valid.sum()) * classes, go)
    rtol, atol, _, _ = TOLERANCES[dtype]
    if reduction == "none":
        expected = expected.reshape(student.shape)
    assert_close("loss", loss, expected, rtol, atol * max(1.0, np.abs(expected).max()))
    assert_grad_close("student grad", student.grad, exp_gs.reshape(student.shape), dtype)
    if teacher.requires_grad:
        assert_grad_close("teacher grad", teacher.grad, exp_gt.reshape(teacher.shape), dtype)
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (41, 527), (2, 5, 1271)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_parity_fp32(backend, shape, temperature):
    require_backend(backend)
    check_bce(backend, _logits(shape, torch.float32), _logits(shape, torch.float32),
              temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_parity_half_dtypes(backend, dtype):
    require_backend(backend)
    check_bce(backend, _logits((33, 527), dtype), _logits((33, 527), dtype), temperature=2.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_labels_masks_grad_output(backend, reduction):
    require_backend(backend)
    shape = (4, 9, 67)
    student, teacher = _logits(shape, torch.float32), _logits(shape, torch.float32)
    labels = (torch.rand(shape) > 0.8).float()
    labels[0, 0, :5] = 0.35  # soft targets are allowed too
    mask = torch.rand(shape[:-1]) > 0.25
    with torch.no_grad():
        student[~mask] = float("nan")
    go = torch.randn(shape) if reduction == "none" else torch.tensor(0.61)
    loss = check_bce(backend, student, teacher, reduction=reduction, grad_output=go,
                     temperature=2.0, labels=labels, alpha=0.4, mask=mask)
    if reduction == "none":
        assert (loss[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_and_huge_logits(backend):
    """-inf in both (zero weight kills the infinite term), and logits of magnitude 1e4."""
    require_backend(backend)
    student, teacher = _logits((6, 40), torch.float32), _logits((6, 40), torch.float32)
    with torch.no_grad():
        teacher[:, ::4] = -math.inf
        student[:, ::4] = -math.inf
        teacher[:, 1::4] = math.inf
        student[:, 1::4] = math.inf
        student[:, 2::4] *= 3e3
        teacher[:, 2::4] *= 3e3
    check_bce(backend, student, teacher, temperature=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_row_masked(backend):
    require_backend(backend)
    student, teacher = _logits((3, 5), torch.float32), _logits((3, 5), torch.float32)
    loss = kdcore.kd_bce_loss(student, teacher, mask=torch.zeros(3, dtype=torch.bool),
                              backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and (student.grad == 0).all()


def test_matches_torch_bce_with_logits():
    student, teacher = torch.randn(8, 30, dtype=torch.float64), torch.randn(8, 30,
                                                                          dtype=torch.float64)
    expected = 4 * torch.nn.functional.binary_cross_entropy_with_logits(
        student / 2, torch.sigmoid(teacher / 2))
    for backend in ("reference", "cpp"):
        require_backend(backend)
        got = kdcore.kd_bce_loss(student, teacher, temperature=2.0, backend=backend)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck_float64(backend):
    require_backend(backend)
    student = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    labels = (torch.rand(3, 4, 5) > 0.5).double()
    mask = torch.rand(3, 4) > 0.3
    for reduction in ("mean", "none"):
        def loss_fn(s, t, reduction=reduction):
            return kdcore.kd_bce_loss(s, t, temperature=1.5, labels=labels, alpha=0.3,
                                      mask=mask, reduction=reduction, backend=backend)
        assert torch.autograd.gradcheck(loss_fn, (student, teacher))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 7), classes=st.integers(1, 200), temperature=st.floats(0.25, 8.0),
       alpha=st.floats(0.0, 1.0), use_labels=st.booleans(), use_mask=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_fuzz_cpp(rows, classes, temperature, alpha, use_labels, use_mask, reduction, seed):
    require_backend("cpp")
    generator = torch.Generator().manual_seed(seed)
    student = (torch.randn(rows, classes, generator=generator) * 4).requires_grad_()
    teacher = (torch.randn(rows, classes, generator=generator) * 4).requires_grad_()
    labels = (torch.rand(rows, classes, generator=generator) > 0.7).float() if use_labels else None
    mask = (torch.rand(rows, generator=generator) > 0.3) if use_mask else None
    go = torch.randn(rows, classes, generator=generator) if reduction == "none" else None
    check_bce("cpp", student, teacher, reduction=reduction, grad_output=go,
              temperature=temperature, alpha=alpha, labels=labels, mask=mask)


def test_errors_name_the_argument():
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    cases = [
        (dict(labels=torch.ones(4, 6)), ValueError, "labels"),
        (dict(labels=torch.full((4, 5), 2.0)), ValueError, "labels"),
        (dict(mask=torch.ones(4, 5, dtype=torch.bool)), ValueError, "mask"),
        (dict(temperature=0), ValueError, "temperature"),
        (dict(alpha=3), ValueError, "alpha"),
        (dict(reduction="batchmean"), ValueError, "reduction"),
        (dict(backend="gpu"), ValueError, "backend"),
    ]
    for overrides, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            kdcore.kd_bce_loss(student, teacher, **overrides)
    with pytest.raises(ValueError, match="same shape"):
        kdcore.kd_bce_loss(student, torch.randn(4, 4))
    with pytest.raises(TypeError, match="student_logits"):
        kdcore.kd_bce_loss(torch.ones(4, 5, dtype=torch.long), teacher)


def test_module_wrapper():
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    module = kdcore.KDBCELoss(temperature=2.0, alpha=0.5)
    labels = (torch.rand(8, 10) > 0.5).float()
    torch.testing.assert_close(module(student, teacher, labels),
                               kdcore.kd_bce_loss(student, teacher, temperature=2.0,
                                                  labels=labels, alpha=0.5))


def test_cpp_alpha_near_1_keeps_the_label_weight():
    """1 - alpha near 0 must not be formed in fp32. With teacher = student the KD gradient is
    0, so the student gradient is (1 - alpha) times the BCE gradient alone."""
    require_backend("cpp")
    generator = torch.Generator().manual_seed(0)
    student = (torch.randn(4, 5, generator=generator) * 4).requires_grad_()
    teacher = student.detach().clone()
    labels = (torch.rand(4, 5, generator=generator) > 0.5).float()
    check_bce("cpp", student, teacher, reduction="sum", alpha=0.99999, labels=labels)
