"""Backend selection: auto picks, the no-compiler fallback, and errors that say why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import kdcore
from kdcore import _backends


def test_auto_picks_cpp_on_cpu_and_matches_reference():
    assert _backends.cpp_ops() is not None, "the C++ kernels failed to build"
    assert _backends.resolve_backend("auto", torch.device("cpu")) == "cpp"
    student, teacher = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11,
                                                                          dtype=torch.float64)
    torch.testing.assert_close(kdcore.kd_loss(student, teacher, temperature=2.0),
                               kdcore.kd_loss(student, teacher, temperature=2.0,
                                              backend="reference"))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        _backends.resolve_backend("cuda", torch.device("cpu"))


def test_no_compiler_falls_back_to_reference_with_one_warning(tmp_path):
    """With a compiler that always fails, auto uses the reference after a single warning and
    backend='cpp' is refused with the reason."""
    code = (
        "import warnings, torch, kdcore\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    a = kdcore.kd_loss(torch.ones(2, 3), torch.zeros(2, 3))\n"
        "    b = kdcore.feature_loss(torch.ones(2, 3), torch.zeros(2, 3))\n"
        "messages = [str(w.message) for w in caught if 'C++' in str(w.message)]\n"
        "print('WARNINGS', len(messages), messages[0] if messages else '')\n"
        "try:\n"
        "    kdcore.kd_loss(torch.ones(2, 3), torch.zeros(2, 3), backend='cpp')\n"
        "except ValueError as error:\n"
        "    print('REFUSED', error)\n"
        "print('VALUES', float(a), float(b))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout
    assert "WARNINGS 1 kdcore: the C++ CPU kernels could not be built" in output, (
        output + result.stderr)
    assert "REFUSED backend='cpp' is unavailable" in output
    assert "VALUES 0.0 1.0" in output
