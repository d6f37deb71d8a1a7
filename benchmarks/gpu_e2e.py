"""End-to-end GPU throughput: :class:`kdcore.Distiller` against a seed-style eager loop, on the
same teacher, student and data, sized for one short GPU lease.

- ``seed-fp32`` / ``seed-bf16``: the tutorial loop (``bench_engine``'s): the frontend is
  torchaudio ``MelSpectrogram`` (HTK, no norm) + ``log(x + 1e-6)`` when torchaudio imports, else
  ``torch.stft`` -> power -> mel matmul -> log; a teacher forward under ``no_grad`` every step (no
  cache); ``kl_div(log_softmax(s/T), softmax(t/T), batchmean)*T^2`` and ``cross_entropy`` as
  eager ops; unfused ``AdamW``; ``loss.item()`` every step. ``seed-bf16`` runs the same step
  under ``torch.autocast(bfloat16)``.
- ``distiller-{online,cached}[-compile]``: ``kdcore.Distiller`` with ``kdcore.LogMel``,
  ``precision="bf16"``, ``teacher_mode`` online or cached, ``compile`` off or on.

Every side runs ``--epochs`` epochs (default 3) from the same student initialisation; the first
epoch is the warm-up (torch.compile, the cached teacher's fill) and is reported apart (the
cache-fill epoch as samples/s and frames/s); samples/s is the best later epoch. The speed-up
is over ``seed-bf16`` (the same precision) and over ``seed-fp32``.

Loss parity: before any timing, the Distiller's objective (``Distiller.evaluate``'s ``loss``,
precision fp32, teacher online) and the seed loop's loss, each with its own frontend, are
evaluated on the same batches with the same untrained student and teacher; their relative
difference must be under 1e-3 (the two frontends agree to about 1e-5). The same comparison in
bf16 is reported, not gated.

Data: ``clips`` random clips generated on the device (a class-dependent tone in noise; the
``SyntheticAudio`` set takes about a second a 10 s clip on one CPU core, too slow for a lease),
served by a re-iterable loader that keeps them on the device and reshuffles each epoch, so
neither side is bound by host-side loading. Models: ``kdcore.models.create("teacher_cnn")`` and
``create("student_dscnn")`` at ``bench_engine``'s ``gpu`` widths (about 26M and 0.9M params).

Usage::

    python benchmarks/gpu_e2e.py                      # on the current GPU
    python benchmarks/gpu_e2e.py --budget-s 100       # stop starting variants after 100 s
    python benchmarks/gpu_e2e.py --dry-run            # CPU smoke test (tiny config, no compile)

Results merge into ``benchmarks/results/<gpu-name>.json`` under the key ``"e2e"``; the JSON is
rewritten after every variant.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

VARIANTS = ["seed-fp32", "seed-bf16", "distiller-online", "distiller-cached",
            "distiller-cached-compile", "distiller-online-compile"]
PARITY_TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test: tiny config, Triton interpreter, no compile")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per variant, the first a warm-up (default 3; 2 in a dry "
                             "run)")
    parser.add_argument("--clips", type=int, default=None,
                        help="clips per epoch (default: 1024 on a GPU, 32 in a dry run)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new variant after this many seconds (default: no limit)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/<gpu-name>.json)")
    return parser.parse_args(argv)


_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None and _ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import RESULTS_DIR, device_slug, environment, merge_results  # noqa: E402
from bench_engine import (  # noqa: E402
    ALPHA,
    CONFIGS,
    TEMPERATURE,
    WEIGHT_DECAY,
    StftMel,
    frontend_settings,
    make_optimizer,
)

import kdcore  # noqa: E402
from kdcore.models import create  # noqa: E402

GPU_CONFIG = {**CONFIGS["gpu"], "clips": 1024, "batch": 64, "classes": 32}
# The dry run takes the plain-torch backends: the C++ one would first build its extension.
DRY_CONFIG = {**CONFIGS["tiny"], "clips": 16, "batch": 8, "classes": 4, "backend": "reference"}


class DeviceBatches:
    """Re-iterable ``(waveforms (B, T) fp32, labels (B,) int64, index (B,) int64 on the host)``
    batches over clips kept on the device, reshuffled on every pass by a seeded generator;
    full batches only. ``dataset`` gives the Distiller the item count for its cache."""

    def __init__(self, waveforms: torch.Tensor, labels: torch.Tensor, batch: int,
                 seed: int = 0, shuffle: bool = True) -> None:
        self.waveforms, self.labels, self.batch = waveforms, labels, batch
        self.dataset = range(waveforms.shape[0])
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.waveforms.shape[0] // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        count = self.waveforms.shape[0]
        order = (torch.randperm(count, generator=self.generator) if self.shuffle
                 else torch.arange(count))
        for start in range(0, len(self) * self.batch, self.batch):
            index = order[start:start + self.batch]
            on_device = index.to(self.waveforms.device, non_blocking=True)
            yield self.waveforms[on_device], self.labels[on_device], index


def make_clips(config: dict, device: torch.device, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips, samples) fp32 waveforms and (clips,) labels: a tone at 200 Hz + 60 Hz * label, at
    a random phase, in white noise (std 0.1)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = int(config["sample_rate"] * config["seconds"])
    labels = torch.randint(0, config["classes"], (config["clips"],), device=device,
                           generator=generator)
    time_s = torch.arange(samples, device=device) / config["sample_rate"]
    phase = torch.rand(config["clips"], 1, device=device, generator=generator) * 2 * math.pi
    tone = torch.sin(2 * math.pi * (200.0 + 60.0 * labels[:, None]) * time_s + phase)
    noise = torch.randn(config["clips"], samples, device=device, generator=generator)
    return (0.3 * tone + 0.1 * noise).float().contiguous(), labels


def seed_frontend(config: dict, device: torch.device) -> tuple[torch.nn.Module, str]:
    """torchaudio MelSpectrogram + log when torchaudio imports, else the torch.stft pipeline."""
    try:
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config["sample_rate"], n_fft=config["n_fft"],
            hop_length=config["hop_length"], n_mels=config["n_mels"], f_min=0.0,
            f_max=config["sample_rate"] / 2, power=2.0, norm=None, mel_scale="htk",
            center=True, pad_mode="reflect")

        class TorchaudioLogMel(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mel = mel

            def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
                return torch.log(self.mel(waveforms) + 1e-6)

        return TorchaudioLogMel().to(device), f"torchaudio {torchaudio.__version__}"
    except Exception as error:  # ImportError, or an ABI mismatch with this torch
        return StftMel(config).to(device), f"torch.stft ({type(error).__name__} on torchaudio)"


def seed_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    kd = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, dim=-1),
                  F.softmax(teacher_logits / TEMPERATURE, dim=-1),
                  reduction="batchmean") * TEMPERATURE**2
    return ALPHA * kd + (1 - ALPHA) * F.cross_entropy(student_logits, labels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_epoch(teacher, student, optimizer, frontend, loader, device: torch.device,
               bf16: bool) -> tuple[float, float, int]:
    """One epoch of the seed loop: (seconds, mean loss, samples)."""
    student.train()
    losses, samples = [], 0
    _sync(device)
    started = time.perf_counter()
    for waveforms, labels, _ in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features = frontend(waveforms)
            with torch.no_grad():
                teacher_logits = teacher(features)
            student_logits = student(features)
            loss = seed_loss(student_logits.float(), teacher_logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        samples += waveforms.shape[0]
    _sync(device)
    return time.perf_counter() - started, statistics.fmean(losses), samples


@torch.no_grad()
def seed_eval_loss(teacher, student, frontend, loader, bf16: bool) -> float:
    student.eval()
    total, count = 0.0, 0
    for waveforms, labels, _ in loader:
        with torch.autocast(waveforms.device.type, dtype=torch.bfloat16, enabled=bf16):
            features = frontend(waveforms)
            loss = seed_loss(student(features).float(), teacher(features).float(), labels)
        total += float(loss) * waveforms.shape[0]
        count += waveforms.shape[0]
    return total / count


def make_distiller(teacher, student, device, config: dict, mode: str, compile_: bool,
                   precision: str, cache_dir: Path) -> kdcore.Distiller:
    """The Distiller under test; ``config["backend"]`` (``"auto"`` on a GPU: Triton) picks the
    frontend's and the losses' backend."""
    backend = config.get("backend", "auto")
    return kdcore.Distiller(
        teacher, student, frontend=kdcore.LogMel(backend=backend, **frontend_settings(config)),
        loss_backend=backend,
        temperature=TEMPERATURE, alpha=ALPHA, teacher_mode=mode, precision=precision,
        compile=compile_, lr=config["lr"], weight_decay=WEIGHT_DECAY, schedule="constant",
        device=device, progress=False, log_every=10_000, checkpoint_every=0, seed=0,
        cache_dir=cache_dir)


def loss_parity(teacher, student_init: Callable, frontend, loader, device, config: dict,
                scratch: Path) -> dict:
    """The Distiller's evaluated objective against the seed loop's loss, same batches."""
    result = {}
    for precision in ("fp32", "bf16"):
        student = student_init()
        distiller = make_distiller(teacher, student, device, config, "online", False,
                                   precision, scratch / f"parity-{precision}")
        ours = float(distiller.evaluate(loader)["loss"])
        seed = seed_eval_loss(teacher, student, frontend, loader, bf16=precision == "bf16")
        result[precision] = {"distiller": ours, "seed": seed,
                             "rel_diff": abs(ours - seed) / max(abs(seed), 1e-30)}
    result["tolerance_fp32"] = PARITY_TOLERANCE
    result["passed"] = result["fp32"]["rel_diff"] <= PARITY_TOLERANCE
    return result


def run_variant(name: str, teacher, student_init: Callable, frontend, loader, device,
                config: dict, epochs: int, scratch: Path) -> dict:
    student = student_init()
    if name.startswith("seed"):
        optimizer, _ = make_optimizer(student, config["lr"], 1)
        rates, losses = [], []
        for _ in range(epochs):
            seconds, loss, samples = seed_epoch(teacher, student, optimizer, frontend, loader,
                                                device, bf16=name == "seed-bf16")
            rates.append(samples / seconds)
            losses.append(loss)
        return {"epoch_samples_per_s": rates, "epoch_train_loss": losses,
                "warmup_samples_per_s": rates[0],
                "samples_per_s": max(rates[1:]) if len(rates) > 1 else rates[0]}
    mode = "cached" if "cached" in name else "online"
    distiller = make_distiller(teacher, student, device, config, mode, name.endswith("compile"),
                               "bf16", scratch / name)
    history = distiller.fit(loader, epochs=epochs)
    rates = [record["samples_per_s"] for record in history.epochs]
    entry = {"epoch_samples_per_s": rates,
             "epoch_train_loss": [record.get("train_loss") for record in history.epochs],
             "warmup_samples_per_s": rates[0],
             "samples_per_s": max(rates[1:]) if len(rates) > 1 else rates[0]}
    if mode == "cached":
        frames = int(kdcore.num_frames(int(config["sample_rate"] * config["seconds"]),
                                       n_fft=config["n_fft"], hop_length=config["hop_length"],
                                       center=True))
        entry["cache_fill_samples_per_s"] = rates[0]
        entry["cache_fill_frames_per_s"] = rates[0] * frames
    return entry


def summarize(variants: dict) -> dict:
    speedups = {}
    for baseline in ("seed-bf16", "seed-fp32"):
        base = variants.get(baseline, {}).get("samples_per_s")
        if not base:
            continue
        for name, entry in variants.items():
            if name.startswith("distiller") and entry.get("samples_per_s"):
                speedups[f"{name} / {baseline}"] = entry["samples_per_s"] / base
    return speedups


def format_table(result: dict) -> str:
    lines = [f"{'variant':<26} {'samples/s':>10} {'warm-up/s':>10} {'x seed-bf16':>11} "
             f"{'x seed-fp32':>11} {'last loss':>9}"]
    for name, entry in result["variants"].items():
        if "samples_per_s" not in entry:
            lines.append(f"{name:<26} {entry.get('skipped') or entry.get('error', '')[:70]}")
            continue
        ratios = []
        for baseline in ("seed-bf16", "seed-fp32"):
            value = result["speedup"].get(f"{name} / {baseline}")
            ratios.append(f"{value:11.2f}" if value is not None else f"{'-':>11}")
        last = entry["epoch_train_loss"][-1]
        lines.append(f"{name:<26} {entry['samples_per_s']:>10.1f} "
                     f"{entry['warmup_samples_per_s']:>10.1f} {ratios[0]} {ratios[1]} "
                     f"{last if last is None else f'{last:9.4f}':>9}")
    parity = result.get("loss_parity", {})
    if "fp32" in parity:
        lines.append(f"loss parity (Distiller.evaluate vs seed loss, same batches): fp32 rel "
                     f"{parity['fp32']['rel_diff']:.1e} ({'PASS' if parity['passed'] else 'FAIL'}"
                     f" <= {PARITY_TOLERANCE:g}), bf16 rel {parity['bf16']['rel_diff']:.1e}")
    elif "error" in parity:
        lines.append(f"loss parity: error {parity['error'][:80]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dry_run:
        device, device_name, config = torch.device("cpu"), "cpu-dry-run", dict(DRY_CONFIG)
        variants = [v for v in args.variants if not v.endswith("compile")]
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the CPU smoke test", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        device_name, config = torch.cuda.get_device_name(device), dict(GPU_CONFIG)
        variants = list(args.variants)
    if args.clips is not None:
        config["clips"] = args.clips
    if args.epochs is None:
        args.epochs = 2 if args.dry_run else 3
    output = args.output
    if output is None:
        output = (Path(os.environ.get("TMPDIR", "/tmp")) / "kdcore-gpu-e2e-dry-run.json"
                  if args.dry_run else RESULTS_DIR / f"{device_slug(device_name)}.json")

    waveforms, labels = make_clips(config, device)
    loader = DeviceBatches(waveforms, labels, config["batch"])
    parity_rows = min(4 * config["batch"], config["clips"])
    parity_loader = DeviceBatches(waveforms[:parity_rows], labels[:parity_rows],
                                  config["batch"], shuffle=False)
    torch.manual_seed(0)
    teacher = create("teacher_cnn", config["classes"], n_mels=config["n_mels"],
                     width=config["teacher_width"]).to(device).eval()
    torch.manual_seed(1000)
    initial = create("student_dscnn", config["classes"], n_mels=config["n_mels"],
                     width=config["student_width"]).to(device)

    def student_init() -> torch.nn.Module:
        return copy.deepcopy(initial)

    frontend, frontend_name = seed_frontend(config, device)
    result: dict = {
        "device": device_name, **environment(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {k: v for k, v in config.items() if k not in (
            "seeds", "epochs", "test_clips", "teacher_epochs", "teacher_lr")},
        "epochs": args.epochs, "dtype": "bf16 autocast (Distiller, seed-bf16); fp32 seed-fp32",
        "seed_frontend": frontend_name,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in initial.parameters()),
        "timing": "samples/s of whole epochs (host clock after a device sync); best epoch "
                  "after the first (warm-up: compile, cache fill)",
        "variants": {}, "speedup": {}, "complete": False,
    }
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        try:
            result["loss_parity"] = loss_parity(teacher, student_init, frontend, parity_loader,
                                                device, config, scratch)
        except Exception as error:
            result["loss_parity"] = {"error": f"{type(error).__name__}: {error}"[:500],
                                     "passed": False}
        for name in args.variants:
            if name not in variants:
                result["variants"][name] = {"skipped": "needs CUDA (dry run)"}
                continue
            elapsed = time.perf_counter() - started
            if args.budget_s is not None and elapsed > args.budget_s:
                result["variants"][name] = {"skipped": f"budget {args.budget_s:.0f} s spent"}
                continue
            try:
                entry = run_variant(name, teacher, student_init, frontend, loader, device,
                                    config, args.epochs, scratch)
            except Exception as error:
                entry = {"error": f"{type(error).__name__}: {error}"[:500]}
            entry["seconds"] = time.perf_counter() - started - elapsed
            result["variants"][name] = entry
            result["speedup"] = summarize(result["variants"])
            merge_results(output, "e2e", result)
            print(f"done {name} ({entry['seconds']:.1f} s)", file=sys.stderr, flush=True)
    result["complete"] = True
    result["total_seconds"] = time.perf_counter() - started
    merge_results(output, "e2e", result)
    print(f"device: {device_name}; seed frontend: {frontend_name}; teacher "
          f"{result['teacher_params'] / 1e6:.1f}M, student {result['student_params'] / 1e6:.2f}M "
          f"params; {config['clips']} clips x {config['seconds']} s, batch {config['batch']}")
    print(format_table(result))
    print(f"wrote {output}")
    failed = (not result["loss_parity"].get("passed")
              or any("error" in entry for entry in result["variants"].values()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
