"""End-to-end distillation benchmark: the classic tutorial loop against :class:`kdcore.Distiller`
on the same teacher/student pair and data, for samples/s and for accuracy.

- ``baseline``: fp32; ``torch.stft`` -> power -> mel matmul -> ``log(x + 1e-6)`` per batch; a
  teacher forward (``no_grad``) every step; ``kl_div(log_softmax(s/T), softmax(t/T))*T^2`` and
  ``cross_entropy`` as eager ops; unfused ``AdamW``; ``loss.item()`` every step.
- ``distiller``: ``kdcore.LogMel`` (the same features), ``teacher_mode="cached"`` (the cache is
  filled in the first epoch of the first seed, as an offline pass would, and reused by later
  seeds), fused loss ops, fused AdamW, no host sync in the step; on CUDA also bf16 autocast,
  ``compile=True`` and ``cuda_graphs=True``.

Both sides use one recipe: AdamW (weight decay 0.01 on weights of dim >= 2 only, as the
Distiller does), one-cycle LR with the same peak and step count, T=2, alpha=0.5, the same
batch size, the same student initialisation per seed and no augmentation (so the cached
teacher sees exactly the view the online one would). Only the data order differs: the
Distiller shuffles with its own seeded sampler.

Models: ``kdcore.models.create("teacher_cnn")`` / ``create("student_dscnn")``; data:
``kdcore.data.SyntheticAudio`` (deterministic; ``results/cpu-engine.json`` was measured on its
first, 16-class version, before the vowel cue replaced timbre: docs/synthetic.md).
The teacher is trained once per run with plain cross-entropy (same frontend, one-cycle LR)
and its weights are kept in a temporary directory (``--teacher-cache DIR`` keeps them across
runs, keyed by the configuration).

- ``cpu`` config: 8 kHz, 0.5 s clips, 1536 train / 512 test clips, 40 log-mels (n_fft 256,
  hop 128, 32 frames), batch 64; teacher width 24 (~663k params, 15 epochs), student width 16
  (~10k, 1/66 of the teacher), 25 epochs per side, seeds 0-3.
- ``gpu`` config: 16 kHz, 10 s clips, 1024 train / 256 test, 64 log-mels (n_fft 400, hop
  160), batch 128; teacher width 150 (~26M), student width 176 (~0.96M, under 1/20 of the
  teacher), 3 epochs, seed 0.

Reported: test accuracy of the teacher and of both students after the same number of epochs
(per seed, mean and sample std over seeds, and the paired per-seed
difference with its standard error); samples/s: the best of five interleaved
steady-state epochs per side (baseline epoch, Distiller epoch, repeated; on throwaway copies
of the trained students, with a constant LR) and, as a cross-check, the best and median
per-epoch rates of the accuracy runs; the speed-up; a per-phase breakdown (data, frontend,
teacher, student fwd/bwd, loss, optimizer; one more epoch each with a device sync at every
phase boundary, so the phase sums exceed a throughput epoch); the largest difference between
the two frontends' features.

On a shared, loaded CPU, OpenMP pool threads that spin between parallel regions starve the
next region (a fused AdamW step after any large op took 20-60x longer here); run with
``OMP_WAIT_POLICY=PASSIVE`` (the committed CPU results were; ``environment`` records it).

Usage::

    # -> benchmarks/results/cpu-engine.json (about 7 minutes on 2 cores)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_engine.py --config cpu
    # -> benchmarks/results/<gpu>.json, merged under the "engine" key
    python benchmarks/bench_engine.py --config gpu
    pytest benchmarks/bench_engine.py --benchmark-enable   # a tiny pytest-benchmark case
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import cpu_model, device_slug, merge_results
from torch.utils.data import DataLoader

import kdcore
from kdcore.data import SyntheticAudio
from kdcore.engine.distiller import PhaseTimer
from kdcore.models import create

RESULTS = Path(__file__).resolve().parent / "results"
TEMPERATURE, ALPHA, WEIGHT_DECAY = 2.0, 0.5, 1e-2

CONFIGS = {
    "cpu": dict(sample_rate=8000, seconds=0.5, n_fft=256, hop_length=128, n_mels=40,
                clips=1536, test_clips=512, batch=64, teacher_width=24, student_width=16,
                teacher_epochs=15, teacher_lr=3e-3, epochs=25, lr=5e-3, seeds=(0, 1, 2, 3)),
    "gpu": dict(sample_rate=16000, seconds=10.0, n_fft=400, hop_length=160, n_mels=64,
                clips=1024, test_clips=256, batch=128, teacher_width=150, student_width=176,
                teacher_epochs=3, teacher_lr=3e-3, epochs=3, lr=3e-3, seeds=(0,)),
    "tiny": dict(sample_rate=8000, seconds=0.25, n_fft=256, hop_length=128, n_mels=40,
                 clips=64, test_clips=32, batch=16, teacher_width=4, student_width=4,
                 teacher_epochs=1, teacher_lr=3e-3, epochs=1, lr=3e-3, seeds=(0,)),
}


def frontend_settings(config: dict) -> dict:
    """``kdcore.LogMel`` keywords of ``config``: HTK mels, no norm, ``ln(x + 1e-6)``."""
    return dict(sample_rate=config["sample_rate"], n_fft=config["n_fft"],
                hop_length=config["hop_length"], n_mels=config["n_mels"], mel_scale="htk",
                norm=None, log="ln", log_eps=1e-6)


class StftMel(torch.nn.Module):
    """The tutorial frontend: ``torch.stft`` -> |X|^2 -> mel -> ``log(x + 1e-6)``,
    waveforms (B, T) to (B, n_mels, frames) fp32."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.n_fft, self.hop_length = config["n_fft"], config["hop_length"]
        self.register_buffer("window", torch.hann_window(self.n_fft))
        self.register_buffer("filterbank", kdcore.mel_filterbank(
            self.n_fft // 2 + 1, f_min=0.0, f_max=config["sample_rate"] / 2,
            n_mels=config["n_mels"], sample_rate=config["sample_rate"], dtype=torch.float32))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(waveforms, self.n_fft, self.hop_length, window=self.window,
                              center=True, pad_mode="reflect", return_complex=True)
        power = spectrum.abs().square()
        mel = torch.matmul(power.transpose(1, 2), self.filterbank).transpose(1, 2)
        return torch.log(mel + 1e-6)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(config: dict) -> tuple[SyntheticAudio, SyntheticAudio]:
    data_args = dict(sample_rate=config["sample_rate"], duration=config["seconds"], seed=0)
    train = SyntheticAudio(config["clips"], split="train", **data_args)
    test = SyntheticAudio(config["test_clips"], split="test", **data_args)
    for dataset in (train, test):  # generate (and keep) every clip before any timing
        for index in range(len(dataset)):
            dataset[index]
    return train, test


