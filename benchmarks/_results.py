"""Where the benchmark scripts put their results: one JSON per device under ``results/``, each
script merging its own top-level key (``kd_loss``, ``log_mel``, ``engine``)."""

from __future__ import annotations

import datetime
import json
import platform
import re
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def environment() -> dict:
    """Versions and the date (UTC) that every result records."""
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
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
