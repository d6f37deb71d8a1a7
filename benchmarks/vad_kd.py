"""Voice activity: Silero VAD distilled into kdcore's VAD student, scored per noise kind.

1. FSDD (8 kHz, ``../shared/data/fsdd``): speakers ``TRAIN_SPEAKERS`` for training and
   ``TEST_SPEAKERS`` held out. An *utterance* is a 4.096 s stream of one speaker's clips with
   random gains and 0.15-0.8 s silent gaps (:func:`kdcore.vad.utterance`). Training
   utterances (``--train-windows``): 20 % clean, the rest with one of kdcore's seeded noises
   (white, pink, brown, hum, bursts, babble of the other training speakers) at a uniform
   0-20 dB SNR. Everything is resampled 8 -> 16 kHz with ``kdcore.Resample``.
2. :func:`kdcore.vad.distill_vad` (the engine's Distiller, ``frame_multilabel``, cached
   teacher) trains the default :class:`kdcore.vad.VadStudent`.
3. Held-out utterances (``--test-windows``, half per test speaker) are scored clean and with
   each of white, pink, babble (made of the *other* held-out speaker's clips), hum and bursts
   at 0, 5 and 10 dB SNR (seeded per utterance): the student's frame F1 and agreement
   against Silero VAD run on the same audio (decisions at p >= 0.5,
   :func:`kdcore.vad.agreement_metrics`), beside the all-speech predictor and the teacher's
   own agreement with its decisions on the clean audio.
4. Parameters, MACs per second of audio and real-time factor of both models
   (:func:`kdcore.vad.compare_costs`), the machine, versions, load average, date and this
   command go under the key ``vad`` of ``benchmarks/results/teachers-cpu.json`` (``vad_quick``
   with ``--quick``; other keys kept). ``python benchmarks/make_docs.py`` renders it.

    python benchmarks/vad_kd.py [--quick] [--train-windows 800] [--epochs 12]
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

from kdcore import teachers  # noqa: E402
from kdcore.data.audio import read_audio  # noqa: E402
from kdcore.resample import Resample  # noqa: E402
from kdcore.vad import (  # noqa: E402
    add_noise,
    agreement_metrics,
    compare_costs,
    distill_vad,
    student_probabilities,
    teacher_probabilities,
    utterance,
)

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
SOURCE_RATE = 8000
TRAIN_SPEAKERS = ("george", "jackson", "lucas", "yweweler")
TEST_SPEAKERS = ("nicolas", "theo")
TRAIN_NOISES = ("white", "pink", "brown", "hum", "bursts", "babble")
TEST_NOISES = ("white", "pink", "babble", "hum", "bursts")
SNRS_DB = (0.0, 5.0, 10.0)
WINDOW_S = 4.096


def load_speakers() -> dict[str, list[torch.Tensor]]:
    manifest = FSDD / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"vad_kd: FSDD not found at {FSDD} (needs ../shared/data/fsdd)")
    clips: dict[str, list[torch.Tensor]] = {}
    with open(manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["speaker"] in TRAIN_SPEAKERS + TEST_SPEAKERS:
                clips.setdefault(row["speaker"], []).append(
                    torch.from_numpy(read_audio(FSDD / row["path"])))
    return clips


def build(clips: dict[str, list[torch.Tensor]], train_windows: int, test_windows: int,
          seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict]]:
    """Training utterances (N, T) and the held-out sets ``{"clean": (M, T), "white 0 dB":
    ...}`` at 16 kHz, and the held-out utterances' speakers."""
    gen = torch.Generator().manual_seed(seed)
    length = round(WINDOW_S * SOURCE_RATE)
    train = []
    for i in range(train_windows):
        speaker = TRAIN_SPEAKERS[i % len(TRAIN_SPEAKERS)]
        speech = utterance(clips[speaker], length, SOURCE_RATE, gen)
        if float(torch.rand((), generator=gen)) < 0.2:
            train.append(speech)
            continue
        kind = TRAIN_NOISES[int(torch.randint(len(TRAIN_NOISES), (), generator=gen))]
        snr = float(torch.empty(()).uniform_(0.0, 20.0, generator=gen))
        babble = [c for s in TRAIN_SPEAKERS if s != speaker for c in clips[s]]
        train.append(add_noise(speech, kind, snr, seed * 1_000_003 + i, SOURCE_RATE, babble))
    clean, info = [], []
    for i in range(test_windows):
        speaker = TEST_SPEAKERS[i % len(TEST_SPEAKERS)]
        clean.append(utterance(clips[speaker], length, SOURCE_RATE, gen))
        info.append({"speaker": speaker})
    test = {"clean": torch.stack(clean)}
    for k, kind in enumerate(TEST_NOISES):
        for snr in SNRS_DB:
            noisy = []
            for i, speech in enumerate(clean):
                other = [c for s in TEST_SPEAKERS if s != info[i]["speaker"] for c in clips[s]]
                noisy.append(add_noise(speech, kind, snr,
                                       seed * 1_000_003 + 500_000 + 1000 * k + i,
                                       SOURCE_RATE, other))
            test[f"{kind} {snr:g} dB"] = torch.stack(noisy)
    upsample = Resample(SOURCE_RATE, 16000)
    with torch.no_grad():
        return (upsample(torch.stack(train)), {name: upsample(x) for name, x in test.items()},
                info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (64 windows, 2 epochs), key vad_quick")
    parser.add_argument("--train-windows", type=int, default=800)
    parser.add_argument("--test-windows", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the models are tiny, and two threads on "
                             "cores shared with other processes spin against each other)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "teachers-cpu.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_windows, args.test_windows, args.epochs = 64, 8, 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    teacher = teachers.load("silero-vad")
    clips = load_speakers()
    train, test, info = build(clips, args.train_windows, args.test_windows, args.seed)
    print(f"data: {train.shape[0]} training windows, {test['clean'].shape[0]} held-out "
          f"windows x {len(test)} conditions ({time.perf_counter() - started:.0f} s)",
          flush=True)

    with tempfile.TemporaryDirectory() as folder:
        fit_started = time.perf_counter()
        student, history = distill_vad(
            teacher, list(train), Path(folder) / "run", window_s=WINDOW_S, overlap_s=0.0,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            progress=False, resume=False, device="cpu",
            on_epoch=lambda r: print(f"epoch {r['epoch'] + 1}: KD loss {r['train_loss']:.4f} "
                                     f"({r['time_s']:.0f} s)", flush=True) and None)
        fit_s = time.perf_counter() - fit_started
    print(f"distilled in {fit_s:.0f} s; final KD loss {history.last['train_loss']:.4f}",
          flush=True)

    eval_started = time.perf_counter()
    teacher_p = {name: torch.stack(teacher_probabilities(teacher, list(x)))
                 for name, x in test.items()}
    student_p = {name: torch.stack(student_probabilities(student, list(x)))
                 for name, x in test.items()}
    results: dict[str, dict] = {}
    for name in test:
        t = teacher_p[name]
        row = {"student": agreement_metrics(t, student_p[name]),
               "all_speech": agreement_metrics(t, torch.ones_like(t)),
               "teacher_vs_clean_teacher": agreement_metrics(teacher_p["clean"], t)}
        kind, _, snr = name.partition(" ")
        results.setdefault(kind, {})[snr or "clean"] = row
    eval_s = time.perf_counter() - eval_started
    costs = compare_costs(student, teacher, test["clean"])
    summary = {kind: {"student_f1_mean": float(np.mean([r["student"]["f1"]
                                                         for r in rows.values()])),
                      "student_agreement_mean": float(np.mean([r["student"]["agreement"]
                                                                for r in rows.values()]))}
               for kind, rows in results.items()}

    payload = {
        "benchmark": "Silero VAD distilled into kdcore.vad.VadStudent with kdcore.vad."
                     "distill_vad; student frame F1 and agreement against the teacher on "
                     "held-out FSDD speakers, clean and with kdcore's seeded noises at 0, 5 "
                     "and 10 dB SNR (decisions at p >= 0.5)",
        "quick": args.quick,
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        ["benchmarks/vad_kd.py", *(argv or sys.argv[1:])]),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "load_average_1_5_15min": load_before,
        "load_average_1_5_15min_after": [round(v, 2) for v in os.getloadavg()],
        **environment(),
        "data": {"source": "FSDD (8 kHz) resampled to 16 kHz with kdcore.Resample",
                 "train_speakers": list(TRAIN_SPEAKERS), "test_speakers": list(TEST_SPEAKERS),
                 "window_s": WINDOW_S, "train_windows": int(train.shape[0]),
                 "test_windows": int(test["clean"].shape[0]),
                 "train_noise": "20 % clean; else one of " + ", ".join(TRAIN_NOISES)
                                + " (babble: other training speakers) at uniform 0-20 dB SNR",
                 "test_noise": ", ".join(TEST_NOISES) + " at " + ", ".join(
                     f"{s:g}" for s in SNRS_DB) + " dB SNR; babble made of the other "
                     "held-out speaker's clips; seeded per utterance",
                 "test_speech_share_clean": float((teacher_p["clean"] >= 0.5).float().mean())},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "seed": args.seed, "fit_s": fit_s,
                     "final_kd_loss": history.last["train_loss"]},
        "costs": costs,
        "results": results,
        "summary": summary,
        "eval_s": eval_s,
        "total_wall_s": time.perf_counter() - started,
    }
    key = "vad_quick" if args.quick else "vad"
    path = merge_results(args.out, key, payload)
    for kind, rows in results.items():
        cells = "  ".join(f"{snr}: F1 {r['student']['f1']:.3f} agree "
                          f"{r['student']['agreement']:.1%}" for snr, r in rows.items())
        print(f"{kind:<8}{cells}")
    print(f"student {costs['student']['parameters']:,} parameters vs teacher "
          f"{costs['teacher']['parameters']:,}; {payload['total_wall_s']:.0f} s; wrote key "
          f"{key!r} of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
