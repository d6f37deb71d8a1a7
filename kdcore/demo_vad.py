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
2. **Distillation** through the library: :func:`kdcore.vad.distill_vad` (the engine's
   :class:`kdcore.Distiller`, task ``frame_multilabel``, cached teacher). Silero VAD
   (``kdcore.teachers.load("silero-vad")``) fills the teacher cache first, streaming
   512-sample chunks from a reset state per window; the student (:class:`VadStudent`: 32
   log-mels with a 512-sample hop, aligned on the teacher's chunks, and a
   :class:`kdcore.teachers.students.FrameStudent` with one output) learns ``kd_bce_loss`` at
   temperature 1 against the teacher's probability, AdamW with a one-cycle schedule. After
   every epoch (the engine's ``on_epoch`` callback) it is scored on the held-out speakers and
   one summary line is printed.
3. **Evaluation** on the held-out speakers: both models' decisions at threshold 0.5; frame
   F1 (the teacher's speech frames as the positive class) and agreement (share of frames
   where both decide alike), against two trivial predictors (all speech, all silence).

Outputs in ``out``: ``student.pt``, ``report.json``, ``report.md``, ``metrics.jsonl``,
``vad_timeline.png`` and ``training_curves.png`` (and the engine's ``checkpoints/`` and
``teacher_cache/``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcore.data.audio import read_audio
from kdcore.resample import Resample
from kdcore.vad import (
    HOP,
    RATE,
    VadStudent,
    add_noise,
    agreement_metrics,
    compare_costs,
    cost_table,
    count_macs,
    distill_vad,
    machine,
    student_probabilities,
    teacher_probabilities,
    utterance,
)

__all__ = ["FULL", "HOP", "QUICK", "RATE", "VadDemoConfig", "VadStudent", "agreement_metrics",
           "build_data", "count_macs", "format_table", "run_vad_demo"]

ASSETS = Path(__file__).resolve().parent / "assets" / "fsdd"
SOURCE_RATE = 8000
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
        speech = utterance(clips[speaker], length, SOURCE_RATE, gen)
        if float(torch.rand((), generator=gen)) < config.clean_share:
            train.append(speech)
            train_info.append({"speaker": speaker, "noise": "clean"})
            continue
        kind = NOISE_KINDS[int(torch.randint(len(NOISE_KINDS), (), generator=gen))]
        snr = float(torch.empty(()).uniform_(0.0, 20.0, generator=gen))
        train.append(add_noise(speech, kind, snr, seed * 100003 + i, SOURCE_RATE, babble))
        train_info.append({"speaker": speaker, "noise": kind, "snr_db": round(snr, 2)})

    clean, test_info = [], []
    for i in range(config.test_windows):
        speaker = test_speakers[i % len(test_speakers)]
        clean.append(utterance(clips[speaker], length, SOURCE_RATE, gen))
        test_info.append({"speaker": speaker})
    test = {"clean": torch.stack(clean)}
    for snr in config.test_snrs_db:
        noisy = []
        for i, speech in enumerate(clean):
            kind = NOISE_KINDS[i % len(NOISE_KINDS)]
            noisy.append(add_noise(speech, kind, snr, seed * 100003 + 50000 + i, SOURCE_RATE,
                                   babble_train))
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
# The run
# ------------------------------------------------------------------------------------------

def _student_probabilities(student: VadStudent, waveforms: torch.Tensor) -> torch.Tensor:
    return torch.stack(student_probabilities(student, list(waveforms)))


def _scores(student: VadStudent, test: dict[str, torch.Tensor],
            test_p: dict[str, torch.Tensor]) -> dict[str, Any]:
    scores = {name: agreement_metrics(test_p[name], _student_probabilities(student, x))
              for name, x in test.items()}
    noisy = [n for n in test if n != "clean"]
    return {"test_clean_f1": scores["clean"]["f1"],
            "test_clean_agreement": scores["clean"]["agreement"],
            "test_noisy_f1": float(np.mean([scores[n]["f1"] for n in noisy])),
            "test_noisy_agreement": float(np.mean([scores[n]["agreement"] for n in noisy]))}


def run_vad_demo(out: str | Path = "kdcore_demo", *, quick: bool = False, quiet: bool = False,
                 seed: int = 0, config: VadDemoConfig | None = None,
                 progress: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Distil Silero VAD into a :class:`VadStudent` with :func:`kdcore.vad.distill_vad` and
    write the model, a report, metrics and plots to ``out`` (default ``kdcore_demo``).

    Args: ``quick`` (default False) picks :data:`QUICK` sizes instead of :data:`FULL`;
    ``quiet`` (default False) prints nothing (no progress bars either); ``seed`` (default 0)
    seeds data, noise and initialisation; ``config`` (default None) overrides both presets;
    ``progress`` (default True) shows one progress bar per phase (teacher, each epoch);
    ``threads`` (default 1; None keeps torch's setting) torch CPU threads for the run, restored
    after it: the models are tiny, and on cores shared with other processes two threads spin
    against each other (``--quick`` took 92 s with 2 threads and 8 s with 1 at load 2.8 on
    two cores). Returns the report dict also written to ``out/report.json``."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(out, quick=quick, quiet=quiet, seed=seed, config=config, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _run(out: str | Path, *, quick: bool, quiet: bool, seed: int,
         config: VadDemoConfig | None, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

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
    no_bars = quiet or not progress

    teacher = teachers.load("silero-vad")
    data = build_data(config, seed)
    train, test = data["train"], data["test"]
    window_seconds = train.shape[-1] / RATE
    say(f"kdcore demo: distil Silero VAD ({teacher.num_parameters:,} parameters) on the FSDD "
        f"subset shipped with kdcore; train {train.shape[0]} windows of {window_seconds:.1f} s "
        f"(speakers {', '.join(data['train_speakers'])}; 0-20 dB SNR noise), test on held-out "
        f"{', '.join(data['test_speakers'])}")

    # 1. the teacher on the held-out sets (its training targets are cached by distill_vad)
    teacher_started = time.perf_counter()
    test_p = {}
    for name in tqdm(list(test), desc="teacher on held-out sets", unit="set", disable=no_bars,
                     leave=False):
        test_p[name] = torch.stack(teacher_probabilities(teacher, list(test[name])))
    held_out_teacher_s = time.perf_counter() - teacher_started

    # 2. the student, distilled through the engine; one line per epoch
    callback_s = 0.0

    def on_epoch(record: dict) -> dict:
        nonlocal callback_s
        begun = time.perf_counter()
        scores = _scores(student, test, test_p)
        say(f"epoch {record['epoch'] + 1}/{config.epochs}: KD loss "
            f"{record['train_loss']:.4f}  held-out agreement clean "
            f"{scores['test_clean_agreement']:.1%} (F1 {scores['test_clean_f1']:.3f}), noisy "
            f"{scores['test_noisy_agreement']:.1%} (F1 {scores['test_noisy_f1']:.3f})  "
            f"{record['time_s']:.1f} s")
        callback_s += time.perf_counter() - begun
        return scores

    torch.manual_seed(seed)
    student = VadStudent(width=config.width, depth=config.depth, kernel=config.kernel,
                         backend=config.backend)
    distill_started = time.perf_counter()
    student, history = distill_vad(
        teacher, list(train), out, student=student, window_s=config.window_s, overlap_s=0.0,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed,
        backend=config.backend, progress=not no_bars, resume=False, on_epoch=on_epoch,
        log_every=10, device="cpu")
    distill_s = time.perf_counter() - distill_started
    epochs_s = sum(r["time_s"] for r in history.epochs)
    # the teacher-cache fill, the probe batch and the per-epoch checkpoints
    teacher_seconds = held_out_teacher_s + max(distill_s - epochs_s - callback_s, 0.0)

    # 3. measurements and files
    test_s = {name: _student_probabilities(student, test[name]) for name in test}
    quality = {}
    for name in test:
        t = test_p[name]
        quality[name] = {
            "student": agreement_metrics(t, test_s[name]),
            "all_speech": agreement_metrics(t, torch.ones_like(t)),
            "all_silence": agreement_metrics(t, torch.zeros_like(t)),
        }
    costs = compare_costs(student, teacher, test["clean"])
    records = [{k: v for k, v in r.items() if k != "event"} for r in history.epochs]
    for record in records:  # alpha = 1: the training loss is the KD loss
        record["train_kd_loss"] = record["train_loss"]

    report: dict[str, Any] = {
        "task": "vad", "seed": seed, "quick": quick, "config": dataclasses.asdict(config),
        "teacher": {k: v for k, v in costs["teacher"].items()},
        "student": {k: v for k, v in costs["student"].items() if k != "config"},
        "compression": costs["compression"],
        "held_out": quality, "data": {
            "train_windows": int(train.shape[0]), "test_windows": int(test["clean"].shape[0]),
            "window_s": window_seconds, "train_speakers": data["train_speakers"],
            "test_speakers": data["test_speakers"], "test_noises": data["test_info"]},
        "teacher_seconds": teacher_seconds, "history": records,
        "engine": "kdcore.vad.distill_vad (kdcore.Distiller, task frame_multilabel, cached "
                  "teacher)",
        "torch_threads": torch.get_num_threads(), "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _plot_timeline(out / "vad_timeline.png", test, test_p, test_s, data["test_info"])
    _plot_curves(out / "training_curves.png", records, quality)
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
    noisy = [n for n in report["held_out"] if n != "clean"]
    lines = [
        cost_table(report),
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
