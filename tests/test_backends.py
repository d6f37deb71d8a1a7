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


def _run_without_a_compiler(code: str, tmp_path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose C++ builds fail fast, in a private build root."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)

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
    result = _run_without_a_compiler(code, tmp_path, timeout=300)
    output = result.stdout
    assert "WARNINGS 1 kdcore: the C++ CPU kernels could not be built" in output, (
        output + result.stderr)
    assert "REFUSED backend='cpp' is unavailable" in output
    assert "VALUES 0.0 1.0" in output


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_process(tmp_path):
    """torch marks a build in progress with a ``lock`` file; a build killed midway leaves it,
    and without kdcore's OS lock the next process would wait on it forever."""
    code = (
        "import warnings, torch, kdcore\n"
        "from kdcore import _backends\n"
        "build = _backends.cpp_build_directory()\n"
        "build.mkdir(parents=True)\n"
        "(build / 'lock').touch()\n"
        "warnings.simplefilter('ignore')\n"
        "print('BUILT', _backends.cpp_ops() is not None, (build / 'lock').exists())\n"
    )
    result = _run_without_a_compiler(code, tmp_path, timeout=120)
    assert "BUILT False False" in result.stdout, result.stdout + result.stderr


def test_builds_with_other_flags_get_their_own_directory(monkeypatch):
    monkeypatch.delenv("KDCORE_CPP_PORTABLE", raising=False)
    native = _backends.cpp_build_directory()
    monkeypatch.setenv("KDCORE_CPP_PORTABLE", "1")
    portable = _backends.cpp_build_directory()
    assert native.parent == portable.parent and native.name != portable.name
    assert native.name.startswith(_backends.CPP_LIBRARY + "_")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_top_level_source_folders_do_not_shadow_installed_packages(tmp_path):
    """With the repository root first on sys.path (pytest's rootdir, ``python -m`` from the
    root), ``import kernels`` finds an installed ``kernels`` package, not kdcore's folder, and
    kdcore still imports its Triton launchers and C++ sources."""
    site_dir = tmp_path / "site"
    package = site_dir / "kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("ORIGIN = 'dummy-kernels'\n")
    (site_dir / "csrc.py").write_text("ORIGIN = 'dummy-csrc'\n")
    code = (
        "import site, sys\n"
        f"sys.path.insert(0, {REPO_ROOT!r})\n"
        f"site.addsitedir({str(site_dir)!r})\n"
        "assert sys.path[0] == " + repr(REPO_ROOT) + "\n"
        "import kernels, csrc\n"
        "print(kernels.ORIGIN, csrc.ORIGIN)\n"
        "import kdcore, kdcore.kernels.launchers as launchers\n"
        "from kdcore._backends import _csrc_dir\n"
        "print(launchers.__name__, sorted(p.name for p in _csrc_dir().glob('*.cpp'))[0])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "dummy-kernels dummy-csrc"
    assert lines[1] == "kdcore.kernels.launchers feature_loss.cpp"


def test_source_folders_are_not_regular_packages():
    """A regular package (with ``__init__.py``) at the root would win over any installed one."""
    for folder in ("kernels", "csrc"):
        assert not os.path.exists(os.path.join(REPO_ROOT, folder, "__init__.py")), folder
