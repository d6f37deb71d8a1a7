"""Shared by the benchmark scripts: one timer (``triton.testing.do_bench`` on a GPU), and where
results go (one JSON per device under ``results/``, each script merging its own top-level key:
``kd_loss``, ``log_mel``, ``engine``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUANTILES = [0.5, 0.2, 0.8]
CPU_REPEATS = 5  # timed calls per CPU measurement; dry runs lower it


def bench(fn: Callable[[], object], device: torch.device) -> list[float]:
    """[median, 20 %, 80 %] milliseconds: ``do_bench`` on a GPU; on the CPU (dry runs) a warm-up
    and ``CPU_REPEATS`` (default 5) timed calls, whose spread is only indicative."""
    if device.type == "cuda":
        import triton.testing

        return list(triton.testing.do_bench(fn, quantiles=QUANTILES))
    fn()  # warm-up (compiles / interprets once)
    samples = []
    for _ in range(max(CPU_REPEATS, 1)):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    low, high = (1, -2) if len(samples) >= 5 else (0, -1)
    return [statistics.median(samples), samples[low], samples[high]]


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict:
    """Versions and the date (UTC) that every result records."""
    import torch  # here, so that the bookkeeping helpers load without torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    versions["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return versions


def merge_results(path: Path, key: str, payload: dict) -> Path:
    """Write ``payload`` under ``key`` of the JSON at ``path``, keeping the other keys."""
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[key] = payload
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed: a run stopped mid-write (a time cap) keeps the old file whole.
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
    return path
