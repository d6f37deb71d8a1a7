"""feature_loss: every backend against the independent float64 reference in ``ref64``."""

from __future__ import annotations

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
from tests.ref64 import feature_loss64

KINDS = ["mse", "l1", "cosine"]


def _feats(shape, dtype, scale=1.5):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()


def check_feature(backend, student, teacher, *, kind, reduction="mean", grad_output=None,
                  mask=None):
    dtype = student.dtype
    width = student.shape[-1]
    loss = kdcore.feature_loss(student, teacher, kind=kind, mask=mask, reduction=reduction,
                               backend=backend)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if grad_output is None:
        grad_output = torch.ones_like(loss) if reduction == "none" else torch.tensor(1.0)
    loss.backward(grad_output.to(loss.dtype))
    values, grad_s, grad_t, valid = feature_loss64(
        to64(student).reshape(-1, width), to64(teacher).reshape(-1, width), kind=kind,
        mask=None if mask is None else mask.reshape(-1).numpy())
    count = float(valid.sum()) * (1 if kind == "cosine" else width)
    if reduction == "none":
        go = to64(grad_output).reshape(values.shape)
    else:
        go = float(grad_output)
    expected, (exp_gs, exp_gt) = reduce_reference(values, [grad_s, grad_t], valid, reduction,
                                                  count, go)
    rtol, atol, _, _ = TOLERANCES[dtype]
    if reduction == "none":
        expected = expected.reshape(loss.shape)
    assert_close("loss", loss, expected, rtol, atol * max(1.0, np.abs(expected).max()))
    assert_grad_close("student grad", student.grad, exp_gs.reshape(student.shape), dtype)
    if teacher.requires_grad:
        assert_grad_close("teacher grad", teacher.grad, exp_gt.reshape(teacher.shape), dtype)
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (41, 401), (2, 5, 768)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_parity(backend, kind, shape, dtype):
    require_backend(backend)
    check_feature(backend, _feats(shape, dtype), _feats(shape, dtype), kind=kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masks_and_grad_output(backend, kind, reduction):
    require_backend(backend)
    shape = (3, 10, 96)
    student, teacher = _feats(shape, torch.float32), _feats(shape, torch.float32)
    mask = torch.rand(shape[:-1]) > 0.3
    with torch.no_grad():
        teacher[~mask] = float("nan")
    go_shape = shape[:-1] if kind == "cosine" else shape
    go = torch.randn(go_shape) if reduction == "none" else torch.tensor(-1.9)
    loss = check_feature(backend, student, teacher, kind=kind, reduction=reduction,
                         grad_output=go, mask=mask)
    if reduction == "none":
        assert (loss[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_zero_vector_and_l1_ties(backend):
    """A zero row has no direction (norm clamped at eps): finite loss 1, no NaN; l1 at s == t
    has gradient 0."""
    require_backend(backend)
    student, teacher = _feats((4, 16), torch.float32), _feats((4, 16), torch.float32)
    with torch.no_grad():
        student[1] = 0.0
        teacher[2] = 0.0
        student[3, :8] = teacher[3, :8]
    check_feature(backend, student, teacher, kind="cosine")
    student.grad = teacher.grad = None
    check_feature(backend, student, teacher, kind="l1")


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(backend, kind):
    require_backend(backend)
    student = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 4) > 0.3
    for reduction in ("mean", "none"):
        def loss_fn(s, t, reduction=reduction):
            return kdcore.feature_loss(s, t, kind=kind, mask=mask, reduction=reduction,
                                       backend=backend)
        assert torch.autograd.gradcheck(loss_fn, (student, teacher))


def test_matches_torch_functional():
    student, teacher = torch.randn(5, 7, 33, dtype=torch.float64), torch.randn(5, 7, 33,
                                                                               dtype=torch.float64)
    F = torch.nn.functional
    expected = {
        "mse": F.mse_loss(student, teacher),
        "l1": F.l1_loss(student, teacher),
        "cosine": (1 - F.cosine_similarity(student, teacher, dim=-1)).mean(),
    }
    for backend in ("reference", "cpp"):
        require_backend(backend)
        for kind, value in expected.items():
            torch.testing.assert_close(
                kdcore.feature_loss(student, teacher, kind=kind, backend=backend), value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 9), width=st.integers(1, 300), kind=st.sampled_from(KINDS),
       use_mask=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]),
       seed=st.integers(0, 2**16))
def test_fuzz_cpp(rows, width, kind, use_mask, reduction, seed):
    require_backend("cpp")
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, width, generator=generator).requires_grad_()
    teacher = torch.randn(rows, width, generator=generator).requires_grad_()
    mask = (torch.rand(rows, generator=generator) > 0.3) if use_mask else None
    go = None
    if reduction == "none":
        go = torch.randn((rows,) if kind == "cosine" else (rows, width), generator=generator)
    check_feature("cpp", student, teacher, kind=kind, reduction=reduction, grad_output=go,
                  mask=mask)


def test_only_teacher_requires_grad():
    student = torch.randn(4, 8)
    teacher = torch.randn(4, 8, requires_grad=True)
    for backend in ("reference", "cpp"):
        require_backend(backend)
        teacher.grad = None
        kdcore.feature_loss(student, teacher, backend=backend).backward()
        torch.testing.assert_close(teacher.grad, -2 * (student - teacher.detach()) / 32)


def test_errors_name_the_argument():
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="kind"):
        kdcore.feature_loss(student, teacher, kind="huber")
    with pytest.raises(ValueError, match="reduction"):
        kdcore.feature_loss(student, teacher, reduction="batchmean")
    with pytest.raises(ValueError, match="mask"):
        kdcore.feature_loss(student, teacher, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        kdcore.feature_loss(student, torch.randn(4, 6))
    with pytest.raises(TypeError, match="teacher_feats"):
        kdcore.feature_loss(student, torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="same dtype"):
        kdcore.feature_loss(student, teacher.double())
    with pytest.raises(ValueError, match="backend"):
        kdcore.FeatureLoss(backend="fast")


def test_module_wrapper():
    student, teacher = torch.randn(6, 12), torch.randn(6, 12)
    module = kdcore.FeatureLoss(kind="cosine", reduction="sum")
    torch.testing.assert_close(module(student, teacher),
                               kdcore.feature_loss(student, teacher, kind="cosine",
                                                   reduction="sum"))
