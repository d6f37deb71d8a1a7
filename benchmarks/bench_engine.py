"""End-to-end distillation benchmark: the classic tutorial loop against :class:`kdcore.Distiller`
on the same teacher/student pair and data.

- ``baseline``: fp32; ``torch.stft`` -> power -> mel matmul -> ``log(x + 1e-6)`` per batch; a
  teacher forward (``no_grad``) every step; ``kl_div(log_softmax(s/T), softmax(t/T))*T^2`` and
  ``cross_entropy`` as eager ops; ``AdamW`` (default, unfused); ``loss.item()`` every step.
- ``distiller``: ``kdcore.LogMel`` (same features), ``teacher_mode="cached"`` (the cache is
  filled in a first epoch, as an offline pass would), fused loss ops, fused AdamW, no host
  sync in the step; on CUDA also bf16 autocast, ``compile=True`` and ``cuda_graphs=True``.

Models: ``kdcore.models.TeacherCNN`` / ``StudentDSCNN`` on 64 log-mels (n_fft 400, hop 160,
HTK, no norm); data: ``kdcore.data.SyntheticAudio`` (16 classes, 16 kHz).

- ``cpu`` config: 256 clips x 1 s, batch 32, teacher width 24 (~0.67M params), student width
  24 (~18k params).
- ``gpu`` config: 1024 clips x 10 s, batch 128, teacher width 150 (~26M), student width 176
  (~0.96M, under 1/20 of the teacher).

Reported: samples/s (best of three interleaved steady-state epochs per side), the speed-up,
a per-phase breakdown (data, frontend, teacher, student fwd/bwd, loss, optimizer; measured in
a separate epoch with a device sync at every phase boundary, so phase sums exceed the
throughput epoch), and the validation accuracy of both students after the same number of
epochs (``--accuracy-epochs``).

On a shared, loaded CPU, OpenMP pool threads that spin between parallel regions starve the
next region (a fused AdamW step after any large op took 20-60x longer here); run with
``OMP_WAIT_POLICY=PASSIVE`` (the committed CPU results were; ``environment`` records it).

Usage::

    # -> benchmarks/results/cpu-engine.json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_engine.py --config cpu
    # -> benchmarks/results/<gpu>.json, merged under the "engine" key
    python benchmarks/bench_engine.py --config gpu
    pytest benchmarks/bench_engine.py --benchmark-enable   # a tiny pytest-benchmark case
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import kdcore
from kdcore.data import SyntheticAudio
from kdcore.engine.distiller import PhaseTimer
from kdcore.models.cnn import StudentDSCNN, TeacherCNN

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 16
FRONTEND = dict(sample_rate=16000, n_fft=400, hop_length=160, n_mels=64, mel_scale="htk",
                norm=None, log="ln", log_eps=1e-6)
TEMPERATURE, ALPHA = 2.0, 0.5

CONFIGS = {
    "cpu": dict(clips=256, val_clips=128, seconds=1.0, batch=32, teacher_width=24,
                student_width=24, teacher_epochs=4, accuracy_epochs=4, lr=3e-3),
    "gpu": dict(clips=1024, val_clips=256, seconds=10.0, batch=128, teacher_width=150,
                student_width=176, teacher_epochs=3, accuracy_epochs=3, lr=3e-3),
    "tiny": dict(clips=64, val_clips=32, seconds=0.5, batch=16, teacher_width=8,
                 student_width=8, teacher_epochs=1, accuracy_epochs=1, lr=3e-3),
}


class StftMel(torch.nn.Module):
    """The tutorial frontend: ``torch.stft`` -> |X|^2 -> mel -> ``log(x + 1e-6)``, (B, 64, F)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(FRONTEND["n_fft"]))
        self.register_buffer("filterbank", kdcore.mel_filterbank(
            FRONTEND["n_fft"] // 2 + 1, f_min=0.0, f_max=FRONTEND["sample_rate"] / 2,
            n_mels=FRONTEND["n_mels"], sample_rate=FRONTEND["sample_rate"],
            dtype=torch.float32))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(waveforms, FRONTEND["n_fft"], FRONTEND["hop_length"],
                              window=self.window, center=True, pad_mode="reflect",
                              return_complex=True)
        power = spectrum.abs().square()
        mel = torch.matmul(power.transpose(1, 2), self.filterbank).transpose(1, 2)
        return torch.log(mel + FRONTEND["log_eps"])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(config: dict) -> tuple[SyntheticAudio, SyntheticAudio]:
    train = SyntheticAudio(config["clips"], split="train", duration=config["seconds"])
    val = SyntheticAudio(config["val_clips"], split="val", duration=config["seconds"])
    for dataset in (train, val):  # generate (and keep) every clip before any timing
        for index in range(len(dataset)):
            dataset[index]
    return train, val


