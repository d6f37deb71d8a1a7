"""Shared helpers of the teacher tests: real audio, parity tolerance, package imports."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import torch

from tests.conftest import SHARED

FSDD = os.path.join(SHARED, "data", "fsdd")


def fsdd_clips(count: int, rate: int = 16000) -> list[np.ndarray]:
    """``count`` FSDD clips from distinct speakers, resampled 8 kHz -> ``rate`` by soxr
    (float64). Skips the test when the data set is absent."""
    manifest = os.path.join(FSDD, "manifest.csv")
    if not os.path.isfile(manifest):
        pytest.skip(f"FSDD not found at {FSDD}")
    import soundfile
    import soxr

    with open(manifest) as handle:
        rows = list(csv.DictReader(handle))
    clips, speakers = [], set()
    for row in rows:
        if row["speaker"] in speakers:
            continue
        speakers.add(row["speaker"])
        audio, source_rate = soundfile.read(os.path.join(FSDD, row["path"]), dtype="float64")
        clips.append(soxr.resample(audio, source_rate, rate))
        if len(clips) == count:
            break
    return clips


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Every element within ``rtol`` relative to the expected value, with an absolute floor
    of ``rtol`` times the largest expected magnitude (tiny probabilities carry float32
    rounding only relative to the output scale)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all()
    floor = rtol * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=floor)


def require(import_name: str) -> None:
    if importlib.util.find_spec(import_name) is None:
        pytest.skip(f"{import_name} is not installed (pip install 'kdcore[teachers]')")


@contextlib.contextmanager
def stubbed_modules(package: str, *names: str):
    """Import ``package`` with empty stand-ins for ``names`` that are not installed (torchcrepe
    imports torchaudio and resampy at import time but needs neither for framing and
    inference); the stand-ins and ``package``'s modules are removed afterwards."""
    stubs = []
    for name in names:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            stubs.append(name)
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for name in list(sys.modules):
            if name in stubs or name == package or name.startswith(package + "."):
                del sys.modules[name]
