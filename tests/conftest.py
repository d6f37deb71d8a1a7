"""Test setup. Without a GPU, Triton kernels run through the interpreter, which must be
switched on before anything imports them."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
