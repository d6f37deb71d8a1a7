"""CPU benchmark of the fused losses: forward + backward of the C++ kernels against the eager
reference and ``torch.compile(reference)``.

Cases (fp32, CPU, all threads torch uses):

- ``kd_loss`` (kind ``"kl"``, T = 2, ``"batchmean"``) at (4096, 527) (audio tagging) and
  (8000, 5000) (frame level); target: C++ >= 2.5x faster than eager at both.
- ``kd_bce_loss`` (T = 2, ``"mean"``) at (4096, 527).
- ``feature_loss`` (``"mse"`` and ``"cosine"``, ``"mean"``) at (8000, 768).

Each timed call runs the loss and ``backward()`` into the student (the teacher is fixed).
The file is not collected by the default test run (``testpaths = ["tests"]``). Usage::

    pytest benchmarks/bench_losses_cpu.py --benchmark-enable      # pytest-benchmark table
    python benchmarks/bench_losses_cpu.py                         # also writes the medians
                                                                  # to results/cpu-losses.json
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _common import cpu_model

import kdcore
from kdcore import _backends
from kdcore.ops.feature_loss import feature_loss_reference
from kdcore.ops.kd_bce_loss import kd_bce_loss_reference
from kdcore.ops.kd_loss import kd_loss_reference

RESULTS = Path(__file__).resolve().parent / "results" / "cpu-losses.json"
TEMPERATURE = 2.0
PROVIDERS = ("cpp", "eager", "compiled")

# name -> (shape, loss with the C++ backend, reference loss)
CASES: dict[str, tuple[tuple[int, int], Callable, Callable]] = {
    "kd_loss kl 4096x527": (
        (4096, 527),
        lambda s, t: kdcore.kd_loss(s, t, temperature=TEMPERATURE, backend="cpp"),
        lambda s, t: kd_loss_reference(s, t, temperature=TEMPERATURE),
    ),
    "kd_loss kl 8000x5000": (
        (8000, 5000),
        lambda s, t: kdcore.kd_loss(s, t, temperature=TEMPERATURE, backend="cpp"),
        lambda s, t: kd_loss_reference(s, t, temperature=TEMPERATURE),
    ),
    "kd_bce_loss 4096x527": (
        (4096, 527),
        lambda s, t: kdcore.kd_bce_loss(s, t, temperature=TEMPERATURE, backend="cpp"),
        lambda s, t: kd_bce_loss_reference(s, t, temperature=TEMPERATURE),
    ),
    "feature_loss mse 8000x768": (
        (8000, 768),
        lambda s, t: kdcore.feature_loss(s, t, kind="mse", backend="cpp"),
        lambda s, t: feature_loss_reference(s, t, kind="mse"),
    ),
    "feature_loss cosine 8000x768": (
        (8000, 768),
        lambda s, t: kdcore.feature_loss(s, t, kind="cosine", backend="cpp"),
        lambda s, t: feature_loss_reference(s, t, kind="cosine"),
    ),
}


def make_inputs(shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student = (torch.randn(shape, generator=generator) * 3.0).requires_grad_()
    teacher = torch.randn(shape, generator=generator) * 3.0
    return student, teacher


def forward_backward(loss_fn: Callable) -> Callable:
    def step(student: torch.Tensor, teacher: torch.Tensor) -> None:
        student.grad = None
        loss_fn(student, teacher).backward()

    return step


def provider_step(case: str, provider: str) -> Callable:
    _, fused, reference = CASES[case]
    if provider == "cpp":
        if _backends.cpp_ops() is None:
            pytest.skip("the C++ kernels could not be built here")
        return forward_backward(fused)
    if provider == "eager":
        return forward_backward(reference)
    torch._dynamo.reset()
    return forward_backward(torch.compile(reference, dynamic=False))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_losses_cpu(benchmark, case, provider):
    shape = CASES[case][0]
    student, teacher = make_inputs(shape)
    step = provider_step(case, provider)
    step(student, teacher)  # build / compile outside the timing
    benchmark.group = f"{case} fp32 forward+backward"
    benchmark.extra_info.update(case=case, provider=provider, shape=list(shape))
    rounds = 7 if shape[0] * shape[1] > 10_000_000 else 40
    benchmark.pedantic(step, args=(student, teacher), rounds=rounds, warmup_rounds=1)



def main() -> int:
    """Run the benchmarks through pytest-benchmark and write their medians (ms) and the
    speed-ups of the C++ kernels to ``results/cpu-losses.json``."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "raw.json"
        status = pytest.main([__file__, "-q", "-p", "no:cacheprovider", "--benchmark-enable",
                              f"--benchmark-json={raw}", "--benchmark-columns=median,iqr,rounds"])
        if status != 0:
            return int(status)
        runs = json.loads(raw.read_text())["benchmarks"]
    medians: dict[str, dict[str, float]] = {}
    minima: dict[str, dict[str, float]] = {}
    for run in runs:
        info = run["extra_info"]
        medians.setdefault(info["case"], {})[info["provider"]] = run["stats"]["median"] * 1e3
        minima.setdefault(info["case"], {})[info["provider"]] = run["stats"]["min"] * 1e3
    results = {}
    for case, times in medians.items():
        entry = {"shape": list(CASES[case][0]),
                 "median_ms": {k: round(v, 3) for k, v in times.items()},
                 "min_ms": {k: round(v, 3) for k, v in minima[case].items()}}
        if "cpp" in times:
            for other in ("eager", "compiled"):
                if other in times:
                    entry[f"speedup_vs_{other}"] = round(times[other] / times["cpp"], 2)
        results[case] = entry
    data = {
        "benchmark": "fused losses on CPU, forward + backward into the student (teacher fixed)",
        "dtype": "float32",
        "temperature": TEMPERATURE,
        "device": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": "pytest-benchmark pedantic medians (speed-ups from medians) and minima; "
                  "build/compile and one warm-up excluded; a shared 2-core machine, so "
                  "expect run-to-run noise",
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
