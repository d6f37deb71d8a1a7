"""Speaker-embedding KD: Resemblyzer -> a small TDNN student, scored by speaker-verification EER
on held-out FSDD speakers with a rotation over the six speakers.

1. FSDD (8 kHz, 6 speakers): ``--clips`` recordings per speaker, spread over digits and takes,
   resampled to 16 kHz with ``kdcore.Resample``, RMS-normalised, 1 s long
   (``kdcore.speaker.load_clips``). Each clip also gets ``--copies`` augmented copies (speed
   change by resampling, shift, white/pink/brown noise at 5-30 dB SNR:
   ``kdcore.speaker.SpeakerClips``). The teacher needs no labels, so the copies are labelled
   by it like the originals.
2. The teacher's utterance embeddings of every item (all speakers, originals and copies) are
   computed **once** (timed) and shared by every run: each run's engine cache is pre-filled
   from that table (``distill_speaker(teacher_embeddings=...)``).
3. Rotation: three folds, each holding out two speakers (``FOLDS``); the student is distilled
   on the other four speakers' items with ``kdcore.speaker.distill_speaker``
   (``Distiller(task="regression", distance="cosine", teacher_mode="cached")``), once per
   ``--seeds`` seed; teacher and student are scored on the held-out speakers' original clips:
   EER over all trial pairs (cosine scores) and the student's mean cosine to the teacher.
4. Parameters and MACs per 1 s clip (the teacher: one 1.6 s partial) of both models, EERs per
   fold and seed, and their means go under the key ``speaker`` of
   ``benchmarks/results/teachers-cpu.json`` (``speaker_quick`` with ``--quick``).

    python benchmarks/speaker_kd.py [--quick] [--clips 40] [--copies 2] [--epochs 6] [--seeds 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

from kdcore import speaker as sp  # noqa: E402
from kdcore.eval.metrics import mean_cosine_similarity  # noqa: E402
from kdcore.teachers import resemblyzer as rz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
FOLDS = (("george", "jackson"), ("lucas", "nicolas"), ("theo", "yweweler"))


def pick(per_speaker: int) -> tuple[list[Path], list[str]]:
    """``per_speaker`` recordings of each speaker, evenly spread over its sorted file list."""
    with open(FSDD / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths, speakers = [], []
    for name in sorted({r["speaker"] for r in rows}):
        mine = sorted(r["path"] for r in rows if r["speaker"] == name)
        stride = max(len(mine) // per_speaker, 1)
        chosen = mine[::stride][:per_speaker]
        paths += [FSDD / p for p in chosen]
        speakers += [name] * len(chosen)
    return paths, speakers


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="dry run: 8 clips per speaker, 1 copy, 1 epoch, 1 seed")
    parser.add_argument("--clips", type=int, default=40, help="recordings per speaker")
    parser.add_argument("--copies", type=int, default=2, help="augmented copies per clip")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per fold")
    parser.add_argument("--out", default=str(ROOT / "runs" / "speaker_kd"))
    parser.add_argument("--key", default=None, help="results key (speaker; speaker_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.copies, args.epochs, args.seeds = 8, 1, 1, 1
    key = args.key or ("speaker_quick" if args.quick else "speaker")
    if not (FSDD / "manifest.csv").is_file():
        print(f"FSDD not found at {FSDD}", file=sys.stderr)
        return 1
    wall = time.perf_counter()
    torch.manual_seed(0)
    teacher = sp.ResemblyzerTeacher("resemblyzer")
    paths, speakers = pick(args.clips)
    clips = sp.load_clips(paths, clip_samples=None)
    pool = sp.SpeakerClips(clips, copies=args.copies, seed=0)
    items = torch.stack([pool.waveform(i) for i in range(len(pool))])
    tag = f"{pool.fingerprint()[:16]}_{teacher.fingerprint[:16]}"
    stored = Path(args.out) / f"teacher_table_{tag}.pt"
    start = time.perf_counter()
    if stored.is_file():  # the same items and teacher as an earlier run
        table, teacher_s, reused = torch.load(stored), None, True
    else:
        table = torch.from_numpy(sp.embed(teacher, items, batch_size=64)).float()
        teacher_s, reused = time.perf_counter() - start, False
        stored.parent.mkdir(parents=True, exist_ok=True)
        torch.save(table, stored)
    print(f"teacher: {len(pool)} items ({len(clips)} clips x {1 + args.copies}) "
          f"{'read from ' + str(stored) if reused else f'in {teacher_s:.1f} s'}", flush=True)

    n = len(clips)
    spk = np.asarray(speakers)
    runs, folds = [], []
    for held in FOLDS:
        test = np.flatnonzero(np.isin(spk, held))
        train = np.flatnonzero(~np.isin(spk, held))
        test_clips = items[test]  # originals: rows 0 .. n-1 of the pool
        reference = table[test].double().numpy()
        teacher_row = sp.verification_eer(reference, spk[test])
        folds.append({"held_out": list(held), "train_speakers": sorted(set(spk[train])),
                      "test_clips": int(test.size), "teacher": teacher_row})
        fold_set = sp.SpeakerClips([clips[i] for i in train], copies=args.copies, seed=0)
        rows = np.concatenate([copy * n + train for copy in range(1 + args.copies)])
        for seed in range(args.seeds):
            out = Path(args.out) / f"{'-'.join(held)}_seed{seed}"
            start = time.perf_counter()
            student, history = sp.distill_speaker(
                teacher, fold_set, out, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, seed=seed, teacher_embeddings=table[rows], device="cpu")
            fit_s = time.perf_counter() - start
            embeddings = sp.embed(student, test_clips)
            row = sp.verification_eer(embeddings, spk[test])
            row["mean_cosine"] = mean_cosine_similarity(embeddings, reference)
            losses = [float(v) for v in history.metric("train_loss")]
            runs.append({"held_out": list(held), "seed": seed, "train_items": len(fold_set),
                         "fit_s": fit_s, "train_loss": losses, "student": row})
            print(f"{held} seed {seed}: teacher EER {teacher_row['eer']:.4f}, student EER "
                  f"{row['eer']:.4f}, cosine {row['mean_cosine']:.4f}, loss "
                  f"{losses[0]:.3f}->{losses[-1]:.3f}, fit {fit_s:.1f} s", flush=True)

    student = sp.SpeakerStudentTDNN()
    encoder = teacher.encoder
    cost = {
        "teacher": {"model": "resemblyzer (3-layer LSTM 256 + linear)",
                    "parameters": encoder.num_parameters(),
                    "macs_per_clip": sp.speaker_macs(encoder, torch.zeros(1, 160, rz.N_MELS)),
                    "input": "one 160-frame 40-mel partial (1.6 s)"},
        "student": {"model": f"SpeakerStudentTDNN {student.config()}",
                    "parameters": student.num_parameters(),
                    "macs_per_clip": sp.speaker_macs(student, torch.zeros(1, sp.CLIP_SAMPLES)),
                    "input": "1 s waveform (101 log-mel frames)"},
    }
    cost["student_fraction"] = cost["student"]["parameters"] / cost["teacher"]["parameters"]
    cost["note"] = "MACs exclude the STFT and mel projection; LSTM MACs counted by hand"
    teacher_eers = [f["teacher"]["eer"] for f in folds]
    per_seed = [statistics.fmean(r["student"]["eer"] for r in runs if r["seed"] == s)
                for s in range(args.seeds)]
    per_seed_cos = [statistics.fmean(r["student"]["mean_cosine"] for r in runs
                                     if r["seed"] == s) for s in range(args.seeds)]
    summary = {"teacher_eer_mean_over_folds": statistics.fmean(teacher_eers),
               "student_eer_mean_over_folds": mean_std(per_seed),
               "student_mean_cosine_mean_over_folds": mean_std(per_seed_cos),
               "note": "fold means (3 held-out pairs), then mean and sample std over seeds"}
    print(f"teacher EER {summary['teacher_eer_mean_over_folds']:.4f}; student EER "
          f"{summary['student_eer_mean_over_folds']['mean']:.4f} +- "
          f"{summary['student_eer_mean_over_folds']['std']:.4f}; cosine "
          f"{summary['student_mean_cosine_mean_over_folds']['mean']:.4f}")
    payload = {
        "benchmark": "speaker KD: resemblyzer -> SpeakerStudentTDNN by cosine regression "
                     "(task regression, distance cosine, cached teacher), speaker-verification "
                     "EER on held-out FSDD speakers (3-fold rotation); CPU, float32",
        "quick": args.quick,
        "command": " ".join(["python benchmarks/speaker_kd.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()), **environment(),
        "data": {"dataset": "FSDD (8 kHz, resampled to 16 kHz with kdcore.Resample)",
                 "clips_per_speaker": args.clips, "clips": n, "copies": args.copies,
                 "items": len(pool), "clip_seconds": sp.CLIP_SAMPLES / sp.SAMPLE_RATE,
                 "augmentation": "copies: speed change by resampling (x0.89-1.14), up to "
                                 "0.15 s leading shift, white/pink/brown noise at 5-30 dB SNR; "
                                 "trained on the train speakers' originals and copies",
                 "trials": "all pairs of the held-out speakers' original clips"},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "schedule": "onecycle", "optimizer": "adamw", "seeds": args.seeds,
                     "loss": "1 - cos(student, teacher) per clip"},
        "teacher_embedding_s": teacher_s,
        "teacher_embeddings_reused": reused,
        "cost": cost, "folds": folds, "runs": runs, "summary": summary,
        "wall_s": time.perf_counter() - wall,
    }
    path = merge_results(RESULTS_DIR / "teachers-cpu.json", key, payload)
    print(f"wrote {path} [{key}] in {payload['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
