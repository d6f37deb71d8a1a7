"""CPU benchmark of the log-mel frontend: kdcore's C++ path against the plain torch.stft pipeline
and librosa (its batched call), 16 clips x 10 s at 16 kHz, ``"torchaudio"`` and ``"whisper"``
presets. Every provider computes the same features; the run checks that they agree.

- ``kdcore``: ``LogMel.from_preset(name, backend="cpp")``.
- ``torch_stft``: ``torch.stft`` -> ``.abs()**2`` -> mel matmul (-> Whisper's log steps), the
  way torchaudio's ``MelSpectrogram`` and Whisper's ``log_mel_spectrogram`` compute it.
- ``librosa``: ``librosa.feature.melspectrogram`` on the (16, T) array (-> the same log steps).

Usage::

    pytest benchmarks/bench_log_mel_cpu.py --benchmark-enable    # pytest-benchmark table
    python benchmarks/bench_log_mel_cpu.py                        # writes results JSON

The script writes ``benchmarks/results/cpu-log-mel.json`` (shapes, dtype, CPU model, thread
count, versions, date, median/min ms, speed-ups, agreement).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from _common import cpu_model

import kdcore

CLIPS, SECONDS, SAMPLE_RATE = 16, 10, 16000
PRESETS = ("torchaudio", "whisper")
PROVIDERS = ("kdcore", "torch_stft", "librosa")
RESULTS = Path(__file__).resolve().parent / "results" / "cpu-log-mel.json"


def make_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(CLIPS, SECONDS * SAMPLE_RATE, generator=generator) * 0.1


def _whisper_log(mel: torch.Tensor) -> torch.Tensor:
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per sample
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


def providers(preset: str) -> dict:
    """name -> (setup-free) callable mapping the (B, T) float32 batch to (B, n_mels, frames)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torchaudio defaults leave empty filters
        frontend = kdcore.LogMel.from_preset(preset, backend="cpp")
    config = frontend.config
    filters = frontend.filterbank.T.contiguous()  # (n_mels, n_freqs) fp32
    window = torch.hann_window(config.n_fft)
    hop = config.hop_length

    def kdcore_fn(batch):
        return frontend(batch)

    def torch_fn(batch):
        spectrum = torch.stft(batch, config.n_fft, hop, window=window, return_complex=True)
        if preset == "whisper":
            spectrum = spectrum[..., :-1]
        mel = filters @ spectrum.abs() ** 2
        return _whisper_log(mel) if preset == "whisper" else mel

    def librosa_fn(batch):
        mel = librosa.feature.melspectrogram(
            y=batch.numpy(), sr=config.sample_rate, n_fft=config.n_fft, hop_length=hop,
            n_mels=config.n_mels, htk=preset == "torchaudio",
            norm=None if preset == "torchaudio" else "slaney", pad_mode="reflect")
        mel = torch.from_numpy(mel)
        return _whisper_log(mel[..., :-1]) if preset == "whisper" else mel

    return {"kdcore": kdcore_fn, "torch_stft": torch_fn, "librosa": librosa_fn}


def agreement(outputs: dict) -> dict:
    """Relative L2 distance of each baseline to kdcore (mel power), or max abs (Whisper log)."""
    base = outputs["kdcore"].double()
    report = {}
    for name, value in outputs.items():
        if name == "kdcore":
            continue
        diff = value.double() - base
        report[name] = {"rel_l2": float(diff.norm() / base.norm()),
                        "max_abs": float(diff.abs().max())}
    return report


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset", PRESETS)
def test_log_mel_cpu(benchmark, batch, preset, provider):
    fn = providers(preset)[provider]
    benchmark.group = f"log-mel {preset} {CLIPS}x{SECONDS}s@{SAMPLE_RATE}"
    out = benchmark(fn, batch)
    expected = providers(preset)["kdcore"](batch)
    assert out.shape == expected.shape
    tolerance = 1e-4 if preset == "whisper" else 1e-5
    error = (out.double() - expected.double())
    if preset == "whisper":
        assert float(error.abs().max()) <= tolerance
    else:
        assert float(error.norm() / expected.double().norm()) <= tolerance


def _time(fn, batch, repeats: int) -> dict:
    fn(batch)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch)
        samples.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "repeats": repeats}



def main(repeats: int = 60) -> int:
    batch = make_batch()
    results = {}
    for preset in PRESETS:
        fns = providers(preset)
        outputs = {name: fn(batch) for name, fn in fns.items()}
        # interleave providers so load changes from other processes hit them alike
        timings = {name: [] for name in fns}
        for _ in range(3):
            for name, fn in fns.items():
                timings[name].append(_time(fn, batch, max(repeats // 3, 1)))
        merged = {name: {"median_ms": statistics.median(t["median_ms"] for t in runs),
                         "min_ms": min(t["min_ms"] for t in runs),
                         "repeats": sum(t["repeats"] for t in runs)}
                  for name, runs in timings.items()}
        kd = merged["kdcore"]
        results[preset] = {
            "output_shape": list(outputs["kdcore"].shape),
            "timings": merged,
            "speedup_median": {name: merged[name]["median_ms"] / kd["median_ms"]
                               for name in fns if name != "kdcore"},
            "speedup_min": {name: merged[name]["min_ms"] / kd["min_ms"]
                            for name in fns if name != "kdcore"},
            "agreement_vs_kdcore": agreement(outputs),
        }
        print(preset, json.dumps(results[preset], indent=1))
    data = {
        "benchmark": "log-mel CPU, 16 clips x 10 s at 16 kHz, float32 input and output",
        "input_shape": list(batch.shape),
        "dtype": "float32",
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average_1_5_15min": list(os.getloadavg()),
        "torch": torch.__version__,
        "librosa": librosa.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing": "time.perf_counter, 3 interleaved rounds per provider; median of round "
                  "medians and overall min, ms",
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