def make_loader(dataset, config: dict, device: torch.device, shuffle: bool = True):
    return DataLoader(dataset, batch_size=config["batch"], shuffle=shuffle,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0))


def train_teacher(config: dict, train, device: torch.device) -> TeacherCNN:
    """The teacher, fitted with plain cross-entropy so its soft labels carry information."""
    torch.manual_seed(0)
    teacher = TeacherCNN(NUM_CLASSES, n_mels=FRONTEND["n_mels"],
                         width=config["teacher_width"]).to(device)
    frontend = StftMel().to(device)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=config["lr"])
    loader = make_loader(train, config, device)
    for _ in range(config["teacher_epochs"]):
        for waveforms, labels, _ in loader:
            waveforms, labels = waveforms.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=device.type == "cuda"):
                loss = F.cross_entropy(teacher(frontend(waveforms)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return teacher.eval()


def make_student(config: dict, device: torch.device) -> StudentDSCNN:
    torch.manual_seed(1)
    return StudentDSCNN(NUM_CLASSES, n_mels=FRONTEND["n_mels"],
                        width=config["student_width"]).to(device)


def baseline_epoch(teacher, student, optimizer, frontend, loader, device,
                   timer: PhaseTimer | None = None) -> tuple[float, int]:
    """One epoch of the tutorial loop; returns (seconds, samples)."""
    lap = timer.lap if timer is not None else (lambda phase: None)
    student.train()
    samples = 0
    _sync(device)
    started = time.perf_counter()
    if timer is not None:
        timer.last = started
    for waveforms, labels, _ in loader:
        waveforms, labels = waveforms.to(device), labels.to(device)
        lap("data")
        features = frontend(waveforms)
        lap("frontend")
        with torch.no_grad():
            teacher_logits = teacher(features)
        lap("teacher")
        student_logits = student(features)
        lap("student_fwd")
        kd = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, dim=-1),
                      F.softmax(teacher_logits / TEMPERATURE, dim=-1),
                      reduction="batchmean") * TEMPERATURE**2
        loss = ALPHA * kd + (1 - ALPHA) * F.cross_entropy(student_logits, labels)
        lap("loss")
        optimizer.zero_grad()
        loss.backward()
        lap("student_bwd")
        optimizer.step()
        loss.item()
        lap("optimizer")
        samples += waveforms.shape[0]
    _sync(device)
    return time.perf_counter() - started, samples


@torch.no_grad()
def accuracy(student, frontend, loader, device) -> float:
    student.eval()
    correct = total = 0
    for waveforms, labels, _ in loader:
        predicted = student(frontend(waveforms.to(device))).argmax(-1).cpu()
        correct += int((predicted == labels).sum())
        total += labels.numel()
    return correct / total


def make_distiller(teacher, student, device, config: dict, cache_dir: Path) -> kdcore.Distiller:
    on_gpu = device.type == "cuda"
    return kdcore.Distiller(
        teacher, student, frontend=kdcore.LogMel(**FRONTEND), temperature=TEMPERATURE,
        alpha=ALPHA, teacher_mode="cached", precision="bf16", compile=on_gpu,
        cuda_graphs=on_gpu, lr=config["lr"], schedule="constant", device=device,
        progress=False, log_every=10_000, checkpoint_every=0, seed=0, cache_dir=cache_dir)


