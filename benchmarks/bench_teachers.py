"""Teacher cache-fill throughput: output frames per second of each registered teacher's full
forward (its frontend and model, no gradients) on FSDD speech resampled to 16 kHz, on the CPU.

Writes the key ``cache_fill`` of ``benchmarks/results/teachers-cpu.json`` (other keys kept).
CREPE-full is timed on a few frames only (about 0.1 s per frame on two cores).

    python benchmarks/bench_teachers.py [--teachers crepe-tiny,silero-vad,crepe-full]
        [--repeats 3]

``frames_per_s`` counts output frames (CREPE: 10 ms frames, Silero: 32 ms chunks) or, for
clip-level teachers, clips.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

from kdcore import teachers  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
# (clips in the batch, seconds per clip): CREPE-full on 2 x 0.25 s = 52 frames.
WORKLOAD = {"crepe-tiny": (4, 1.0), "crepe-full": (2, 0.25), "silero-vad": (8, 4.0)}


def speech_batch(clips: int, seconds: float) -> torch.Tensor:
    """(clips, seconds * 16000) float32: FSDD recordings resampled 8 -> 16 kHz (soxr), each
    item a concatenation of consecutive recordings cut to length."""
    import soundfile
    import soxr

    with open(FSDD / "manifest.csv") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    length, items, index = int(seconds * 16000), [], 0
    for _ in range(clips):
        pieces, total = [], 0
        while total < length:
            audio, rate = soundfile.read(FSDD / paths[index], dtype="float32")
            pieces.append(soxr.resample(audio, rate, 16000))
            total += len(pieces[-1])
            index += 1
        items.append(np.concatenate(pieces)[:length])
    return torch.from_numpy(np.stack(items))


def measure(name: str, repeats: int) -> dict:
    start = time.perf_counter()
    bundle = teachers.load(name)
    load_s = time.perf_counter() - start
    clips, seconds = WORKLOAD.get(name, (4, 1.0))
    batch = speech_batch(clips, seconds)
    output = bundle(batch)  # warm-up
    # frame-level teachers: output frames; clip-level ones (hop None): one output per item
    frames = output.shape[0] * output.shape[1] if bundle.output.hop else output.shape[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bundle(batch)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"package": bundle.spec.package,
            "package_version": importlib.metadata.version(bundle.spec.package),
            "parameters": bundle.num_parameters, "fingerprint": bundle.fingerprint,
            "batch_shape": list(batch.shape), "output_shape": list(output.shape),
            "frames": frames, "load_s": load_s, "seconds_per_call": times,
            "frames_per_s": frames / median, "audio_seconds_per_s": clips * seconds / median,
            "note": "subset: a few frames only" if name == "crepe-full" else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default=",".join(teachers.names()),
                        help="comma-separated registry names (default: every registered one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not (FSDD / "manifest.csv").is_file():
        print(f"FSDD not found at {FSDD}", file=sys.stderr)
        return 1
    results = {}
    for name in args.teachers.split(","):
        if not teachers.is_installed(name):
            print(f"{name}: not installed ({teachers.spec(name).install}), skipped")
            continue
        results[name] = measure(name, args.repeats)
        print(name, f"{results[name]['frames_per_s']:.1f} frames/s")
    payload = {"benchmark": "teacher cache fill: frontend + model forward, no grad, CPU, "
                            "float32, FSDD speech resampled to 16 kHz; median of repeats",
               "command": " ".join(["python benchmarks/bench_teachers.py",
                                    *(argv if argv is not None else sys.argv[1:])]),
               "cpu": cpu_model(), "threads": torch.get_num_threads(),
               "load_average_1_5_15min": list(os.getloadavg()), **environment(),
               "results": results}
    path = merge_results(RESULTS_DIR / "teachers-cpu.json", "cache_fill", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