def make_loader(dataset, config: dict, device: torch.device, shuffle: bool = True,
                seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=config["batch"], shuffle=shuffle,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed))


def make_optimizer(model: torch.nn.Module, lr: float, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Unfused AdamW (decay on weights of dim >= 2 only) with a one-cycle LR."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr,
                                                    total_steps=max(total_steps, 1))
    return optimizer, scheduler


def _teacher_key(config: dict) -> str:
    fields = ("sample_rate", "seconds", "n_fft", "hop_length", "n_mels", "clips", "batch",
              "teacher_width", "teacher_epochs", "teacher_lr")
    text = json.dumps({k: config[k] for k in fields}, sort_keys=True) + torch.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_teacher(config: dict, train, device: torch.device, cache: Path
                  ) -> tuple[torch.nn.Module, float]:
    """The teacher, fitted with plain cross-entropy on ``kdcore.LogMel`` features so its soft
    labels carry information; weights kept in ``cache``. Returns (teacher, seconds spent)."""
    torch.manual_seed(0)
    teacher = create("teacher_cnn", train.num_classes, n_mels=config["n_mels"],
                     width=config["teacher_width"]).to(device)
    path = cache / f"teacher-{_teacher_key(config)}.pt"
    if path.exists():
        teacher.load_state_dict(torch.load(path, map_location=device))
        return teacher.eval(), 0.0
    started = time.perf_counter()
    frontend = kdcore.LogMel(**frontend_settings(config)).to(device)
    loader = make_loader(train, config, device)
    optimizer, scheduler = make_optimizer(teacher, config["teacher_lr"],
                                          len(loader) * config["teacher_epochs"])
    teacher.train()
    for _ in range(config["teacher_epochs"]):
        for waveforms, labels, _ in loader:
            waveforms, labels = waveforms.to(device), labels.to(device)
            with torch.no_grad():
                features = frontend(waveforms)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=device.type == "cuda"):
                loss = F.cross_entropy(teacher(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), path)
    return teacher.eval(), time.perf_counter() - started


def make_student(config: dict, num_classes: int, device: torch.device, seed: int
                 ) -> torch.nn.Module:
    torch.manual_seed(1000 + seed)
    return create("student_dscnn", num_classes, n_mels=config["n_mels"],
                  width=config["student_width"]).to(device)


