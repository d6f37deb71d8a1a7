"""Connected-digit CTC: a teacher trained on transcripts, a student >= 10x smaller trained alone
and by KD (frame KD on valid frames + CTC), greedy WER/CER on held-out speakers, over seeds.

    python benchmarks/ctc_kd.py            # the budget recorded in results/teachers-cpu.json
    python benchmarks/ctc_kd.py --quick    # a smoke run (tiny data, 1 epoch), not recorded

Data: :class:`kdcore.data.ConnectedDigits` on the FSDD manifest (``--fsdd``, default
``../shared/data/fsdd`` from the repo root); training utterances come from the training
speakers' ``train`` clips, test utterances from the held-out speakers' clips only.
Per seed: the data draw, the initialisations and the loader order all change. Results merge
into the ``ctc`` key of ``results/teachers-cpu.json`` (``--no-save`` skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

from kdcore import Distiller, Trainer  # noqa: E402
from kdcore.asr import CTCCollate, digits_frontend, evaluate_ctc  # noqa: E402
from kdcore.data import ConnectedDigits  # noqa: E402
from kdcore.models import create  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ("george", "yweweler")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fsdd", type=Path, default=ROOT.parent / "shared" / "data" / "fsdd")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-utterances", type=int, default=400)
    p.add_argument("--test-utterances", type=int, default=120)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--teacher-width", type=int, default=160)
    p.add_argument("--student-width", type=int, default=40)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny smoke run, not recorded")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.train_utterances, args.test_utterances = [0], 32, 16
        args.epochs, args.teacher_width, args.student_width = 1, 64, 16
        args.no_save = True
    return args


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}


def run_seed(seed: int, args: argparse.Namespace, manifest: Path) -> dict:
    speakers = sorted({line.split(",")[2] for line in manifest.read_text().splitlines()[1:]})
    train_speakers = [s for s in speakers if s not in HELD_OUT]
    train = ConnectedDigits(manifest, args.train_utterances, speakers=train_speakers,
                            split="train", seed=1000 * seed + 1)
    test = ConnectedDigits(manifest, args.test_utterances, speakers=list(HELD_OUT),
                           seed=1000 * seed + 2)
    train_items = [train[i] for i in range(len(train))]
    test_items = [test[i] for i in range(len(test))]
    frontend = digits_frontend(train.sample_rate)

    def build(width: int, offset: int) -> torch.nn.Module:
        torch.manual_seed(10 * seed + offset)
        return create("ctc_conv", 11, n_mels=40, width=width, depth=args.depth,
                      stride=args.stride)

    teacher, student, kd_student = (build(args.teacher_width, 0), build(args.student_width, 1),
                                    build(args.student_width, 1))
    collate = CTCCollate(lambda n: teacher.output_frames(frontend.frames(n)))

    def loader(items: list, shuffle: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(items, batch_size=args.batch_size, shuffle=shuffle, generator=gen,
                          collate_fn=collate)

    common = dict(progress=False, device="cpu", seed=seed, lr=args.lr, precision="fp32",
                  clip_grad_norm=5.0)
    out: dict = {"seed": seed, "train_utterances": len(train_items),
                 "test_utterances": len(test_items),
                 "test_frames_mean": float(collate(test_items)["lengths"].float().mean())}
    runs = [("teacher", teacher, lambda: Trainer(teacher, task="ctc", frontend=frontend,
                                                 **common)),
            ("student_alone", student, lambda: Trainer(student, task="ctc",
                                                       frontend=frontend, **common)),
            ("student_kd", kd_student, lambda: Distiller(
                teacher, kd_student, frontend=frontend, task="ctc", alpha=args.alpha,
                temperature=args.temperature, **common))]
    for name, model, make in runs:
        start = time.perf_counter()
        make().fit(loader(train_items, True), epochs=args.epochs)
        train_s = time.perf_counter() - start
        scores = evaluate_ctc(model, loader(test_items, False), frontend=frontend)
        out[name] = {"wer": scores["wer"], "cer": scores["cer"], "train_s": train_s,
                     "parameters": model.num_parameters(),
                     "macs_per_second_of_audio": model.macs(
                         int(frontend.frames(train.sample_rate)))}
        print(f"seed {seed} {name}: WER {scores['wer']:.3f} CER {scores['cer']:.3f} "
              f"params {out[name]['parameters']} train {train_s:.0f}s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = args.fsdd / "manifest.csv"
    if not manifest.is_file():
        print(f"FSDD manifest not found at {manifest}; pass --fsdd", file=sys.stderr)
        return 2
    start = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(seed, args, manifest))
        if not args.no_save:
            save(args, per_seed, time.perf_counter() - start, argv)
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


def save(args: argparse.Namespace, per_seed: list[dict], wall_s: float,
         argv: list[str] | None) -> None:
    names = ("teacher", "student_alone", "student_kd")
    command = " ".join(["python", "benchmarks/ctc_kd.py",
                        *(sys.argv[1:] if argv is None else argv)])
    results = {name: {"wer": summary([r[name]["wer"] for r in per_seed]),
                      "cer": summary([r[name]["cer"] for r in per_seed]),
                      "train_s": summary([r[name]["train_s"] for r in per_seed]),
                      "parameters": per_seed[0][name]["parameters"],
                      "macs_per_second_of_audio": per_seed[0][name]["macs_per_second_of_audio"]}
               for name in names}
    ratio = results["teacher"]["parameters"] / results["student_kd"]["parameters"]
    payload = {
        "benchmark": "connected-digit CTC on FSDD: teacher (CTC), student alone (CTC), student "
                     "by KD (frame KD on valid frames + CTC); greedy decoding, corpus WER/CER "
                     "(jiwer) on utterances of held-out speakers; CPU float32",
        "command": command, "seeds_planned": args.seeds,
        "seeds_finished": [r["seed"] for r in per_seed],
        "complete": len(per_seed) == len(args.seeds),
        "budget": {"train_utterances": args.train_utterances,
                   "test_utterances": args.test_utterances, "epochs": args.epochs,
                   "batch_size": args.batch_size, "lr": args.lr, "schedule": "onecycle",
                   "optimizer": "adamw", "clip_grad_norm": 5.0,
                   "note": "small data, small models and few epochs, sized to finish 3 seeds "
                           "in about 20 minutes on 2 shared CPU cores; not converged"},
        "data": {"source": "FSDD manifest (8 kHz)", "digits_per_utterance": [2, 7],
                 "held_out_speakers": list(HELD_OUT), "train_split": "train"},
        "models": {"family": "ctc_conv", "teacher_width": args.teacher_width,
                   "student_width": args.student_width, "depth": args.depth,
                   "stride": args.stride,
                   "outputs": "11 classes: blank 0, digits 1..10", "frontend":
                   "digits_frontend: 40 log-mels, 32 ms windows, 16 ms hop"},
        "kd": {"alpha": args.alpha, "temperature": args.temperature, "teacher_mode": "online"},
        "teacher_to_student_parameters": ratio,
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "load_average_1_5_15min": list(os.getloadavg()), **environment(),
        "wall_s": wall_s, "results": results, "per_seed": per_seed}
    merge_results(RESULTS_DIR / "teachers-cpu.json", "ctc", payload)


if __name__ == "__main__":
    raise SystemExit(main())
