"""Backend selection shared by every op: Triton kernels, the JIT-built C++ library, the reference.

- ``"auto"``: Triton for CUDA tensors; C++ for CPU tensors when it builds, else the reference.
- ``"triton"``: CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the
  kernels were first imported.
- ``"cpp"``: CPU tensors; the ``csrc/`` sources are built on first use with ninja and cached.
- ``"reference"``: plain torch, any device.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from kdcore.errors import UserInputError

BACKENDS = ("auto", "triton", "cpp", "reference")
CPP_LIBRARY = "kdcore_cpp"
TRITON_LAUNCHERS = "kdcore.kernels.launchers"


def _source_package(name: str, folder: str) -> None:
    """Make ``kdcore.<name>`` importable from the checkout's top-level ``<folder>/``.

    ``kernels/`` and ``csrc/`` carry no ``__init__.py``, so that with the repository root on
    ``sys.path`` they never shadow an installed top-level package of the same name (transformers
    imports the PyPI package ``kernels``). A wheel installs them as the namespace subpackages
    ``kdcore.kernels`` and ``kdcore.csrc``; an editable install's finder cannot map a namespace
    subpackage to another folder, so there (and when running from a plain checkout) the
    subpackage is registered here, pointing at the folder."""
    full_name = f"kdcore.{name}"
    if full_name in sys.modules:
        return
    try:
        if importlib.util.find_spec(full_name) is not None:
            return
    except (ImportError, ValueError):
        pass
    path = Path(__file__).resolve().parent.parent / folder
    if not path.is_dir():
        return
    spec = importlib.machinery.ModuleSpec(full_name, None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[full_name] = module
    parent = sys.modules.get("kdcore")
    if parent is not None:
        setattr(parent, name, module)


_source_package("kernels", "kernels")
_source_package("csrc", "csrc")


class BackendUnavailableError(UserInputError):
    """The requested backend cannot run these tensors; the message says why."""


def triton_interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        importlib.import_module("triton")
    except Exception as error:  # ImportError, or a broken install raising anything else
        return f"triton cannot be imported ({type(error).__name__}: {error})"
    return None


@functools.lru_cache(maxsize=1)
def triton_kernels() -> ModuleType:
    """Import ``kdcore.kernels.launchers`` (lazily, so ``TRITON_INTERPRET`` may be set late)."""
    reason = _triton_import_error()
    if reason is not None:
        raise BackendUnavailableError(f"backend='triton' is unavailable: {reason}")
    return importlib.import_module(TRITON_LAUNCHERS)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why Triton cannot run on ``device``, or ``None`` when it can."""
    reason = _triton_import_error()
    if reason is not None:
        return reason
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if TRITON_LAUNCHERS in sys.modules:
            if triton_kernels().INTERPRET:
                return None
            return (
                "the tensors are on the CPU and the Triton kernels were compiled for a GPU; "
                "set TRITON_INTERPRET=1 before kdcore first uses Triton to run them on the CPU"
            )
        if triton_interpret_requested():
            return None
        return (
            "the tensors are on the CPU and TRITON_INTERPRET=1 is not set; Triton runs on CPU "
            "tensors only through its interpreter"
        )
    return f"Triton does not support tensors on device type '{device.type}'"


def _csrc_dir() -> Path:
    """The folder of the C++ sources: ``kdcore.csrc`` (installed, or the checkout's ``csrc/``)."""
    try:
        module = importlib.import_module("kdcore.csrc")
        for entry in getattr(module, "__path__", []):
            path = Path(entry)
            if path.is_dir() and any(path.glob("*.cpp")):
                return path
    except ImportError:
        pass
    return Path(__file__).resolve().parent.parent / "csrc"


_cpp_state: dict[str, object] = {}


def _cpp_cflags() -> list[str]:
    cflags = ["-O3", "-fopenmp", "-march=native", "-ffp-contract=fast"]
    if os.environ.get("KDCORE_CPP_PORTABLE") == "1":
        cflags.remove("-march=native")
    return cflags


def cpp_build_directory() -> Path:
    """Where the C++ library is built: under torch's extension root (``TORCH_EXTENSIONS_DIR``),
    named by a digest of the sources, their folder, flags, Python and torch, so builds that
    differ in any of them never share (and rebuild) one directory."""
    from torch.utils import cpp_extension

    digest = hashlib.sha1()
    for source in sorted(_csrc_dir().glob("*.cpp")) + sorted(_csrc_dir().glob("*.h")):
        digest.update(source.read_bytes())
    # The source folder too: torch rebuilds whenever a directory's build file names other
    # source paths, so two checkouts sharing one directory would rebuild each other's library.
    digest.update(" ".join(_cpp_cflags() + [sys.version, torch.__version__,
                                            str(_csrc_dir())]).encode())
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    return root / f"{CPP_LIBRARY}_{digest.hexdigest()[:10]}"


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """Hold an OS lock on ``build`` while torch builds there. torch marks a build with a
    ``lock`` file that a killed process leaves behind, and every later process then waits on
    it forever; the OS lock dies with its process, so a ``lock`` file found while holding it
    is stale and is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock file alone
        yield
        return
    with open(build / "kdcore.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cpp_ops() -> object | None:
    """``torch.ops.kdcore_cpp`` after building ``csrc/`` once (in :func:`cpp_build_directory`);
    ``None`` (with one warning) if the build fails or no compiler is present."""
    if "ops" in _cpp_state:
        return _cpp_state["ops"]
    sources = sorted(_csrc_dir().glob("*.cpp"))
    try:
        if not sources:
            raise RuntimeError(f"no C++ sources found in {_csrc_dir()}")
        from torch.utils import cpp_extension

        build = cpp_build_directory()
        build.mkdir(parents=True, exist_ok=True)
        with _build_lock(build):
            cpp_extension.load(
                name=build.name,
                sources=[str(source) for source in sources],
                extra_cflags=_cpp_cflags(),
                extra_ldflags=["-fopenmp"],
                build_directory=str(build),
                is_python_module=False,
                verbose=os.environ.get("KDCORE_VERBOSE_BUILD") == "1",
            )
        ops = getattr(torch.ops, CPP_LIBRARY)
    except Exception as error:
        warnings.warn(
            f"kdcore: the C++ CPU kernels could not be built ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); "
            "falling back to the reference backend",
            RuntimeWarning,
            stacklevel=2,
        )
        ops = None
    _cpp_state["ops"] = ops
    return ops


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (one of :data:`BACKENDS`) to the concrete backend for ``device``."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _resolve(backend, device)


@torch.compiler.assume_constant_result
def _resolve(backend: str, device: torch.device) -> str:
    """:func:`resolve_backend` after its argument check. Under ``torch.compile`` it runs once at
    trace time (it may build the C++ library or import Triton) and its answer is a constant."""
    if backend == "auto":
        if device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        if device.type == "cpu" and cpp_ops() is not None:
            return "cpp"
        return "reference"
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend='triton' cannot run here: {reason}")
    if backend == "cpp":
        if device.type != "cpu":
            raise BackendUnavailableError(
                f"backend='cpp' runs on CPU tensors only, got tensors on '{device}'"
            )
        if cpp_ops() is None:
            raise BackendUnavailableError(
                "backend='cpp' is unavailable: the C++ kernels could not be built "
                "(see the earlier warning)"
            )
    return backend