def baseline_epoch(teacher, student, optimizer, scheduler, frontend, loader, device,
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
        if scheduler is not None:
            scheduler.step()
        loss.item()
        lap("optimizer")
        samples += waveforms.shape[0]
    _sync(device)
    return time.perf_counter() - started, samples


@torch.no_grad()
def accuracy(model, frontend, loader, device) -> float:
    model.eval()
    correct = total = 0
    for waveforms, labels, _ in loader:
        predicted = model(frontend(waveforms.to(device))).argmax(-1).cpu()
        correct += int((predicted == labels).sum())
        total += labels.numel()
    return correct / total


def make_distiller(teacher, student, device, config: dict, cache_dir: Path, seed: int,
                   schedule: str = "onecycle") -> kdcore.Distiller:
    on_gpu = device.type == "cuda"
    return kdcore.Distiller(
        teacher, student, frontend=kdcore.LogMel(**frontend_settings(config)),
        temperature=TEMPERATURE, alpha=ALPHA, teacher_mode="cached", precision="bf16",
        compile=on_gpu, cuda_graphs=on_gpu, lr=config["lr"], weight_decay=WEIGHT_DECAY,
        schedule=schedule, device=device, progress=False, log_every=10_000,
        checkpoint_every=0, seed=seed, cache_dir=cache_dir)


def _mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample std and the standard error of the mean."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std,
            "standard_error": std / math.sqrt(len(values))}


def run(config_name: str, device: torch.device, epochs: int | None = None,
        seeds: tuple[int, ...] | None = None, teacher_cache: Path | None = None) -> dict:
    config = dict(CONFIGS[config_name])
    if epochs is not None:
        config["epochs"] = epochs
    if seeds is not None:
        config["seeds"] = tuple(seeds)
    started = time.perf_counter()
    train, test = make_data(config)
    num_classes = train.num_classes
    scratch = tempfile.TemporaryDirectory()
    work = Path(scratch.name)
    teacher, teacher_seconds = train_teacher(config, train, device,
                                             teacher_cache or work / "teacher")
    frontend = StftMel(config).to(device)
    logmel = kdcore.LogMel(**frontend_settings(config)).to(device)
    test_loader = make_loader(test, config, device, shuffle=False)
    probe = next(iter(test_loader))[0].to(device)
    with torch.no_grad():
        stft_features, logmel_features = frontend(probe), logmel(probe)
    student_params = sum(p.numel() for p in make_student(config, num_classes, device,
                                                         0).parameters())
    result: dict = {
        "config": config_name, **config, "device": str(device), "dtype": "float32",
        "num_classes": num_classes, "feature_shape": list(stft_features.shape[1:]),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": student_params, "teacher_train_seconds": teacher_seconds,
        "teacher_test_accuracy": accuracy(teacher, logmel, test_loader, device),
        "frontend_max_abs_diff": float((stft_features - logmel_features).abs().max()),
    }

    # --- accuracy: per seed, both students from the same init for the same epochs and LR
    # schedule; the per-epoch rates are kept as a cross-check of the throughput numbers
    cache_dir = work / "teacher_cache"
    runs = {"baseline": [], "distiller": []}
    rates = {"baseline": [], "distiller": []}
    fill_rate = None
    trained = {}
    for seed in config["seeds"]:
        student = make_student(config, num_classes, device, seed)
        initial = copy.deepcopy(student.state_dict())
        loader = make_loader(train, config, device, seed=seed)
        optimizer, scheduler = make_optimizer(student, config["lr"],
                                              len(loader) * config["epochs"])
        torch.manual_seed(seed)
        for _ in range(config["epochs"]):
            seconds, samples = baseline_epoch(teacher, student, optimizer, scheduler,
                                              frontend, loader, device)
            rates["baseline"].append(samples / seconds)
        runs["baseline"].append({"seed": seed,
                                 "test_accuracy": accuracy(student, frontend, test_loader,
                                                           device)})
        twin = make_student(config, num_classes, device, seed)
        twin.load_state_dict(initial)
        distiller = make_distiller(teacher, twin, device, config, cache_dir, seed)
        history = distiller.fit(loader, epochs=config["epochs"])
        epoch_rates = [record["samples_per_s"] for record in history.epochs]
        if fill_rate is None:  # the first epoch of the first seed fills the teacher cache
            fill_rate, epoch_rates = epoch_rates[0], epoch_rates[1:]
        rates["distiller"].extend(epoch_rates)
        runs["distiller"].append({"seed": seed,
                                  "test_accuracy": accuracy(twin, logmel, test_loader, device),
                                  "train_accuracy_last_epoch":
                                      history.epochs[-1].get("train_accuracy")})
        trained = {"baseline": student, "distiller": twin}

    # --- throughput: interleaved steady-state epochs (baseline, Distiller, x5), best of five
    # per side, on copies of the last seed's students with a constant LR (the CPU may be shared
    # with other work, which only ever slows an epoch down)
    loader = make_loader(train, config, device)
    student = copy.deepcopy(trained["baseline"])
    optimizer, _ = make_optimizer(student, config["lr"], 1)
    distiller = make_distiller(teacher, copy.deepcopy(trained["distiller"]), device, config,
                               cache_dir, 0, schedule="constant")
    baseline_rates, distiller_rates = [], []
    for _ in range(5):
        seconds, samples = baseline_epoch(teacher, student, optimizer, None, frontend, loader,
                                          device)
        baseline_rates.append(samples / seconds)
        distiller_rates.append(distiller.fit(loader, epochs=1).epochs[-1]["samples_per_s"])
    baseline_rate, distiller_rate = max(baseline_rates), max(distiller_rates)

    # --- per-phase breakdown: one more epoch each with a device sync at every phase boundary
    timer = PhaseTimer(device)
    baseline_epoch(teacher, student, optimizer, None, frontend, loader, device, timer)
    baseline_phases = _per_sample_ms(timer.totals, len(train))
    distiller._timer = PhaseTimer(device)
    distiller.fit(loader, epochs=1)
    distiller_phases = _per_sample_ms(distiller._timer.totals, len(train))
    distiller._timer = None
    scratch.cleanup()

    for side, phases, rate, interleaved in (
            ("baseline", baseline_phases, baseline_rate, baseline_rates),
            ("distiller", distiller_phases, distiller_rate, distiller_rates)):
        result[side] = {
            "samples_per_s": rate, "interleaved_epoch_samples_per_s": interleaved,
            "accuracy_run_samples_per_s": {
                "best": max(rates[side], default=None),
                "median": statistics.median(rates[side]) if rates[side] else None,
                "epochs": len(rates[side])},
            "phase_ms_per_sample": phases,
            "test_accuracy": _mean_std([r["test_accuracy"] for r in runs[side]]),
            "runs": runs[side]}
    result["distiller"]["cache_fill_epoch_samples_per_s"] = fill_rate
    result["distiller"]["loss_backend"] = _resolved_backend(device)
    differences = [d["test_accuracy"] - b["test_accuracy"]
                   for b, d in zip(runs["baseline"], runs["distiller"], strict=True)]
    result["accuracy_difference_distiller_minus_baseline"] = _mean_std(differences)
    result["speedup"] = distiller_rate / baseline_rate
    result["total_seconds"] = time.perf_counter() - started
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
            "cpu": cpu_model()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info



