"""GPU benchmark of the fused log-mel kernel against torchaudio and the torch.stft pipeline.

Settings: 16 kHz, n_fft 400, hop 160, periodic Hann, centre reflect, 80 HTK mels,
``ln(x + 1e-6)``; batches of 1, 8, 64 and 256 clips of 10 s (fp32).

For every batch it first checks each provider against float64 (``torch.stft`` pipeline in fp64
on the same GPU): relative L2 on mel power and max abs error on log bins above the guard. Then
it times (``triton.testing.do_bench``, median and 20/80 % quantiles, ms) and reports hours of
audio per second.

Providers: ``kdcore-<precision>`` for ``ieee``, ``tf32x3``, ``tf32``, ``bf16``;
``torchaudio`` (``MelSpectrogram`` + log, when torchaudio imports); ``torch_stft``
(``torch.stft`` -> ``abs()**2`` -> mel matmul -> log).

Floors (printed and stored): the fused kernel must read the waveform and write the features
once (bandwidth floor, against a device-to-device copy timed in the run), and its DFT plus mel
projection costs the flops of its padded tiles (compute floor, against an fp32 / tf32 / bf16
matmul timed in the run); see ``kernel_flops_per_frame``.

Usage::

    python benchmarks/gpu_log_mel.py              # full run on the current GPU
    python benchmarks/gpu_log_mel.py --quick      # batch 1 and 64 only
    python benchmarks/gpu_log_mel.py --batches 1 8 64 --precisions ieee tf32 --budget-s 40
    python benchmarks/gpu_log_mel.py --dry-run    # CPU smoke test (interpreter, tiny shapes)

With ``--budget-s`` the batches that would start after the budget are recorded as skipped; the
JSON is rewritten after every batch, so a run stopped from outside keeps what it measured.

Results merge into ``benchmarks/results/<gpu-name>.json`` under the key ``"log_mel"``. Exit
status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

BATCHES = [1, 8, 64, 256]
QUICK_BATCHES = [1, 64]
SECONDS = 10
SAMPLE_RATE = 16000
SETTINGS = dict(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80, log="ln",
                log_eps=1e-6)
PRECISIONS = ["ieee", "tf32x3", "tf32", "bf16"]
# (mel power rel L2, max abs on log bins above the guard) vs float64
# The fast modes (tf32, bf16) are measured and reported, not gated: their log error in quiet
# bins is large by design (docs/frontend.md).
CHECK_TOLERANCES = {"ieee": (1e-5, 1e-3), "tf32x3": (1e-5, 1e-3), "tf32": None, "bf16": None,
                    "torchaudio": (1e-5, 1e-3), "torch_stft": (1e-5, 1e-3)}
TARGETS = {"ieee_vs_torchaudio_b64": 2.0, "ieee_vs_torchaudio_b1": 5.0,
           "ieee_vs_torchaudio_b8": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test: Triton interpreter, tiny shapes, wall-clock timer")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 64 only")
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help=f"batch sizes of {SECONDS} s clips (default {BATCHES})")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new batch after this many seconds (default: no limit)")
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/<gpu-name>.json)")
    return parser.parse_args(argv)


_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None and _ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import time  # noqa: E402

import _common  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    bench,
    device_slug,
    environment,
    merge_results,
)

import kdcore  # noqa: E402


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per ms of a device-to-device copy of 256 MiB (read + write)."""
    numel = (64 << 20) if device.type == "cuda" else (1 << 20)
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    return 2 * numel * 4 / bench(lambda: target.copy_(source), device)[0]


