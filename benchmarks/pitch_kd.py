"""Pitch distillation from CREPE-full, scored against the published small model (crepe-tiny).

1. FSDD recordings (8 kHz) of the training speakers and of held-out test speakers, resampled to
   16 kHz with ``kdcore.Resample``, cut into CREPE frames (1024 samples, normalised) every
   ``--hop`` samples. CREPE-full costs about 0.1 s per frame on two CPU cores, so the teacher
   is run on a **subset**: ``--train-clips`` / ``--test-clips`` clips per speaker (spread over
   the digits and takes) at a hop of ``--hop`` samples (default 320 = 20 ms), not every 10 ms
   frame of every clip.
2. ``kdcore.Distiller(task="multilabel", teacher_mode="cached")``: the teacher is CREPE-full's
   pre-sigmoid output (``kdcore.models.pitch.CrepeLogits``), cached during the first epoch;
   the student is ``kdcore.models.PitchStudent`` (under a quarter of crepe-tiny's parameters)
   on the same frames; the loss is ``kd_bce_loss`` over the 360 bins (no labels).
3. crepe-tiny and the student are scored against CREPE-full on the test speakers' frames with
   ``kdcore.eval.pitch.evaluate_pitch``: RPA / RCA within 50 cents, cents RMSE over the
   reference-voiced frames, voicing F1 (voiced: confidence = max sigmoid >= ``--threshold``).
4. Parameters, MACs per frame and frames/s (batched forward on the test frames, no gradients)
   of CREPE-full, crepe-tiny and the student, the cache-fill rate, and a ``verdict`` computed
   from the RPAs go under the key ``pitch`` of ``benchmarks/results/teachers-cpu.json``
   (``pitch_quick`` with ``--quick``; other keys kept).

    python benchmarks/pitch_kd.py [--quick] [--epochs 12] [--train-clips 50] [--test-clips 30]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

import kdcore  # noqa: E402
from kdcore import teachers  # noqa: E402
from kdcore.eval.pitch import clip_frames, frame_activations, load_clips, score_activations  # noqa: E402,E501
from kdcore.models import count_macs  # noqa: E402
from kdcore.models.pitch import CrepeLogits, FrameSet, PitchStudent  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
TRAIN_SPEAKERS = ("george", "jackson", "lucas", "nicolas")
TEST_SPEAKERS = ("theo", "yweweler")


def pick_clips(speakers: tuple[str, ...], per_speaker: int, offset: int) -> list[Path]:
    """``per_speaker`` recordings of each speaker, evenly spread over its sorted list (digits
    and takes), starting ``offset`` into each stride."""
    with open(FSDD / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = []
    for speaker in speakers:
        paths = sorted(r["path"] for r in rows if r["speaker"] == speaker)
        if not paths:
            raise ValueError(f"speaker {speaker!r} not in {FSDD / 'manifest.csv'}")
        stride = max(len(paths) // per_speaker, 1)
        chosen += [FSDD / p for p in paths[offset % stride::stride][:per_speaker]]
    return chosen


def throughput(fn, frames: torch.Tensor, repeats: int = 3) -> float:
    """Frames/s of ``fn(frames)``: the best of ``repeats`` timed calls after a warm-up."""
    fn(frames[:8])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - start)
    return frames.shape[0] / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="dry run: 2 train / 2 test clips per speaker, hop 640, 1 epoch")
    parser.add_argument("--train-clips", type=int, default=50, help="per training speaker")
    parser.add_argument("--test-clips", type=int, default=30, help="per test speaker")
    parser.add_argument("--hop", type=int, default=320, help="samples at 16 kHz between frames")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="voicing threshold on the max sigmoid activation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss-backend", default="reference",
                        help="kd_bce_loss backend (default reference: no C++ build at start)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "pitch_kd"),
                        help="run directory (teacher cache, checkpoints)")
    parser.add_argument("--key", default=None, help="results key (pitch; pitch_quick if --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_clips, args.test_clips, args.hop, args.epochs = 2, 2, 640, 1
    key = args.key or ("pitch_quick" if args.quick else "pitch")
    if not (FSDD / "manifest.csv").is_file():
        print(f"FSDD not found at {FSDD}", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)

    full = teachers.load("crepe-full")
    tiny = teachers.load("crepe-tiny")
    train_paths = pick_clips(TRAIN_SPEAKERS, args.train_clips, 0)
    test_paths = pick_clips(TEST_SPEAKERS, args.test_clips, 1)
    train_frames = clip_frames(load_clips(train_paths), args.hop)
    test_frames = clip_frames(load_clips(test_paths), args.hop)
    print(f"frames: train {len(train_frames)} ({len(train_paths)} clips), "
          f"test {len(test_frames)} ({len(test_paths)} clips), hop {args.hop}", flush=True)

    # Reference on the held-out frames (timed: CREPE-full's forward throughput).
    start = time.perf_counter()
    reference = frame_activations(full, test_frames, batch_size=64)
    reference_s = time.perf_counter() - start
    print(f"crepe-full reference: {reference_s:.1f} s", flush=True)

    student = PitchStudent()
    distiller = kdcore.Distiller(
        CrepeLogits(full.model), student, task="multilabel", temperature=args.temperature,
        alpha=1.0, teacher_mode="cached", lr=args.lr, schedule="onecycle", seed=args.seed,
        progress=False, log_every=1000, checkpoint_every=0, device="cpu",
        loss_backend=args.loss_backend)
    loader = torch.utils.data.DataLoader(FrameSet(train_frames), batch_size=args.batch_size,
                                         shuffle=True)
    reused = (Path(args.out) / "teacher_cache").is_dir()  # filled by an earlier run: reused
    start = time.perf_counter()
    history = distiller.fit(loader, epochs=args.epochs, out_dir=args.out, resume=False)
    fit_s = time.perf_counter() - start
    epoch_s = [float(t) for t in history.metric("time_s")]
    losses = [float(v) for v in history.metric("train_loss")]
    print(f"fit: {fit_s:.1f} s, epochs {[round(t, 1) for t in epoch_s]}, loss {losses}",
          flush=True)
    student.eval()

    tiny_act = frame_activations(tiny, test_frames)
    student_act = frame_activations(student, test_frames)
    scores = {
        "crepe-tiny": score_activations(tiny_act, reference, threshold=args.threshold),
        "student": score_activations(student_act, reference, threshold=args.threshold),
    }

    probe = test_frames[: min(256, len(test_frames))]
    models = {"crepe-full": full.model, "crepe-tiny": tiny.model, "student": student}
    cost = {}
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            rate = (len(test_frames) / reference_s if name == "crepe-full"
                    else throughput(model, probe))
        cost[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                      "macs_per_frame": count_macs(model, torch.zeros(1, 1024)),
                      "frames_per_s": rate}
    # Epoch 1 ran the teacher on every training frame (the cache fill); later epochs read it.
    later = sorted(epoch_s[1:])
    fill_s = epoch_s[0] - (later[len(later) // 2] if later else 0.0)
    student_rpa, tiny_rpa = scores["student"]["rpa"], scores["crepe-tiny"]["rpa"]
    beats = bool(student_rpa > tiny_rpa)
    verdict = (f"the distilled student ({cost['student']['parameters']:,} parameters) "
               f"{'beats' if beats else 'does not beat'} crepe-tiny "
               f"({cost['crepe-tiny']['parameters']:,}) on RPA against crepe-full on held-out "
               f"speakers: {student_rpa:.4f} vs {tiny_rpa:.4f}")
    print(verdict)
    for name, row in scores.items():
        print(f"{name:>10}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                                           if isinstance(v, float)))
    for name, row in cost.items():
        print(f"{name:>10}: {row['parameters']:,} params, {row['macs_per_frame'] / 1e6:.1f} M "
              f"MACs/frame, {row['frames_per_s']:.1f} frames/s")

    payload = {
        "benchmark": "pitch KD: CREPE-full -> PitchStudent by kd_bce_loss over 360 bins "
                     "(task multilabel, cached teacher), scored with crepe-tiny against "
                     "CREPE-full on held-out FSDD speakers; CPU, float32",
        "quick": args.quick,
        "command": " ".join(["python benchmarks/pitch_kd.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()), **environment(),
        "data": {"dataset": "FSDD (8 kHz, resampled to 16 kHz with kdcore.Resample)",
                 "train_speakers": list(TRAIN_SPEAKERS), "test_speakers": list(TEST_SPEAKERS),
                 "train_clips": len(train_paths), "test_clips": len(test_paths),
                 "hop_samples": args.hop, "train_frames": len(train_frames),
                 "test_frames": len(test_frames),
                 "subset_note": "CREPE-full is run on a subset only (clips per speaker and a "
                                f"{1000 * args.hop // 16000} ms hop) because it is slow on "
                                "the CPU"},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "schedule": "onecycle", "optimizer": "adamw",
                     "temperature": args.temperature, "seed": args.seed,
                     "loss_backend": args.loss_backend,
                     "fit_s": fit_s, "epoch_s": epoch_s, "train_loss": losses},
        "teacher_cache_fill": (
            {"reused": True, "note": "the teacher cache in --out was filled by an earlier run "
                                     "on the same frames; CREPE-full's forward rate is under "
                                     "cost"} if reused else
            {"frames": len(train_frames), "seconds": fill_s,
             "frames_per_s": len(train_frames) / max(fill_s, 1e-9),
             "note": "first epoch minus the median later epoch"}),
        "voicing": f"voiced = max sigmoid activation >= {args.threshold} (reference and model)",
        "scores_vs_crepe_full": scores,
        "cost": cost,
        "student_config": student.config(),
        "student_fraction_of_tiny": cost["student"]["parameters"]
        / cost["crepe-tiny"]["parameters"],
        "student_beats_tiny_rpa": beats,
        "verdict": verdict,
    }
    for name in scores:
        for metric, value in scores[name].items():
            if isinstance(value, float) and np.isnan(value):
                scores[name][metric] = None
    path = merge_results(RESULTS_DIR / "teachers-cpu.json", key, payload)
    print(f"wrote {path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
