"""pytest plugin for ``scripts/gpu_check.sh``: keep only the tests that need CUDA.

Loaded with ``python -m pytest -p pytest_cuda_only`` (``scripts/`` on ``PYTHONPATH``). A test is
kept when any of these holds (case-insensitive):

- its node id (name or parameter ids) contains ``cuda`` or ``gpu``;
- it carries a ``skipif``/``skip`` mark whose reason mentions CUDA or a GPU;
- it carries a ``cuda`` or ``gpu`` mark;
- it uses a fixture whose name contains ``cuda`` or ``gpu``.

On a GPU machine the condition of a ``skipif`` is already false, so the node id and fixture
rules carry the selection there: name every CUDA test (or its fixture) with ``cuda`` in it.
``tests/test_gpu_check.py`` (which runs this script) is never kept.
"""

from __future__ import annotations

import pytest

WORDS = ("cuda", "gpu")
EXCLUDED_FILES = ("test_gpu_check.py",)


def _mentions(text: object) -> bool:
    return isinstance(text, str) and any(word in text.lower() for word in WORDS)


def needs_cuda(item: pytest.Item) -> bool:
    """Whether ``item`` is a CUDA test by the rules of the module docstring."""
    if item.path.name in EXCLUDED_FILES:
        return False
    if _mentions(item.nodeid.split("::", 1)[-1]):
        return True
    for mark in item.iter_markers():
        if mark.name in WORDS:
            return True
        if mark.name in ("skip", "skipif"):
            reason = mark.kwargs.get("reason")
            if reason is None and mark.name == "skip" and mark.args:
                reason = mark.args[0]
            if _mentions(reason):
                return True
    return any(_mentions(name) for name in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [item for item in items if needs_cuda(item)]
    dropped = [item for item in items if not needs_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