def matmul_throughput(device: torch.device) -> dict[str, float]:
    """Flops per ms of a square matmul in fp32 (ieee), tf32 and bf16."""
    size = 8192 if device.type == "cuda" else 256
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    result = {}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("ieee", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x, y = a.to(dtype), b.to(dtype)
            result[name] = 2 * size**3 / bench(lambda x=x, y=y: x @ y, device)[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    result["tf32x3"] = result["tf32"] / 3
    return result


def mel_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_mels, n_freqs) HTK filters, the same for every provider."""
    return kdcore.mel_filterbank(201, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=80,
                                 sample_rate=SAMPLE_RATE).T.to(device, dtype).contiguous()


def stft_power(batch: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(400, dtype=batch.dtype, device=batch.device)
    spectrum = torch.stft(batch, 400, 160, window=window, return_complex=True)
    return mel_matrix(batch.device, batch.dtype) @ spectrum.abs() ** 2


def providers(device: torch.device, precisions: list[str]) -> dict[str, Callable | None]:
    """name -> fn(batch, log) -> (B, 80, frames); ``log=False`` returns mel power."""
    out: dict[str, Callable | None] = {}
    backend = "triton"
    for precision in precisions:
        def fused(batch, log, precision=precision):
            return kdcore.log_mel(batch, precision=precision, backend=backend,
                                  **{**SETTINGS, "log": "ln" if log else None})
        out[f"kdcore-{precision}"] = fused
    try:
        import torchaudio

        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=80).to(device)

        def torchaudio_fn(batch, log):
            mel = transform(batch)
            return torch.log(mel + 1e-6) if log else mel
        out["torchaudio"] = torchaudio_fn
    except Exception as error:  # ImportError or an ABI mismatch
        print(f"torchaudio unavailable ({type(error).__name__}: {error}); skipping it",
              file=sys.stderr)
        out["torchaudio"] = None

    def torch_fn(batch, log):
        mel = stft_power(batch)
        return torch.log(mel + 1e-6) if log else mel
    out["torch_stft"] = torch_fn
    return out


def check(fn: Callable, batch: torch.Tensor, mel64: torch.Tensor) -> dict:
    power = fn(batch, False).double()
    logged = fn(batch, True).double()
    above = mel64 > 1e-5
    return {
        "mel_rel_l2": float((power - mel64).norm() / mel64.norm()),
        "log_max_abs_above_guard": float(
            (logged - torch.log(mel64 + 1e-6)).abs()[above].max()),
    }


def kernel_flops_per_frame(device: torch.device) -> int:
    """Multiply-adds x 2 per frame of the Triton kernel chosen for SETTINGS, on its padded tiles:
    the split kernel does 4 dots of (half_pad x K_pad) plus 2 mel dots of (K_pad x M_pad); the
    direct one 2 dots of (win_pad x F_pad) plus one of (F_pad x M_pad)."""
    from kdcore.ops.log_mel import LogMelConfig, _triton_tables

    tables = _triton_tables(LogMelConfig(**SETTINGS).key(), device)
    _, rows, cols = tables.basis.shape
    m_pad = tables.filterbank.shape[-1]
    if tables.twiddle is not None:
        return 2 * (4 * rows * cols + 2 * cols * m_pad)
    return 2 * (2 * rows * cols + cols * m_pad)


def floors(batch_size: int, samples: int, frames: int, bandwidth: float, throughput: dict,
           flops_per_frame: int) -> dict:
    dense_dft = 2 * (2 * 201 * 400 + 201 * 80)  # unpadded dense DFT + mel, for reference
    total_frames = batch_size * frames
    moved = batch_size * samples * 4 + total_frames * 80 * 4
    return {
        "bytes": moved,
        "bandwidth_floor_ms": moved / bandwidth,
        "flops_kernel_padded": flops_per_frame * total_frames,
        "flops_dense_dft_unpadded": dense_dft * total_frames,
        "compute_floor_ms": {mode: flops_per_frame * total_frames / rate
                             for mode, rate in throughput.items()},
    }


def run_batch(batch_size: int, device: torch.device, fns: dict, bandwidth: float,
              throughput: dict, samples: int, flops_per_frame: int) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(batch_size)
    batch = (torch.randn(batch_size, samples, generator=generator) * 0.1).to(device)
    mel64 = stft_power(batch.double())
    frames = mel64.shape[-1]
    case = {"batch": batch_size, "seconds_per_clip": samples / SAMPLE_RATE, "frames": frames,
            "floors": floors(batch_size, samples, frames, bandwidth, throughput,
                              flops_per_frame), "providers": {}}
    for name, fn in fns.items():
        if fn is None:
            continue
        entry = check(fn, batch, mel64)
        tolerance = CHECK_TOLERANCES[name.removeprefix("kdcore-")]
        entry["correct"] = None if tolerance is None else (
            entry["mel_rel_l2"] <= tolerance[0]
            and entry["log_max_abs_above_guard"] <= tolerance[1])
        timing = bench(lambda fn=fn: fn(batch, True), device)
        entry["ms"] = timing
        entry["hours_of_audio_per_s"] = batch_size * samples / SAMPLE_RATE / 3600 / (
            timing[0] / 1e3)
        case["providers"][name] = entry
    return case


def evaluate_targets(cases: list[dict]) -> dict:
    verdicts = {}
    for case in cases:
        providers_ = case.get("providers", {})
        if "kdcore-ieee" not in providers_ or "torchaudio" not in providers_:
            continue
        speedup = providers_["torchaudio"]["ms"][0] / providers_["kdcore-ieee"]["ms"][0]
        key = f"ieee_vs_torchaudio_b{case['batch']}"
        if key in TARGETS:
            verdicts[key] = {"speedup": speedup, "target": TARGETS[key],
                             "met": speedup >= TARGETS[key]}
    return verdicts


def format_table(cases: list[dict]) -> str:
    lines = [f"{'batch':>5} {'provider':<16} {'median ms':>10} {'h audio/s':>10} "
             f"{'mel relL2':>10} {'log maxabs':>10} ok"]
    for case in cases:
        if "skipped" in case or "error" in case:
            lines.append(f"{case['batch']:>5} {case.get('skipped') or case.get('error')}")
            continue
        for name, entry in case["providers"].items():
            lines.append(f"{case['batch']:>5} {name:<16} {entry['ms'][0]:>10.4f} "
                         f"{entry['hours_of_audio_per_s']:>10.1f} {entry['mel_rel_l2']:>10.1e} "
                         f"{entry['log_max_abs_above_guard']:>10.1e} "
                         f"{ {True: 'yes', False: 'NO', None: '-'}[entry['correct']]}")
        floor = case["floors"]
        compute = ", ".join(f"{mode} {ms:.4f}" for mode, ms in floor["compute_floor_ms"].items())
        gflops = floor["flops_kernel_padded"] / 1e9
        lines.append(f"      floors: bandwidth {floor['bandwidth_floor_ms']:.4f} ms "
                     f"({floor['bytes'] / 1e6:.1f} MB); compute ({gflops:.2f} GFLOP padded) "
                     f"ms: {compute}")
    return "\n".join(lines)


def write_results(path: Path, device_name: str, cases: list[dict], bandwidth: float,
                  throughput: dict, targets: dict, complete: bool = True) -> None:
    merge_results(path, "log_mel", {
        "device": device_name,
        **environment(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "complete": complete,
        "dtype": "float32 waveforms and features",
        "settings": SETTINGS,
        "timing": "triton.testing.do_bench, quantiles [0.5, 0.2, 0.8], ms, log-mel output",
        "copy_bandwidth_GBps": bandwidth / 1e6,
        "matmul_TFLOPS": {mode: rate / 1e9 for mode, rate in throughput.items()},
        "check_tolerances": CHECK_TOLERANCES,
        "targets": targets,
        "cases": cases,
    })


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dry_run:
        device, device_name = torch.device("cpu"), "cpu-dry-run"
        batches, samples = args.batches or [1, 2], 1600
        _common.CPU_REPEATS = 1
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the CPU smoke test", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(device)
        batches = args.batches or (QUICK_BATCHES if args.quick else BATCHES)
        samples = SECONDS * SAMPLE_RATE
    output = args.output
    if output is None:
        output = (Path(os.environ.get("TMPDIR", "/tmp")) / "kdcore-gpu-log-mel-dry-run.json"
                  if args.dry_run else RESULTS_DIR / f"{device_slug(device_name)}.json")
    bandwidth = copy_bandwidth(device)
    throughput = matmul_throughput(device)
    fns = providers(device, args.precisions)
    flops_per_frame = kernel_flops_per_frame(device)
    cases = []
    for batch_size in batches:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            cases.append({"batch": batch_size, "skipped": f"budget {args.budget_s:.0f} s spent"})
            continue
        try:
            cases.append(run_batch(batch_size, device, fns, bandwidth, throughput, samples,
                                   flops_per_frame))
        except Exception as error:  # e.g. out of memory: record, go on
            cases.append({"batch": batch_size, "error": f"{type(error).__name__}: {error}"[:500]})
        write_results(output, device_name, cases, bandwidth, throughput,
                      evaluate_targets(cases), complete=False)
        print(f"done batch {batch_size}", file=sys.stderr, flush=True)
    targets = evaluate_targets(cases)
    print(f"device: {device_name}; torch {torch.__version__}; copy {bandwidth / 1e6:.0f} GB/s; "
          "matmul TFLOPS " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in throughput.items()))
    print(format_table(cases))
    for key, verdict in targets.items():
        print(f"target {key}: {verdict['speedup']:.2f}x (>= {verdict['target']}x) "
              f"{'MET' if verdict['met'] else 'NOT MET'}")
    write_results(output, device_name, cases, bandwidth, throughput, targets)
    print(f"wrote {output}")
    failed = [name for case in cases for name, entry in case.get("providers", {}).items()
              if entry["correct"] is False] + [f"batch {c['batch']}" for c in cases
                                               if "error" in c]
    if failed:
        print(f"correctness check FAILED for {sorted(set(failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
