"""The distillation recipes the way a user meets them: ``kdcore train`` and ``kdcore distill``
with their defaults, on FSDD with each speaker held out in turn and on SyntheticAudio.

Per FSDD fold (one speaker is the test split, the other five train) and per SyntheticAudio seed:

1. a teacher, ``kdcore train --model teacher_cnn`` (``TEACHER``);
2. the student alone, ``kdcore train --model student_dscnn``, without and with ``--mixup 0.4``;
   the baseline is the better of the two;
3. ``kdcore distill --teacher <1> --student student_dscnn`` with every default (function
   matching; the view cache, filled inside the run and counted in its wall time);

all with the same epochs, seed, batch size and student. The KD gain is the distilled student's
test accuracy minus the baseline's. Every fold runs seed 0; the first ``--extra-seed-folds``
folds also run ``--extra-seeds``, and a fold's gain is the mean over its seeds. Last, alone, on
the first fold, the speed check: one epoch of the student alone on the same views (same
augmentation), one epoch of KD from the filled view cache and one of KD with the teacher
online, timed by the training loop (epoch ``time_s``).

    python benchmarks/recipes.py --jobs 2              # the committed run (budgeted)
    python benchmarks/recipes.py --epochs 5 --teacher-epochs 5 --out /tmp/recipes.json  # quick

Units run ``--jobs`` at a time, one torch thread each. No new unit starts once ``--budget-s``
is spent; the JSON says what finished (``complete``). Writes
``benchmarks/results/recipes.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import io
import json
import multiprocessing
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


def summarise(units: dict[str, dict]) -> dict:
    """Mean, spread and lowest gain; a unit that names its ``fold`` counts once per fold (the
    mean over that fold's seeds), so extra seeds on some folds do not weigh them more."""
    by_fold: dict[str, list[float]] = {}
    for key, found in units.items():
        by_fold.setdefault(found.get("fold", key), []).append(found["gain_points"])
    gains = [statistics.mean(values) for values in by_fold.values()]
    every = [g for values in by_fold.values() for g in values]
    return {"n": len(gains), "runs": len(every),
            "gain_points_per_fold": {k: round(statistics.mean(v), 2) for k, v in
                                     by_fold.items()},
            "mean_gain_points": round(statistics.mean(gains), 2) if gains else None,
            "std_gain_points": round(statistics.stdev(gains), 2) if len(gains) > 1 else None,
            "min_gain_points": round(min(gains), 2) if gains else None,
            "min_gain_points_any_run": min(every) if every else None}


def run_unit(kind: str, name: str, seed: int, epochs: int, teacher_epochs: int,
             work: str) -> dict:
    """One FSDD fold (``name`` = held-out speaker) or SyntheticAudio seed, in its own folder;
    a top-level function, so that ``--jobs`` can run it in a worker process."""
    torch.set_num_threads(THREADS)
    root = Path(work)
    if kind == "fsdd":
        folder = root / f"fold_{name}_seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        data = ["--data", str(fold_manifest(name, folder)), *FSDD_FLAGS]
    else:
        folder, data = root / f"synthetic_{seed}", SYNTHETIC_FLAGS
        folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    found = unit(data, epochs, seed, folder, teacher_epochs)
    return {**({"fold": name} if kind == "fsdd" else {}), "seed": seed, **found,
            "unit_wall_s": round(time.perf_counter() - started, 1)}


def plan(speakers: list[str], synthetic_seeds: list[int], extra_seeds: list[int],
         extra_seed_folds: int) -> list[tuple[str, str, str, int]]:
    """``(section, key, name, seed)`` per unit: every fold at seed 0, the synthetic seeds, and
    ``extra_seeds`` on the first ``extra_seed_folds`` folds, interleaved so that a spent
    budget leaves some of each."""
    folds = [("fsdd", s, s, 0) for s in speakers if FSDD.exists()]
    seeds = [("synthetic", str(n), "synthetic", n) for n in synthetic_seeds]
    extra = [("fsdd", f"{s} (seed {n})", s, n) for s in speakers[:extra_seed_folds]
             for n in extra_seeds if FSDD.exists()]
    planned: list[tuple[str, str, str, int]] = []
    while folds or seeds or extra:
        planned += folds[:2] + seeds[:1] + extra[:1]
        folds, seeds, extra = folds[2:], seeds[1:], extra[1:]
    return planned


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60, help="student epochs (default 60)")
    parser.add_argument("--teacher-epochs", type=int, default=30, help="default 30")
    parser.add_argument("--budget-s", type=float, default=3600.0,
                        help="start no new unit after this many seconds (default 3600)")
    parser.add_argument("--speakers", nargs="+", default=list(SPEAKERS))
    parser.add_argument("--synthetic-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2],
                        help="seeds run again on the first --extra-seed-folds folds "
                             "(default 1 2)")
    parser.add_argument("--extra-seed-folds", type=int, default=2, help="default 2")
    parser.add_argument("--jobs", type=int, default=1,
                        help=f"units run at once, in worker processes of {THREADS} torch "
                             "thread(s) each (default 1); the speed check runs last, alone")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the units already in --out (same settings) and run the "
                             "rest; the speed check is run again")
    options = parser.parse_args()
    if options.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {options.jobs}")
    torch.set_num_threads(THREADS)
    work = Path(options.work or tempfile.mkdtemp(prefix="kdcore_recipes_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "jobs": options.jobs},
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
        "fsdd": {"folds": {}, "planned": []},
        "synthetic": {"seeds": {}, "planned": []},
        "complete": False,
    }
    planned = plan(options.speakers, options.synthetic_seeds, options.extra_seeds,
                   options.extra_seed_folds)
    for section, key, _, _ in planned:
        result[section]["planned"].append(key)
    out = Path(options.out)
    earlier_s = 0.0
    if options.resume and out.exists():
        stored = json.loads(out.read_text())
        if stored["settings"] != result["settings"]:
            raise SystemExit(f"--continue: {out} was run with other settings")
        earlier_s = stored.get("elapsed_s", 0.0)
        result["fsdd"]["folds"] = stored["fsdd"]["folds"]
        result["synthetic"]["seeds"] = stored["synthetic"]["seeds"]
        result["sessions"] = [*stored.get("sessions", [{
            "date": stored["versions"]["date"], "load_average_start":
            stored["load_average_start"], "load_average_end": stored.get("load_average_end"),
            "elapsed_s": earlier_s}])]
        result["commands"]["benchmark"] = (stored["commands"]["benchmark"] + "; then "
                                           + result["commands"]["benchmark"])
    units = {"fsdd": result["fsdd"]["folds"], "synthetic": result["synthetic"]["seeds"]}

    def save() -> None:
        result["elapsed_s"] = round(earlier_s + time.perf_counter() - started, 1)
        result["load_average_end"] = list(os.getloadavg())
        for name, key in (("fsdd", "folds"), ("synthetic", "seeds")):
            result[name]["summary"] = summarise(result[name][key])
        fsdd = result["fsdd"]["summary"]
        result["target"] = {"mean_gain_points_at_least": 2.0, "no_fold_below_points": -1.0,
                            "per_fold": "mean over the fold's seeds",
                            "met": bool(fsdd["n"] == len(SPEAKERS) and fsdd["mean_gain_points"]
                                        >= 2.0 and fsdd["min_gain_points"] >= -1.0)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    todo = [u for u in planned if u[1] not in units[u[0]]]
    skipped = 0
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(options.jobs, mp_context=context) as pool:
        running: dict[concurrent.futures.Future, tuple[str, str]] = {}
        while todo or running:
            while todo and len(running) < options.jobs:
                section, key, name, seed = todo.pop(0)
                if time.perf_counter() - started >= options.budget_s:
                    print(f"budget spent: skipping {section} {key}", flush=True)
                    skipped += 1
                    continue
                running[pool.submit(run_unit, section, name, seed, options.epochs,
                                    options.teacher_epochs, str(work))] = (section, key)
            if not running:
                break
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                section, key = running.pop(future)
                units[section][key] = future.result()
                print(f"{section} {key}: done at {time.perf_counter() - started:.0f} s",
                      flush=True)
                save()
    first = options.speakers[0] if options.speakers else None
    if first in units["fsdd"] and time.perf_counter() - started < options.budget_s:
        data = ["--data", str(fold_manifest(first, work)), *FSDD_FLAGS]
        try:
            result["speed_fsdd"] = {"fold": first, **speed_check(
                data, work / f"fold_{first}_seed0", options.epochs)}
        except Exception as error:  # recorded; the units stand
            result["speed_fsdd"] = {"fold": first, "error": repr(error)}
    result["complete"] = skipped == 0 and "epoch_s" in result.get("speed_fsdd", {})
    if options.resume:
        result["sessions"].append({"date": environment()["date"],
                                   "load_average_start": result["load_average_start"],
                                   "load_average_end": list(os.getloadavg()),
                                   "elapsed_s": round(time.perf_counter() - started, 1)})
    save()
    print(json.dumps({k: result[k]["summary"] for k in ("fsdd", "synthetic")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