def run(config_name: str, device: torch.device, accuracy_epochs: int | None = None) -> dict:
    config = dict(CONFIGS[config_name])
    if accuracy_epochs is not None:
        config["accuracy_epochs"] = accuracy_epochs
    train, val = make_data(config)
    teacher = train_teacher(config, train, device)
    frontend = StftMel().to(device)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    student_params = sum(p.numel() for p in make_student(config, device).parameters())
    result: dict = {"config": config_name, **config, "device": str(device),
                    "teacher_params": teacher_params, "student_params": student_params,
                    "teacher_accuracy": None}
    with torch.no_grad():
        correct = sum(int((teacher(frontend(w.to(device))).argmax(-1).cpu() == y).sum())
                      for w, y, _ in make_loader(val, config, device, shuffle=False))
    result["teacher_accuracy"] = correct / len(val)

    # --- accuracy: both students from the same init, the same number of epochs
    student = make_student(config, device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config["lr"])
    loader = make_loader(train, config, device)
    for _ in range(config["accuracy_epochs"]):
        baseline_epoch(teacher, student, optimizer, frontend, loader, device)
    val_loader = make_loader(val, config, device, False)
    baseline_accuracy = accuracy(student, frontend, val_loader, device)
    scratch = tempfile.TemporaryDirectory()
    cache_dir = Path(scratch.name) / "cache"
    distiller = make_distiller(teacher, make_student(config, device), device, config, cache_dir)
    history = distiller.fit(loader, epochs=config["accuracy_epochs"])  # epoch 1 fills the cache
    fill_rate = history.epochs[0]["samples_per_s"]
    distiller_accuracy = accuracy(distiller.student, frontend, val_loader, device)

    # --- throughput: interleaved steady-state epochs, best of three each (the CPU may be
    # shared with other work, which only ever slows an epoch down)
    baseline_rates, distiller_rates = [], []
    for _ in range(3):
        seconds, samples = baseline_epoch(teacher, student, optimizer, frontend, loader, device)
        baseline_rates.append(samples / seconds)
        distiller_rates.append(distiller.fit(loader, epochs=1).epochs[-1]["samples_per_s"])
    baseline_rate, distiller_rate = max(baseline_rates), max(distiller_rates)

    # --- per-phase breakdown: one more epoch each with a device sync at every phase boundary
    timer = PhaseTimer(device)
    baseline_epoch(teacher, student, optimizer, frontend, loader, device, timer)
    baseline_phases = _per_sample_ms(timer.totals, len(train))
    distiller._timer = PhaseTimer(device)
    distiller.fit(loader, epochs=1)
    distiller_phases = _per_sample_ms(distiller._timer.totals, len(train))
    distiller._timer = None
    scratch.cleanup()

    result.update({
        "baseline": {"samples_per_s": baseline_rate, "epoch_samples_per_s": baseline_rates,
                     "phase_ms_per_sample": baseline_phases, "val_accuracy": baseline_accuracy},
        "distiller": {"samples_per_s": distiller_rate, "epoch_samples_per_s": distiller_rates,
                      "cache_fill_epoch_samples_per_s": fill_rate,
                      "phase_ms_per_sample": distiller_phases,
                      "val_accuracy": distiller_accuracy,
                      "loss_backend": _resolved_backend(device)},
        "speedup": distiller_rate / baseline_rate,
    })
    return result


def _per_sample_ms(totals: dict[str, float], samples: int) -> dict[str, float]:
    phases = ("data", "frontend", "teacher", "student_fwd", "loss", "student_bwd", "optimizer")
    merged = defaultdict(float, totals)
    return {phase: 1000.0 * merged[phase] / max(samples, 1) for phase in phases}


def _resolved_backend(device: torch.device) -> str:
    from kdcore import _backends

    return _backends.resolve_backend("auto", device)


def environment(device: torch.device) -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "kdcore": kdcore.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "cpu": _cpu_model()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_results(result: dict, device: torch.device) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        path = RESULTS / f"{name}.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged["engine"] = result
        path.write_text(json.dumps(merged, indent=1) + "\n")
    else:
        path = RESULTS / "cpu-engine.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=tuple(CONFIGS), default=None,
                        help="cpu or gpu (default: gpu when CUDA is available)")
    parser.add_argument("--accuracy-epochs", type=int, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.config or ("gpu" if device.type == "cuda" else "cpu")
    if name == "gpu" and device.type != "cuda":
        sys.exit("the gpu config needs CUDA")
    result = run(name, device, args.accuracy_epochs)
    result["environment"] = environment(device)
    path = write_results(result, device) if name != "tiny" else None
    print(json.dumps({k: result[k] for k in ("config", "teacher_params", "student_params",
                                              "teacher_accuracy", "speedup")}, indent=1))
    for side in ("baseline", "distiller"):
        phases = ", ".join(f"{k} {v:.3f}" for k, v in result[side]["phase_ms_per_sample"].items())
        print(f"{side}: {result[side]['samples_per_s']:.1f} samples/s, "
              f"val acc {result[side]['val_accuracy']:.3f}; ms/sample: {phases}")
    print(f"wrote {path}")


def test_engine_tiny_config(benchmark):
    """pytest-benchmark: one Distiller epoch on the tiny config (cache warm)."""
    device = torch.device("cpu")
    config = CONFIGS["tiny"]
    train, _ = make_data(config)
    teacher = train_teacher(config, train, device)
    with tempfile.TemporaryDirectory() as scratch:
        distiller = make_distiller(teacher, make_student(config, device), device, config,
                                   Path(scratch))
        distiller.fit(make_loader(train, config, device), epochs=1)
        history = benchmark.pedantic(
            lambda: distiller.fit(make_loader(train, config, device), epochs=1, resume=False),
            rounds=3, iterations=1)
    assert math.isfinite(history.epochs[-1]["train_loss"])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
