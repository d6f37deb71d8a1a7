"""Test setup. Without a GPU, Triton kernels run through the interpreter, which must be
switched on before anything imports them."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core CI machine spinning pool
# threads starve the next parallel region (read by libgomp when torch loads it, so set first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
