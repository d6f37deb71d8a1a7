"""Shared pieces of the loss parity tests: backends, per-dtype tolerances, comparisons."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore import _backends

BACKENDS = ["reference", "cpp", "triton"]
FUSED_BACKENDS = ["cpp", "triton"]

# dtype -> (loss rtol, loss atol, grad rtol, grad atol as a fraction of max |grad|).
# Inputs are rounded to the dtype before the float64 reference sees them, so the loss error is
# fp32 arithmetic alone; gradients are returned in the input dtype and carry its rounding.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12, 1e-9, 1e-11),
    torch.float32: (3e-5, 2e-6, 1e-3, 5e-5),
    torch.bfloat16: (3e-5, 2e-6, 1.6e-2, 4e-3),
    torch.float16: (3e-5, 2e-6, 2e-3, 5e-4),
}


def require_backend(backend: str, device: str = "cpu") -> None:
    """Skip only for reasons outside the project: a C++ build failure is a test failure."""
    if backend == "triton":
        reason = _backends.triton_unavailable_reason(torch.device(device))
        if reason is not None:
            pytest.skip(f"Triton cannot run here: {reason}")
    if backend == "cpp":
        assert _backends.cpp_ops() is not None, "the C++ kernels failed to build"


def to64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).cpu().numpy()


def assert_close(name: str, actual: torch.Tensor, expected: np.ndarray, rtol: float,
                 atol: float) -> None:
    got = to64(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{name}: shape {got.shape} != {expected.shape}"
    assert not np.isnan(got).any(), f"{name}: NaN in result"
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(got), finite), f"{name}: infinities differ"
    assert np.array_equal(got[~finite], expected[~finite]), f"{name}: infinities differ"
    if not finite.any():
        return
    error = np.abs(got[finite] - expected[finite])
    bound = atol + rtol * np.abs(expected[finite])
    worst = int(np.argmax(error - bound))
    assert (error <= bound).all(), (
        f"{name}: max excess error {error[worst]:.3g} > bound {bound[worst]:.3g} "
        f"(expected {expected[finite][worst]:.6g}, got {got[finite][worst]:.6g})"
    )


def assert_grad_close(name: str, actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype,
                      floor: float = 0.0):
    """``floor``: an absolute tolerance the float64 reference itself needs where its gradient
    is a small difference of large terms."""
    _, _, rtol, atol_fraction = TOLERANCES[dtype]
    scale = float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0))
    assert actual.dtype == dtype, f"{name}: gradient dtype {actual.dtype}, expected {dtype}"
    assert_close(name, actual, expected, rtol, max(atol_fraction * max(scale, 1e-8), floor))


def reduce_reference(rows: np.ndarray, grads: list[np.ndarray], valid: np.ndarray,
                     reduction: str, count: float, grad_output: np.ndarray | float):
    """Reduce per-item losses the way the ops do; ``count`` is what ``"batchmean"``/``"mean"``
    divide by."""
    if reduction == "none":
        go = np.asarray(grad_output, dtype=np.float64)
        go_b = go.reshape(go.shape + (1,) * (grads[0].ndim - go.ndim))
        return rows, [g * go_b for g in grads]
    divisor = max(count, 1.0) if reduction in ("batchmean", "mean") else 1.0
    return rows.sum() / divisor, [g * float(grad_output) / divisor for g in grads]
