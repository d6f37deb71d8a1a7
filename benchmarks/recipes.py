"""The distillation recipes the way a user meets them: ``kdcore train`` and ``kdcore distill``
with their defaults, on FSDD with each speaker held out in turn and on SyntheticAudio.

Per FSDD fold (one speaker is the test split, the other five train) and per SyntheticAudio seed:

1. a teacher, ``kdcore train --model teacher_cnn`` (``TEACHER``);
2. the student alone, ``kdcore train --model student_dscnn``, without and with ``--mixup 0.4``;
   the baseline is the better of the two;
3. ``kdcore distill --teacher <1> --student student_dscnn`` with every default (function
   matching; the view cache, filled inside the run and counted in its wall time);

all with the same epochs, seed, batch size and student. The KD gain is the distilled student's
test accuracy minus the baseline's. Then, on the first fold, the speed check: one epoch of the
student alone on the same views (same augmentation), one epoch of KD from the filled view cache
and one of KD with the teacher online, timed by the training loop (epoch ``time_s``).

    python benchmarks/recipes.py                       # the committed run (budgeted)
    python benchmarks/recipes.py --epochs 5 --teacher-epochs 5 --out /tmp/recipes.json  # quick

Runs stop starting new units once ``--budget-s`` is spent; the JSON says what finished
(``complete``). Writes ``benchmarks/results/recipes.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, environment  # noqa: E402

from kdcore import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "recipes.json"
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
# Sized for two loaded CPU cores (see the JSON's settings); every flag not listed is default.
COMMON = ["--batch-size", "64", "--no-progress", "--backend", "reference", "--sample-rate",
          "8000", "--n-mels", "32", "--hop-length", "200", "--clip-seconds", "0.8"]
FSDD_FLAGS: list[str] = []
SYNTHETIC_FLAGS = ["--data", "synthetic", "--synthetic-size", "512"]
TEACHER = ["--model", "teacher_cnn", "--width", "8"]
THREADS = 1  # two cores shared by several jobs: one thread each is several times faster
STUDENT = "student_dscnn"


def fold_manifest(speaker: str, work: Path) -> Path:
    """FSDD with ``speaker`` as the test split and the other speakers as train."""
    rows = list(csv.DictReader((FSDD / "manifest.csv").open()))
    path = work / f"fsdd_{speaker}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "split"])
        for row in rows:
            writer.writerow([str((FSDD / row["path"]).resolve()), row["label"], row["speaker"],
                             "test" if row["speaker"] == speaker else "train"])
    return path


def run_cli(argv: list[str], out: Path) -> dict:
    """``kdcore`` in this process; returns test accuracy, wall seconds, epoch times."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([*argv, "--out", str(out), "--overwrite"])
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"kdcore {' '.join(argv)} exited with {code}")
    report = json.loads((out / "report.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line]
    return {"accuracy": report["accuracy"], "wall_s": round(wall, 1),
            "epoch_s": [round(e["time_s"], 2) for e in epochs]}


def unit(data: list[str], epochs: int, seed: int, work: Path, teacher_epochs: int) -> dict:
    """Teacher, students alone (without/with mixup), distill with defaults."""
    common = [*data, *COMMON, "--seed", str(seed)]
    teacher = run_cli(["train", *TEACHER, *common, "--epochs", str(teacher_epochs)],
                      work / "teacher")
    runs = {"teacher": teacher}
    student = ["--model", STUDENT, *common, "--epochs", str(epochs)]
    runs["alone"] = run_cli(["train", *student], work / "alone")
    runs["alone_mixup"] = run_cli(["train", *student, "--mixup", "0.4"], work / "alone_mixup")
    runs["distill"] = run_cli(["distill", "--teacher", str(work / "teacher" / "model.pt"),
                               "--student", STUDENT, *common, "--epochs", str(epochs)],
                              work / "distill")
    baseline = max(runs["alone"]["accuracy"], runs["alone_mixup"]["accuracy"])
    return {**runs, "baseline": baseline,
            "gain_points": round(100 * (runs["distill"]["accuracy"] - baseline), 2),
            "distill_wall_over_alone": round(
                runs["distill"]["wall_s"] / max(runs["alone"]["wall_s"], 1e-9), 2)}


def speed_check(data: list[str], work: Path, epochs: int, repeats: int = 2) -> dict:
    """Epoch seconds of the student alone on the views, KD from the filled view cache, and
    KD with the teacher online, on the same ViewSet (same augmentation)."""
    from torch.utils.data import DataLoader

    from kdcore import Distiller, Trainer
    from kdcore.models import create

    parser = cli.build_parser()
    args = parser.parse_args(["distill", *data, *COMMON, "--teacher",
                              str(work / "teacher" / "model.pt"), "--student", STUDENT,
                              "--out", str(work / "speed"), "--seed", "0", "--epochs",
                              str(epochs)])
    teacher = cli._load_teacher([args.teacher[0]], args, cli.load_data(
        args, deterministic_train=True).class_names)
    data_ = cli.load_data(args, deterministic_train=True)
    views = cli.view_set(data_.train, args)
    classes = len(data_.class_names)
    cache = work / "distill" / "teacher_cache"

    def epoch(kind: str) -> float:
        torch.manual_seed(0)
        student = create(STUDENT, classes, n_mels=args.n_mels)
        frontend = cli.view_student_frontend(args)
        loader = DataLoader(views, batch_size=args.batch_size, shuffle=True)
        options = {"progress": False, "device": "cpu", "loss_backend": "reference"}
        if kind == "alone":
            engine = Trainer(student, frontend=frontend, **options)
        else:
            engine = Distiller(teacher.model, student, student_frontend=frontend,
                               teacher_frontend=cli.model_frontend(args, augment=False),
                               teacher_mode=kind, **options,
                               **({"cache_dir": cache} if kind == "cached" else {}))
        history = engine.fit(loader, epochs=1, out_dir=work / f"speed_{kind}", resume=False)
        return history.epochs[-1]["time_s"]

    times: dict[str, list[float]] = {"alone": [], "cached": [], "online": []}
    for _ in range(repeats):
        for kind in ("alone", "cached"):
            times[kind].append(round(epoch(kind), 2))
    times["online"].append(round(epoch("online"), 2))
    best = {kind: min(values) for kind, values in times.items()}
    return {"epoch_s": times, "clips": len(views),
            "cached_over_alone": round(best["cached"] / best["alone"], 3),
            "online_over_alone": round(best["online"] / best["alone"], 3),
            "target_cached_over_alone": 1.2,
            "note": "min over repeats of one epoch each, interleaved; under the load average "
                    "recorded"}


def summarise(units: list[dict]) -> dict:
    gains = [u["gain_points"] for u in units]
    return {"n": len(gains), "mean_gain_points": round(statistics.mean(gains), 2) if gains
            else None,
            "std_gain_points": round(statistics.stdev(gains), 2) if len(gains) > 1 else None,
            "min_gain_points": min(gains) if gains else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=1500.0,
                        help="start no new unit after this many seconds")
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS))
    parser.add_argument("--synthetic-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the units already in --out (same settings) and run the "
                             "rest; the speed check is run again")
    options = parser.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(options.work or tempfile.mkdtemp(prefix="kdcore_recipes_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "versions": environment(),
        "load_average_start": list(os.getloadavg()),
        "settings": {"epochs": options.epochs, "teacher_epochs": options.teacher_epochs,
                     "teacher": TEACHER, "student": STUDENT, "common_flags": COMMON,
                     "fsdd_flags": FSDD_FLAGS, "synthetic_flags": SYNTHETIC_FLAGS,
                     "mixup_control": 0.4, "recipe": "kdcore distill defaults"},
        "commands": {
            "teacher": "kdcore train " + " ".join(TEACHER) + " --epochs TE ...",
            "alone": f"kdcore train --model {STUDENT} --epochs E [--mixup 0.4] ...",
            "distill": f"kdcore distill --teacher TEACHER/model.pt --student {STUDENT} "
                       "--epochs E ...",
            "benchmark": "python benchmarks/recipes.py " + " ".join(sys.argv[1:])},
        "fsdd": {"folds": {}, "planned": list(options.speakers)},
        "synthetic": {"seeds": {}, "planned": list(options.synthetic_seeds)},
        "complete": False,
    }
    out = Path(options.out)
    earlier_s = 0.0
    if options.resume and out.exists():
        stored = json.loads(out.read_text())
        if stored["settings"] != result["settings"]:
            raise SystemExit(f"--continue: {out} was run with other settings")
        earlier_s = stored.get("elapsed_s", 0.0)
        result["fsdd"]["folds"] = stored["fsdd"]["folds"]
        result["synthetic"]["seeds"] = stored["synthetic"]["seeds"]
        if "speed_fsdd" in stored:
            result["speed_fsdd"] = stored["speed_fsdd"]
        result["sessions"] = [*stored.get("sessions", [{
            "date": stored["versions"]["date"], "load_average_start":
            stored["load_average_start"], "load_average_end": stored.get("load_average_end"),
            "elapsed_s": earlier_s}])]
        result["commands"]["benchmark"] = (stored["commands"]["benchmark"] + "; then "
                                           + result["commands"]["benchmark"])

    def save() -> None:
        result["elapsed_s"] = round(earlier_s + time.perf_counter() - started, 1)
        result["load_average_end"] = list(os.getloadavg())
        for name, key in (("fsdd", "folds"), ("synthetic", "seeds")):
            result[name]["summary"] = summarise(list(result[name][key].values()))
        fsdd = result["fsdd"]["summary"]
        result["target"] = {"mean_gain_points_at_least": 2.0, "no_fold_below_points": -1.0,
                            "met": bool(fsdd["n"] == len(SPEAKERS) and fsdd["mean_gain_points"]
                                        >= 2.0 and fsdd["min_gain_points"] >= -1.0)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    def budget_left() -> bool:
        return time.perf_counter() - started < options.budget_s

    # interleaved, so that a spent budget leaves some of each: fold, speed, fold, seed, ...
    folds = [("fsdd", s) for s in options.speakers if FSDD.exists()]
    seeds = [("synthetic", seed) for seed in options.synthetic_seeds]
    planned = folds[:1] + [("speed", None)] + folds[1:2]
    rest = folds[2:]
    while rest or seeds:
        planned += seeds[:1] + rest[:2]
        seeds, rest = seeds[1:], rest[2:]
    finished = 0
    done = {("fsdd", k) for k in result["fsdd"]["folds"]} | {
        ("synthetic", int(k)) for k in result["synthetic"]["seeds"]} | (
        {("speed", None)} if "epoch_s" in result.get("speed_fsdd", {}) else set())
    for kind, name in planned:
        if (kind, name) in done:
            finished += 1
            continue
        if kind == "speed" and options.resume:
            continue  # run last, when the folds it needs are there
        if not budget_left():
            print(f"budget spent: skipping {kind} {name}", flush=True)
            continue
        if kind == "fsdd":
            folder = work / f"fold_{name}"
            folder.mkdir(exist_ok=True)
            data = ["--data", str(fold_manifest(name, work)), *FSDD_FLAGS]
            result["fsdd"]["folds"][name] = unit(data, options.epochs, 0, folder,
                                                 options.teacher_epochs)
        elif kind == "speed":
            first = options.speakers[0]
            if first not in result["fsdd"]["folds"]:
                continue
            data = ["--data", str(work / f"fsdd_{first}.csv"), *FSDD_FLAGS]
            try:
                result["speed_fsdd"] = {"fold": first, **speed_check(
                    data, work / f"fold_{first}", options.epochs)}
            except Exception as error:  # recorded, and the folds go on
                result["speed_fsdd"] = {"fold": first, "error": repr(error)}
        else:
            folder = work / f"synthetic_{name}"
            folder.mkdir(exist_ok=True)
            result["synthetic"]["seeds"][str(name)] = unit(SYNTHETIC_FLAGS, options.epochs,
                                                           name, folder,
                                                           options.teacher_epochs)
        finished += 1
        print(f"{kind} {name}: done at {time.perf_counter() - started:.0f} s", flush=True)
        save()
    if options.resume and budget_left() and options.speakers[0] in result["fsdd"]["folds"]:
        first = options.speakers[0]
        data = ["--data", str(fold_manifest(first, work)), *FSDD_FLAGS]
        result["speed_fsdd"] = {"fold": first, **speed_check(data, work / f"fold_{first}",
                                                             options.epochs)}
        finished += ("speed", None) not in done
    result["complete"] = finished == len(planned)
    if options.resume:
        result["sessions"].append({"date": environment()["date"],
                                   "load_average_start": result["load_average_start"],
                                   "load_average_end": list(os.getloadavg()),
                                   "elapsed_s": round(time.perf_counter() - started, 1)})
    save()
    print(json.dumps({k: result[k] for k in ("fsdd", "synthetic")}, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
