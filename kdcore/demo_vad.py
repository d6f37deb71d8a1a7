"""``kdcore demo``: distil Silero VAD into a student over 10x smaller, on real speech.

The whole job runs on the CPU in a few minutes and needs no download:

1. **Data.** The FSDD subset shipped in ``kdcore/assets/fsdd`` (300 spoken digits, 8 kHz, 6
   speakers). Each training or test *utterance* is a fixed-length window (``window_s``) of one
   speaker's clips (random gain within +-6 dB) separated by silent gaps of 0.15-0.8 s. Most
   utterances get one of kdcore's seeded noises (:mod:`kdcore.data.noise`: white, pink,
   brown, hum, bursts, or babble made of other speakers' clips) at a uniform 0-20 dB SNR;
   everything is then resampled 8 -> 16 kHz with :class:`kdcore.Resample`. Two speakers
   (``test_speakers``) are held out: the test set is their utterances, once clean and once
   noisy at each of ``test_snrs_db``.
2. **Teacher.** Silero VAD (``kdcore.teachers.load("silero-vad")``) runs once on every window,
   streaming 512-sample chunks from a reset state per window; its speech probabilities ``p``
   (one per 32 ms chunk) are cached in memory.
3. **Student.** :class:`VadStudent`: 32 log-mels with a 512-sample hop, aligned on the
   teacher's chunks, and :class:`kdcore.teachers.students.FrameStudent` with one output.
   It learns ``kd_bce_loss(student_logit, logit(p), T=1)`` (binary cross-entropy against the
   teacher's probability) with AdamW and a one-cycle schedule.
4. **Evaluation** on the held-out speakers: both models' decisions at threshold 0.5; frame
   F1 (the teacher's speech frames as the positive class) and agreement (share of frames
   where both decide alike), against two trivial predictors (all speech, all silence).

Why a short explicit loop rather than :class:`kdcore.Distiller`: the demo computes the
teacher up front, in its own phase with its own progress bar, and prints a one-line summary
with held-out agreement after every epoch; the Distiller fills its teacher cache during the
first epoch and has no per-epoch callback. The loss is kdcore's own ``kd_bce_loss``.

Outputs in ``out``: ``student.pt``, ``report.json``, ``report.md``, ``metrics.jsonl``,
``vad_timeline.png`` and ``training_curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.data.audio import read_audio
from kdcore.data.noise import make_noise, mix_at_snr
from kdcore.frontend import LogMel
from kdcore.ops.kd_bce_loss import kd_bce_loss
from kdcore.resample import Resample
from kdcore.teachers.students import FrameStudent

ASSETS = Path(__file__).resolve().parent / "assets" / "fsdd"
SOURCE_RATE = 8000
RATE = 16000
HOP = 512
NOISE_KINDS = ("white", "pink", "brown", "hum", "bursts", "babble")


@dataclasses.dataclass(frozen=True)
class VadDemoConfig:
    """Sizes of one demo run (defaults: the full run).

    ``train_windows`` training utterances of ``window_s`` seconds (default 320 of 4.096 s) from
    the speakers not in ``test_speakers``; ``clean_share`` of them stay clean (default 0.2);
    ``test_windows`` held-out utterances (default 24), scored clean and at each of
    ``test_snrs_db`` (default 0, 5, 10 dB). Student ``width``/``depth``/``kernel`` (48, 3, 5),
    ``epochs`` (10), ``batch_size`` (16), peak ``lr`` (3e-3). ``backend`` is the backend of the
    log-mel and loss ops (default ``"reference"``: plain torch, nothing to build)."""

    train_windows: int = 320
    test_windows: int = 24
    window_s: float = 4.096
    clean_share: float = 0.2
    test_speakers: tuple[str, ...] = ("nicolas", "theo")
    test_snrs_db: tuple[float, ...] = (0.0, 5.0, 10.0)
    width: int = 48
    depth: int = 3
    kernel: int = 5
    epochs: int = 10
    batch_size: int = 16
    lr: float = 3e-3
    backend: str = "reference"


FULL = VadDemoConfig()
QUICK = VadDemoConfig(train_windows=112, test_windows=8, epochs=5, batch_size=8)


class VadStudent(nn.Module):
    """Waveform (B, T) float at 16 kHz -> speech logits (B, ceil(T / 512), 1), one per
    Silero chunk.

    Log-mel (``n_mels`` mels, 1024-sample Hann window, 512 hop, centred, natural log) of the
    waveform shifted by 256 samples, so frame ``n`` is centred on the middle of the
    teacher's chunk ``n`` (samples ``[512 n, 512 n + 512)``), then a
    :class:`FrameStudent` (``width`` 48, ``depth`` 3, ``kernel`` 5 by default); receptive
    field ``1 + depth (kernel - 1)`` frames, centred."""

    def __init__(self, *, n_mels: int = 32, width: int = 48, depth: int = 3, kernel: int = 5,
                 backend: str = "reference") -> None:
        super().__init__()
        self.frontend_config = {"sample_rate": RATE, "n_fft": 1024, "win_length": 1024,
                                "hop_length": HOP, "n_mels": n_mels, "center": True,
                                "log": "ln"}
        self.frontend = LogMel(backend=backend, **self.frontend_config)
        self.net = FrameStudent(1, n_mels=n_mels, width=width, depth=depth, kernel=kernel)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2 or waveform.shape[-1] < HOP:
            raise ValueError(f"waveform must be (B, T) with T >= {HOP}, got "
                             f"{tuple(waveform.shape)}")
        frames = -(-waveform.shape[-1] // HOP)
        shifted = nn.functional.pad(waveform[:, HOP // 2:], (0, HOP // 2))
        with torch.no_grad():
            features = self.frontend(shifted)
        return self.net(features)[:, :frames]


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

def _load_fsdd() -> dict[str, list[torch.Tensor]]:
    manifest = ASSETS / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"the shipped FSDD subset is missing: {manifest}")
    clips: dict[str, list[torch.Tensor]] = {}
    for line in manifest.read_text().splitlines()[1:]:
        path, _label, speaker = line.strip().split(",")
        clips.setdefault(speaker, []).append(torch.from_numpy(read_audio(ASSETS / path)))
    return clips


def _utterance(clips: list[torch.Tensor], length: int, gen: torch.Generator) -> torch.Tensor:
    """Clips in random order with random gains (+-6 dB), separated by 0.15-0.8 s of silence,
    from a 0-0.5 s silent start, in a (length,) window at 8 kHz; speech RMS about 0.1."""
    out = torch.zeros(length)
    position = int(torch.randint(0, SOURCE_RATE // 2, (), generator=gen))
    order = torch.randperm(len(clips), generator=gen).tolist()
    for index in order:
        clip = clips[index]
        clip = clip / clip.square().mean().sqrt().clamp(min=1e-8) * 0.1
        gain = 10 ** (float(torch.empty(()).uniform_(-6, 6, generator=gen)) / 20)
        if position + clip.numel() > length:
            break
        out[position:position + clip.numel()] = clip * gain
        gap = float(torch.empty(()).uniform_(0.15, 0.8, generator=gen))
        position += clip.numel() + int(gap * SOURCE_RATE)
    return out


def _noisy(speech: torch.Tensor, kind: str, snr_db: float, seed: int,
           babble: list[torch.Tensor]) -> torch.Tensor:
    noise = make_noise(kind, speech.numel(), SOURCE_RATE, seed,
                       babble_clips=babble if kind == "babble" else None)
    return mix_at_snr(speech, noise, snr_db)


def build_data(config: VadDemoConfig, seed: int) -> dict[str, Any]:
    """Training and held-out waveforms at 16 kHz: ``train`` (N, T) float32, ``test`` a dict
    ``{"clean": (M, T), "<snr> dB": (M, T), ...}`` and per-window descriptions."""
    clips = _load_fsdd()
    unknown = sorted(set(config.test_speakers) - set(clips))
    if unknown or len(config.test_speakers) >= len(clips):
        raise ValueError(f"test_speakers must name some but not all of {sorted(clips)}, "
                         f"got {list(config.test_speakers)}")
    train_speakers = sorted(set(clips) - set(config.test_speakers))
    test_speakers = sorted(config.test_speakers)
    gen = torch.Generator().manual_seed(seed)
    length = round(config.window_s * SOURCE_RATE)
    babble_train = [c for s in train_speakers for c in clips[s]]

    train, train_info = [], []
    for i in range(config.train_windows):
        speaker = train_speakers[i % len(train_speakers)]
        # babble from the other training speakers only
        babble = [c for s in train_speakers if s != speaker for c in clips[s]]
        speech = _utterance(clips[speaker], length, gen)
        if float(torch.rand((), generator=gen)) < config.clean_share:
            train.append(speech)
            train_info.append({"speaker": speaker, "noise": "clean"})
            continue
        kind = NOISE_KINDS[int(torch.randint(len(NOISE_KINDS), (), generator=gen))]
        snr = float(torch.empty(()).uniform_(0.0, 20.0, generator=gen))
        train.append(_noisy(speech, kind, snr, seed * 100003 + i, babble))
        train_info.append({"speaker": speaker, "noise": kind, "snr_db": round(snr, 2)})

    clean, test_info = [], []
    for i in range(config.test_windows):
        speaker = test_speakers[i % len(test_speakers)]
        clean.append(_utterance(clips[speaker], length, gen))
        test_info.append({"speaker": speaker})
    test = {"clean": torch.stack(clean)}
    for snr in config.test_snrs_db:
        noisy = []
        for i, speech in enumerate(clean):
            kind = NOISE_KINDS[i % len(NOISE_KINDS)]
            noisy.append(_noisy(speech, kind, snr, seed * 100003 + 50000 + i, babble_train))
        test[f"{snr:g} dB"] = torch.stack(noisy)
    for i, info in enumerate(test_info):
        info["noise"] = NOISE_KINDS[i % len(NOISE_KINDS)]

    upsample = Resample(SOURCE_RATE, RATE)
    with torch.no_grad():
        train16 = upsample(torch.stack(train))
        test16 = {name: upsample(x) for name, x in test.items()}
    return {"train": train16, "train_info": train_info, "test": test16, "test_info": test_info,
            "train_speakers": train_speakers, "test_speakers": test_speakers}


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------

def agreement_metrics(teacher_p: torch.Tensor, student_p: torch.Tensor,
                      threshold: float = 0.5) -> dict[str, float]:
    """Decisions ``p >= threshold`` of both (same shape): ``f1`` = 2TP / (2TP + FP + FN) with
    the teacher's speech frames as positives (1.0 when neither finds speech), ``agreement`` =
    share of frames decided alike, and ``speech_share`` (teacher)."""
    t = teacher_p >= threshold
    s = student_p >= threshold
    tp = int((t & s).sum())
    fp = int((~t & s).sum())
    fn = int((t & ~s).sum())
    denominator = 2 * tp + fp + fn
    return {"f1": 2 * tp / denominator if denominator else 1.0,
            "agreement": float((t == s).float().mean()),
            "speech_share": float(t.float().mean())}


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``example`` counted by
    ``torch.utils.flop_counter`` (matmuls and convolutions; FFTs and custom ops such as
    kdcore's log-mel are not seen): flops / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def _time_per_second_of_audio(run: Callable[[torch.Tensor], torch.Tensor],
                              audio: torch.Tensor, repeats: int = 2) -> float:
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            run(audio)
            best = min(best, time.perf_counter() - started)
    return best / (audio.numel() / RATE)


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------

def _bar(total: int, desc: str, quiet: bool, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False,
                dynamic_ncols=True)


def _teacher_probabilities(stream: Callable[[torch.Tensor], torch.Tensor],
                           batches: list[torch.Tensor], quiet: bool) -> list[torch.Tensor]:
    bar = _bar(sum(b.shape[0] for b in batches), "teacher (Silero VAD)", quiet, "window")
    out = []
    for batch in batches:
        out.append(stream(batch))
        bar.update(batch.shape[0])
    bar.close()
    return out


def _student_probabilities(student: VadStudent, waveforms: torch.Tensor,
                           batch_size: int = 32) -> torch.Tensor:
    was_training = student.training
    student.eval()
    with torch.no_grad():
        out = torch.cat([torch.sigmoid(student(waveforms[i:i + batch_size]))[..., 0]
                         for i in range(0, waveforms.shape[0], batch_size)])
    student.train(was_training)
    return out


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def run_vad_demo(out: str | Path = "kdcore_demo", *, quick: bool = False, quiet: bool = False,
                 seed: int = 0, config: VadDemoConfig | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Distil Silero VAD into a :class:`VadStudent` and write the model, a report, metrics
    and plots to ``out`` (default ``kdcore_demo``).

    Args: ``quick`` (default False) picks :data:`QUICK` sizes instead of :data:`FULL`;
    ``quiet`` (default False) prints nothing (no progress bars either); ``seed`` (default 0)
    seeds data, noise and initialisation; ``config`` (default None) overrides both presets;
    ``progress`` (default True) shows one progress bar per phase (teacher, each epoch).
    Returns the report dict also written to ``out/report.json``."""
    from kdcore import teachers

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    config = config or (QUICK if quick else FULL)
    try:
        import matplotlib  # noqa: F401  (checked before the work: the plots come last)
    except ImportError as error:
        raise ImportError("kdcore demo draws its plots with matplotlib: pip install "
                          "'kdcore[report]'") from error
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda text: print(text, flush=True))
    started = time.perf_counter()
    torch.manual_seed(seed)
    no_bars = quiet or not progress

    teacher = teachers.load("silero-vad")
    data = build_data(config, seed)
    train, test = data["train"], data["test"]
    window_seconds = train.shape[-1] / RATE
    say(f"kdcore demo: distil Silero VAD ({teacher.num_parameters:,} parameters) on the FSDD "
        f"subset shipped with kdcore; train {train.shape[0]} windows of {window_seconds:.1f} s "
        f"(speakers {', '.join(data['train_speakers'])}; 0-20 dB SNR noise), test on held-out "
        f"{', '.join(data['test_speakers'])}")

    # 1. the teacher, once per window, from a reset state per window
    stream = teacher.extras["stream"]
    test_names = list(test)
    chunks = [train[i:i + 32] for i in range(0, train.shape[0], 32)]
    chunks += [test[name] for name in test_names]
    teacher_started = time.perf_counter()
    probabilities = _teacher_probabilities(stream, chunks, no_bars)
    teacher_seconds = time.perf_counter() - teacher_started
    train_p = torch.cat(probabilities[:len(chunks) - len(test_names)])
    test_p = dict(zip(test_names, probabilities[len(chunks) - len(test_names):], strict=True))
    train_targets = _logit(train_p)[..., None]
    audio_seconds = sum(c.numel() for c in chunks) / RATE
    say(f"teacher: {audio_seconds / 60:.1f} min of audio in {teacher_seconds:.1f} s "
        f"(speech in {float((train_p >= 0.5).float().mean()):.0%} of training frames)")

    # 2. the student, distilled
    student = VadStudent(width=config.width, depth=config.depth, kernel=config.kernel,
                         backend=config.backend)
    student_parameters = sum(p.numel() for p in student.parameters())
    steps_per_epoch = math.ceil(train.shape[0] / config.batch_size)
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-2},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs)
    gen = torch.Generator().manual_seed(seed + 1)
    history: list[dict[str, Any]] = []
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as log:
        step = 0
        for epoch in range(config.epochs):
            epoch_started = time.perf_counter()
            student.train()
            order = torch.randperm(train.shape[0], generator=gen)
            bar = _bar(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", no_bars, "batch")
            total, count = 0.0, 0
            for start in range(0, train.shape[0], config.batch_size):
                rows = order[start:start + config.batch_size]
                logits = student(train[rows])
                loss = kd_bce_loss(logits, train_targets[rows], temperature=1.0,
                                   backend=config.backend)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                total += float(loss.detach()) * rows.numel()
                count += rows.numel()
                if step % 10 == 0:
                    log.write(json.dumps({"event": "step", "epoch": epoch, "step": step,
                                          "loss": float(loss.detach()),
                                          "lr": schedule.get_last_lr()[0]}) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.close()
            scores = {name: agreement_metrics(test_p[name],
                                              _student_probabilities(student, test[name]))
                      for name in test_names}
            noisy = [n for n in test_names if n != "clean"]
            record = {"event": "epoch", "epoch": epoch, "step": step,
                      "train_kd_loss": total / count,
                      "test_clean_f1": scores["clean"]["f1"],
                      "test_clean_agreement": scores["clean"]["agreement"],
                      "test_noisy_f1": float(np.mean([scores[n]["f1"] for n in noisy])),
                      "test_noisy_agreement": float(np.mean([scores[n]["agreement"]
                                                             for n in noisy])),
                      "time_s": time.perf_counter() - epoch_started}
            history.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            say(f"epoch {epoch + 1}/{config.epochs}: KD loss {record['train_kd_loss']:.4f}  "
                f"held-out agreement clean {record['test_clean_agreement']:.1%} "
                f"(F1 {record['test_clean_f1']:.3f}), noisy "
                f"{record['test_noisy_agreement']:.1%} (F1 {record['test_noisy_f1']:.3f})  "
                f"{record['time_s']:.1f} s")

    # 3. measurements and files
    student.eval()
    test_s = {name: _student_probabilities(student, test[name]) for name in test_names}
    quality = {}
    for name in test_names:
        t = test_p[name]
        quality[name] = {
            "student": agreement_metrics(t, test_s[name]),
            "all_speech": agreement_metrics(t, torch.ones_like(t)),
            "all_silence": agreement_metrics(t, torch.zeros_like(t)),
        }
    one_second = test["clean"][:1, :RATE]
    teacher_module = nn.Sequential(teacher.frontend, teacher.model)
    teacher_macs = count_macs(teacher_module, one_second)
    # kdcore's log-mel is one custom op the counter does not see into: add its mel projection
    # (frames x frequency bins x mels); the FFT before it is not counted
    mel_macs = (1 + RATE // HOP) * (1024 // 2 + 1) * student.frontend_config["n_mels"]
    student_macs = count_macs(student, one_second) + mel_macs
    timing_audio = test["clean"]
    teacher_rtf = _time_per_second_of_audio(stream, timing_audio)
    student_rtf = _time_per_second_of_audio(student, timing_audio)

    torch.save({"format": "kdcore-vad-student", "teacher": "silero-vad",
                "teacher_fingerprint": teacher.fingerprint,
                "model_kwargs": {"n_mels": 32, "width": config.width, "depth": config.depth,
                                 "kernel": config.kernel},
                "frontend": student.frontend_config, "shift_samples": HOP // 2,
                "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()}},
               out / "student.pt")

    report: dict[str, Any] = {
        "task": "vad", "seed": seed, "quick": quick, "config": dataclasses.asdict(config),
        "teacher": {"name": "silero-vad", "parameters": teacher.num_parameters,
                    "macs_per_second_of_audio": teacher_macs, "real_time_factor": teacher_rtf},
        "student": {"name": "VadStudent (FrameStudent on 32 log-mels)",
                    "parameters": student_parameters,
                    "macs_per_second_of_audio": student_macs, "real_time_factor": student_rtf},
        "compression": teacher.num_parameters / student_parameters,
        "held_out": quality, "data": {
            "train_windows": int(train.shape[0]), "test_windows": int(test["clean"].shape[0]),
            "window_s": window_seconds, "train_speakers": data["train_speakers"],
            "test_speakers": data["test_speakers"], "test_noises": data["test_info"]},
        "teacher_seconds": teacher_seconds, "history": history,
        "torch_threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg")
                    else None},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _plot_timeline(out / "vad_timeline.png", test, test_p, test_s, data["test_info"])
    _plot_curves(out / "training_curves.png", history, quality)
    report["total_seconds"] = time.perf_counter() - started
    table = format_table(report)
    report["table"] = table
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    say("")
    say(table)
    say(f"\nwrote {out}/: student.pt, report.json, report.md, metrics.jsonl, vad_timeline.png, "
        f"training_curves.png ({report['total_seconds']:.0f} s in all)")
    return report


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

def format_table(report: dict[str, Any]) -> str:
    """The teacher/student table printed at the end of the demo (plain text)."""
    teacher, student = report["teacher"], report["student"]
    noisy = [n for n in report["held_out"] if n != "clean"]
    lines = [
        f"{'':<28}{'teacher (Silero VAD)':>22}{'student':>12}",
        f"{'parameters':<28}{teacher['parameters']:>22,}{student['parameters']:>12,}",
        f"{'MMACs per second of audio':<28}{teacher['macs_per_second_of_audio'] / 1e6:>22.1f}"
        f"{student['macs_per_second_of_audio'] / 1e6:>12.2f}",
        f"{'real-time factor (CPU)':<28}{teacher['real_time_factor']:>22.5f}"
        f"{student['real_time_factor']:>12.5f}",
        "",
        f"held-out speakers ({', '.join(report['data']['test_speakers'])}), decisions at p >= "
        f"0.5, against the teacher ({report['compression']:.0f}x fewer parameters):",
        f"{'':<10}{'student F1':>12}{'agreement':>11}{'all-speech F1':>15}"
        f"{'best trivial agreement':>24}",
    ]
    for name in ["clean", *noisy]:
        row = report["held_out"][name]
        trivial = max(row["all_speech"]["agreement"], row["all_silence"]["agreement"])
        lines.append(f"{name:<10}{row['student']['f1']:>12.3f}{row['student']['agreement']:>11.1%}"
                     f"{row['all_speech']['f1']:>15.3f}{trivial:>24.1%}")
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    return (
        "# kdcore demo: Silero VAD distilled\n\n"
        f"Teacher `silero-vad`, student `VadStudent` "
        f"({report['compression']:.0f}x fewer parameters). Training: {data['train_windows']} "
        f"windows of {data['window_s']:.1f} s from speakers {', '.join(data['train_speakers'])}"
        f"; held out: {', '.join(data['test_speakers'])} ({data['test_windows']} windows, "
        "clean and noisy). Seed "
        f"{report['seed']}, {report['total_seconds']:.0f} s in all on "
        f"{report['torch_threads']} torch threads.\n\n"
        "```\n" + report["table"] + "\n```\n\n"
        "Real-time factor: seconds of compute per second of audio on this machine's CPU "
        "(best of 2). MACs per second of audio: `torch.utils.flop_counter` on one second "
        "(convolutions, LSTM and matrix products; the teacher's STFT is a convolution and "
        "counted), plus the student's mel projection; the student's FFT is not counted.\n\n"
        "![VAD timeline](vad_timeline.png)\n\n![training curves](training_curves.png)\n")


def _plot_timeline(path: Path, test: dict[str, torch.Tensor], teacher_p: dict[str, torch.Tensor],
                   student_p: dict[str, torch.Tensor], info: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in test if n != "clean"]
    name = names[len(names) // 2] if names else "clean"
    item = 0
    waveform = test[name][item].double().numpy()
    frames = teacher_p[name].shape[-1]
    times = (np.arange(frames) + 0.5) * HOP / RATE
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 2]})
    top.specgram(waveform + 1e-9, NFFT=512, Fs=RATE, noverlap=384, cmap="magma",
                 vmin=-120)
    top.set_ylabel("frequency (Hz)")
    top.set_ylim(0, 4000)
    top.set_title(f"held-out speaker {info[item]['speaker']}, {info[item]['noise']} noise at "
                  f"{name} SNR (8 kHz speech resampled to 16 kHz; spectrogram in dB)")
    bottom.plot(times, teacher_p[name][item].numpy(), label="teacher (Silero VAD)",
                color="tab:blue", linewidth=2)
    bottom.plot(times, student_p[name][item].numpy(), label="student (distilled)",
                color="tab:orange", linewidth=1.5, linestyle="--")
    clean = teacher_p["clean"][item].numpy()
    bottom.fill_between(times, 0, 1, where=clean >= 0.5, color="0.85", step="mid",
                        label="teacher on the clean clip: speech")
    bottom.axhline(0.5, color="0.4", linewidth=0.8, linestyle=":", label="threshold 0.5")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlim(0, waveform.size / RATE)
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("speech probability")
    bottom.set_title("VAD timeline: speech probability per 32 ms chunk")
    bottom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, ncol=4)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_curves(path: Path, history: list[dict], quality: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] + 1 for r in history]
    noisy = ", ".join(name for name in quality if name != "clean")
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_kd_loss"] for r in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("KD loss (BCE against teacher p, nats)")
    left.set_title("training loss")
    left.grid(alpha=0.3)
    right.plot(epochs, [100 * r["test_clean_agreement"] for r in history], marker="o",
               label="student, clean")
    right.plot(epochs, [100 * r["test_noisy_agreement"] for r in history], marker="s",
               label=f"student, noisy (mean over {noisy} SNR)")
    trivial = max(quality["clean"]["all_speech"]["agreement"],
                  quality["clean"]["all_silence"]["agreement"])
    right.axhline(100 * trivial, color="0.5", linestyle=":",
                  label="best trivial predictor, clean")
    right.set_xlabel("epoch")
    right.set_ylabel("agreement with the teacher (%)")
    right.set_title("held-out speakers, decisions at p >= 0.5")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