def write_results(result: dict, device: torch.device) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        name = device_slug(torch.cuda.get_device_name(device))
        return merge_results(RESULTS / f"{name}.json", "engine", result)
    else:
        path = RESULTS / "cpu-engine.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=tuple(CONFIGS), default=None,
                        help="cpu or gpu (default: gpu when CUDA is available)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="student epochs per side (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="student seeds (default: the config's)")
    parser.add_argument("--teacher-cache", type=Path, default=None,
                        help="directory keeping the trained teacher across runs")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.config or ("gpu" if device.type == "cuda" else "cpu")
    if name == "gpu" and device.type != "cuda":
        sys.exit("the gpu config needs CUDA")
    result = run(name, device, args.epochs, args.seeds, args.teacher_cache)
    result["environment"] = environment(device)
    path = write_results(result, device) if name != "tiny" else None
    print(json.dumps({k: result[k] for k in (
        "config", "teacher_params", "student_params", "teacher_test_accuracy",
        "frontend_max_abs_diff", "accuracy_difference_distiller_minus_baseline", "speedup",
        "total_seconds")}, indent=1))
    for side in ("baseline", "distiller"):
        phases = ", ".join(f"{k} {v:.3f}" for k, v in result[side]["phase_ms_per_sample"].items())
        test = result[side]["test_accuracy"]
        print(f"{side}: {result[side]['samples_per_s']:.1f} samples/s, test acc "
              f"{test['mean']:.3f} +- {test['std']:.3f} over {len(result['seeds'])} seeds; "
              f"ms/sample: {phases}")
    print(f"wrote {path}")


def test_engine_tiny_config(benchmark):
    """pytest-benchmark: one Distiller epoch on the tiny config (cache warm)."""
    device = torch.device("cpu")
    config = CONFIGS["tiny"]
    train, _ = make_data(config)
    with tempfile.TemporaryDirectory() as scratch:
        teacher, _ = train_teacher(config, train, device, Path(scratch) / "teacher")
        student = make_student(config, train.num_classes, device, 0)
        distiller = make_distiller(teacher, student, device, config, Path(scratch) / "cache", 0)
        distiller.fit(make_loader(train, config, device), epochs=1)
        history = benchmark.pedantic(
            lambda: distiller.fit(make_loader(train, config, device), epochs=1, resume=False),
            rounds=3, iterations=1)
    assert math.isfinite(history.epochs[-1]["train_loss"])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
