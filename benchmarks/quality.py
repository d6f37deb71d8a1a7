"""Does distillation help, measurably? The KD student against the same student trained alone,
over several seeds, on the embedded ``SyntheticAudio`` and on FSDD with one speaker held out.

Each (dataset, seed) runs :func:`kdcore.demo.compare`: the student alone and the same student
(same initialisation, epochs, learning rate, batch size and augmentation) with distillation,
all evaluated at the end of training on the held-out test split (no model selection on it).
The teacher is trained once per dataset with the first seed and shared (``--teacher-per-seed``
trains one per seed); the data are fixed, the seeds vary initialisation, order and
augmentation. Reported per dataset: accuracy and macro-F1 of each model as mean and sample
std over seeds, the paired per-seed KD gain, and the share of the teacher-minus-alone gap that
KD closes (mean gain over mean gap). Targets: gain >= 2 points and gap closed >= 50 %.

    python benchmarks/quality.py                       # both datasets, seeds 0 1 2
    python benchmarks/quality.py --datasets fsdd --seeds 0 --out /tmp/quality.json
    python benchmarks/quality.py --set student_width=32 teacher_epochs=20  # a variant
    python benchmarks/quality.py --merge s0.json s1.json s2.json  # seeds run side by side
    python benchmarks/quality.py --datasets fsdd --held-out george lucas  # other folds
    python benchmarks/quality.py --pool fsdd fsdd_heldoutgeorge --seeds 0 --into fsdd_folds
    python benchmarks/quality.py --datasets synthetic --set transfer_clips=2048 \
        --reuse-teacher 0 --alone-from synthetic  # KD-only variant: students alone as stored

FSDD is read from ``../shared/data/fsdd`` (or ``--fsdd DIR``) and skipped when absent. Its test
speaker is ``theo`` unless ``--held-out`` names others: each is a fold of its own, with its own
teacher, stored under ``<key>_heldout<speaker>``.
A variant that changes only what the KD student uses (``KD_ONLY_FIELDS``) can take the
students alone of a stored key with ``--alone-from KEY`` instead of training them again: the
recipe, data, seeds and teacher handling (hence initialisation) must match, and the entry
records where its students alone came from (``students_alone``).
Writes ``benchmarks/results/quality.json`` (merged per dataset) and the per-run reports under
``--work`` (default a temporary directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, environment, merge_results  # noqa: E402

from kdcore.data import AudioSource, group_split, load_source  # noqa: E402
from kdcore.demo import FULL, DemoConfig, compare, generate_all, synthetic_sets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
HELD_OUT_SPEAKER = "theo"
DATA_SEED = 0  # one dataset; the run seeds vary initialisation, data order and augmentation
# DemoConfig fields only the KD student uses: a run that changes no other field can take the
# students alone of a stored run (--alone-from) instead of training them again. Ensemble
# members after the first are created after the students, so "teachers" leaves them alone.
KD_ONLY_FIELDS = ("temperature", "alpha", "transfer_clips", "teachers")
TRAINED_ALONE = "trained in this run"

# The demo's full recipe on SyntheticAudio. On FSDD: 0.75 s crops (97 % of the recordings are
# shorter), 2500 train clips from five speakers, 500 test clips, and the first demo recipe
# (students 60 epochs, no mixup; the results stored as "fsdd"); --set changes either.
CONFIGS = {
    "synthetic": FULL,
    "fsdd": dataclasses.replace(FULL, duration=0.75, train_clips=2500, test_clips=500,
                                epochs=60, mixup=0.0),
}


def synthetic_data(config: DemoConfig):
    train_set, test_set, transfer_set = synthetic_sets(config, DATA_SEED)
    generate_all(train_set, test_set, transfer_set)
    unlabelled = unlabelled_clause(config.transfer_clips) if transfer_set else ""
    return (train_set, test_set, list(train_set.classes),
            f"SyntheticAudio ({train_set.num_classes} classes, {train_set.speakers} speakers "
            f"per split, test speakers unseen in training, data seed {DATA_SEED}{unlabelled})",
            transfer_set)


def unlabelled_clause(transfer_clips: int) -> str:
    """What ``synthetic_data`` adds to the data description for a transfer set."""
    return (f"; KD adds {transfer_clips} unlabelled clips, a new voice each "
            f"(data seed {DATA_SEED + 1})")


def _teacher_given(entry: dict, position: int, key: str) -> bool:
    """Whether run ``position`` of a stored entry had its teacher handed to ``compare`` (then
    no teacher was created first, which changes the students' initialisation). Entries
    stored before runs recorded it are read from their ``teacher`` text when unambiguous."""
    run = entry["runs"][position]
    if "teacher_given" in run:
        return run["teacher_given"]
    texts = entry.get("merged_from") or [entry["teacher"]]
    if all("taken from an earlier run" in text for text in texts):
        return True
    if all("trained per seed" in text for text in texts):
        return False
    if "merged_from" not in entry:
        return position > 0
    raise SystemExit(f"--alone-from: {key} does not record which seeds trained their own "
                     "teacher, so their students' initialisation is unknown")


def alone_rows_from(path: Path, key: str, recipe: DemoConfig, described: str, seed: int,
                    teacher_given: bool) -> list[dict]:
    """The students-alone rows of ``seed`` stored under ``key`` of ``path``, for a run that
    differs from that entry only in fields the KD student alone uses (``KD_ONLY_FIELDS``),
    on the same labelled data and with the same teacher handling (so the same
    initialisation). Anything else is refused, naming ``--alone-from``."""
    data = json.loads(path.read_text()) if path.exists() else {}
    if key not in data:
        raise SystemExit(f"--alone-from: no key {key!r} in {path}")
    entry = data[key]
    defaults = dataclasses.asdict(FULL) | {"seed": "per run"}
    stored = defaults | entry["config"]
    wanted = dataclasses.asdict(recipe) | {"seed": "per run"}
    differ = sorted(field for field in wanted
                    if field not in KD_ONLY_FIELDS and stored.get(field) != wanted[field])
    if differ:
        raise SystemExit(f"--alone-from: {key} trained its students alone with another "
                         f"recipe ({', '.join(differ)} differ)")
    # labelled data alike; either side may have had a transfer set, which only KD used
    labelled = described.replace(unlabelled_clause(recipe.transfer_clips), "")
    stored_labelled = str(entry.get("dataset")).replace(
        unlabelled_clause(stored["transfer_clips"]), "")
    if stored_labelled != labelled:
        raise SystemExit(f"--alone-from: {key} ran on other data ({entry.get('dataset')!r})")
    if seed not in entry["seeds"]:
        raise SystemExit(f"--alone-from: {key} has no run of seed {seed} "
                         f"(seeds {entry['seeds']})")
    position = entry["seeds"].index(seed)
    if _teacher_given(entry, position, key) != teacher_given:
        raise SystemExit(f"--alone-from: seed {seed} of {key} "
                         f"{'created' if teacher_given else 'was handed'} its teacher and "
                         "this run does not, so the students start from other weights "
                         "(see --reuse-teacher)")
    rows = entry["runs"][position]["rows"]
    return [row for row in rows if row["model"] in ("student alone", "alone + mixup")]


def check_held_out(source: AudioSource, root: Path, held_out: list[str]) -> None:
    """Exit naming ``--held-out`` unless every name is a speaker of the FSDD manifest."""
    speakers = sorted(set(source.groups("speaker")))
    unknown = [name for name in held_out if name not in speakers]
    if unknown:
        raise SystemExit(f"--held-out: no speaker {', '.join(map(repr, unknown))} in "
                         f"{root / 'manifest.csv'}; speakers: {', '.join(speakers)}")


def fsdd_data(config: DemoConfig, root: Path, held_out: str = HELD_OUT_SPEAKER):
    source = load_source(root / "manifest.csv")
    check_held_out(source, root, [held_out])
    split = group_split(source.groups("speaker"), test_groups=[held_out])
    clip = round(config.duration * config.sample_rate)
    options = {"sample_rate": config.sample_rate, "clip_samples": clip, "preload": True}
    train_set = source.dataset(split["train"], train=True, **options)
    test_set = source.dataset(split["test"], train=False, **options)
    return (train_set, test_set, list(source.classes),
            f"FSDD, speaker {held_out!r} held out", None)


def load_teacher(run_dir: Path, config: DemoConfig) -> torch.nn.Module:
    """The teacher that :func:`kdcore.demo.compare` trained into ``run_dir``: the Distiller
    checkpoint of its ``teacher`` run, or with ``config.teachers`` > 1 a
    :class:`~kdcore.models.TeacherEnsemble` of ``teacher``, ``teacher_1``, ... A missing
    member, or a checkpoint of another shape or schedule, is refused."""
    from kdcore.models import TeacherEnsemble, create

    members = []
    for index in range(config.teachers):
        name = "teacher" if index == 0 else f"teacher_{index}"
        path = run_dir / name / "checkpoints" / "last.pt"
        if not path.is_file():
            raise SystemExit(f"--reuse-teacher: no teacher checkpoint at {path}")
        state = torch.load(path, weights_only=True)
        if state["epoch"] != config.teacher_epochs:
            raise SystemExit(f"--reuse-teacher: {path} has {state['epoch']} epochs, the "
                             f"configuration {config.teacher_epochs}")
        weights = state["model"] if "model" in state else state["student"]  # older runs
        classes = weights["classifier.weight"].shape[0]
        member = create("teacher_cnn", classes, n_mels=config.n_mels,
                        width=config.teacher_width)
        member.load_state_dict(weights)  # the teacher was the run's trained model
        members.append(member.eval())
    return members[0] if len(members) == 1 else TeacherEnsemble(members).eval()


def parse_overrides(pairs: list[str]) -> dict:
    """``["student_width=32", ...]`` as :class:`DemoConfig` field overrides, each cast to the
    field's type; unknown fields and bad values exit with an error naming ``--set``."""
    fields = {field.name: type(getattr(FULL, field.name))
              for field in dataclasses.fields(DemoConfig) if field.name != "seed"}
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or key not in fields:
            raise SystemExit(f"--set: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}; got {pair!r}")
        cast = fields[key]
        try:
            if cast is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                overrides[key] = value.lower() in ("true", "1")
            else:
                overrides[key] = cast(value)
        except ValueError:
            raise SystemExit(f"--set: {key} takes a {cast.__name__}, got {value!r}") from None
    return overrides


def summarise(runs: list[dict]) -> dict:
    """Mean and sample std over seeds of each model's accuracy/macro-F1 (percent), the paired
    KD gain and the gap closed."""
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    summary = {}
    for position, row in enumerate(runs[0]["rows"]):
        summary[row["model"]] = {
            "accuracy": stats([100 * run["rows"][position]["accuracy"] for run in runs]),
            "macro_f1": stats([100 * run["rows"][position]["macro_f1"] for run in runs]),
            "parameters": row["parameters"],
            "macs": row["macs"],
        }
    # Per seed, against the better student trained without a teacher (kdcore.demo.compare).
    gains = [run["kd_gain_points"] for run in runs]
    gaps = []
    for run in runs:
        baseline = next(row for row in run["rows"] if row["model"] == run["baseline"])
        gaps.append(100 * (run["rows"][0]["accuracy"] - baseline["accuracy"]))
    mean_gap = statistics.fmean(gaps)
    summary["baselines"] = [run["baseline"] for run in runs]
    summary["kd_gain_points"] = stats(gains)
    summary["gap_points"] = stats(gaps)
    summary["gap_closed"] = statistics.fmean(gains) / mean_gap if mean_gap > 0 else None
    summary["targets_met"] = {
        "gain_at_least_2_points": summary["kd_gain_points"]["mean"] >= 2.0,
        "gap_closed_at_least_half": (summary["gap_closed"] or 0.0) >= 0.5,
    }
    return summary


def format_summary(name: str, summary: dict, over: str = "seeds") -> str:
    lines = [f"{name}:"]
    for model in [key for key, value in summary.items() if isinstance(value, dict)
                  and "macro_f1" in value]:
        accuracy = summary[model]["accuracy"]
        lines.append(f"  {model:<14} {accuracy['mean']:6.2f} ± {accuracy['std']:.2f} %  "
                     f"({over}: {', '.join(f'{v:.1f}' for v in accuracy['values'])})")
    gain = summary["kd_gain_points"]
    closed = summary["gap_closed"]
    lines.append(f"  KD gain {gain['mean']:+.2f} ± {gain['std']:.2f} points; gap closed "
                 f"{'n/a' if closed is None else f'{100 * closed:.0f} %'}")
    return "\n".join(lines)


def merge_seed_files(files: list[Path], out: Path) -> None:
    """Merge the entries that separate runs (one or more seeds each, written with ``--out``)
    stored under the same key into one entry of ``out``: runs concatenated in file order,
    summary recomputed. Every key of every file is merged, each from the files that hold it.
    Refuses a seed that appears twice, or a recipe or data description (``dataset``,
    ``train_clips``, ``test_clips``) that differs. Files whose students alone came from
    different places (``students_alone``: trained, or taken with ``--alone-from``) are merged
    with that recorded per run; so are files run on different CPU models (``merged_from``)."""
    loaded = [json.loads(path.read_text()) for path in files]
    keys = list(dict.fromkeys(key for data in loaded for key in data))
    for key in keys:
        payloads = [data[key] for data in loaded if key in data]
        seeds = [seed for payload in payloads for seed in payload["seeds"]]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--merge: {key}: seed repeated across files ({seeds})")
        if any(payload["config"] != payloads[0]["config"] for payload in payloads):
            raise SystemExit(f"--merge: {key}: the files hold different recipes")
        for field in ("dataset", "train_clips", "test_clips"):
            if any(payload.get(field) != payloads[0].get(field) for payload in payloads):
                raise SystemExit(f"--merge: {key}: the files describe different data "
                                 f"({field!r} differs)")
        sources = [payload.get("students_alone", TRAINED_ALONE) for payload in payloads]
        per_run = len(set(sources)) > 1
        runs = [({"students_alone": source} if per_run else {}) | run
                for payload, source in zip(payloads, sources, strict=True)
                for run in payload["runs"]]
        cpus = [payload.get("environment", {}).get("cpu", "not recorded")
                for payload in payloads]
        environment = ({"environment": payloads[0]["environment"] | {
            "cpu": cpus[0] if len(set(cpus)) == 1 else "per file (merged_from)"}}
            if "environment" in payloads[0] else {})
        merged = payloads[0] | ({"students_alone": "per run (runs[].students_alone)"}
                                if per_run else {}) | environment | {
            "seeds": seeds, "runs": runs, "summary": summarise(runs),
            "seconds": sum(payload["seconds"] for payload in payloads),
            "merged_from": [f"{len(payload['seeds'])} seed(s) in {payload['seconds']:.0f} s, "
                            f"teacher {payload['teacher']}, CPU {cpu}"
                            for payload, cpu in zip(payloads, cpus, strict=True)],
        }
        print("\n" + format_summary(key, merged["summary"]), flush=True)
        merge_results(out, key, merged)
    print(f"\nwrote {out}")


def pool_folds(keys: list[str], into: str, seed: int, out: Path) -> None:
    """Store under ``into`` of ``out`` one run per key of ``out`` (the run of ``seed``), e.g.
    the folds of a cross-validation over held-out speakers, with their summary: mean and std
    over the folds, the gain paired per fold. Refuses a missing key or seed, and keys whose
    recipes differ; a field that an older entry lacks (added to :class:`DemoConfig` since)
    counts as its default."""
    defaults = dataclasses.asdict(FULL) | {"seed": "per run"}
    data = json.loads(out.read_text()) if out.exists() else {}
    missing = [key for key in keys if key not in data]
    if missing:
        raise SystemExit(f"--pool: no key {', '.join(map(repr, missing))} in {out}")
    if len(set(keys)) != len(keys) or into in keys:
        raise SystemExit("--pool: each key once, and --into must name a new key")
    recipe = defaults | data[keys[0]]["config"]
    runs, folds = [], []
    for key in keys:
        entry = data[key]
        if defaults | entry["config"] != recipe:
            raise SystemExit(f"--pool: {key} has another recipe than {keys[0]}")
        if seed not in entry["seeds"]:
            raise SystemExit(f"--pool: {key} has no run of seed {seed} (seeds {entry['seeds']})")
        runs.append(entry["runs"][entry["seeds"].index(seed)])
        folds.append({"key": key, "dataset": entry["dataset"], "test_clips": entry["test_clips"],
                      "teacher": entry["teacher"], "date": entry["date"]})
    payload = {"date": datetime.date.today().isoformat(), "folds": folds, "seeds": [seed],
               "config": recipe, "runs": runs,
               "summary": summarise(runs),
               "note": f"one run (seed {seed}) per fold; mean and std are over the folds"}
    print("\n" + format_summary(into, payload["summary"], over="folds"), flush=True)
    merge_results(out, into, payload)
    print(f"\nwrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(CONFIGS),
                        default=["synthetic", "fsdd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fsdd", type=Path, default=FSDD)
    parser.add_argument("--held-out", nargs="+", default=[HELD_OUT_SPEAKER], metavar="SPEAKER",
                        help=f"FSDD test speaker(s), one fold each (default: "
                             f"{HELD_OUT_SPEAKER}); a fold other than {HELD_OUT_SPEAKER} is "
                             f"stored under '<key>_heldout<speaker>'")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the per-run reports go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reuse-teacher", nargs="?", const="first", default=None,
                        metavar="SEED",
                        help="take the teacher an earlier run with the same --work and "
                             "configuration trained: that run's seed SEED (default: the "
                             "first of --seeds)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override fields of the recipe (kdcore.demo.DemoConfig), e.g. "
                             "student_width=32 teacher_epochs=20; the results are stored "
                             "under '<dataset>_<field><value>...' instead of '<dataset>'")
    parser.add_argument("--teacher-per-seed", action="store_true",
                        help="train a teacher for every seed (default: the first seed's "
                             "teacher serves every seed; the seeds vary the students)")
    parser.add_argument("--alone-from", default=None, metavar="KEY",
                        help="take the students alone from KEY of --results instead of "
                        "training them again; the recipe may differ only in "
                        f"{', '.join(KD_ONLY_FIELDS)} (a KD-only variant)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the stored results --alone-from reads")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="FILE",
                        help="run nothing: merge per-seed result files of separate runs "
                             "(written with --out) into --out, 'seconds' summed")
    parser.add_argument("--pool", nargs="+", default=None, metavar="KEY",
                        help="run nothing: store one run per KEY of --out (the first of "
                             "--seeds), e.g. cross-validation folds, under --into, summarised "
                             "over the keys")
    parser.add_argument("--into", default=None, metavar="KEY", help="the key --pool writes")
    args = parser.parse_args(argv)
    if args.pool:
        if not args.into:
            raise SystemExit("--pool needs --into KEY (the key to write)")
        pool_folds(args.pool, args.into, args.seeds[0], args.out)
        return 0
    if args.merge:
        merge_seed_files(args.merge, args.out)
        return 0
    overrides = parse_overrides(args.set)
    if overrides.get("transfer_clips") and "fsdd" in args.datasets:
        raise SystemExit("--set transfer_clips: FSDD has no unlabelled clips; run it with "
                         "--datasets synthetic")
    teacher_seed = args.seeds[0]
    if args.reuse_teacher not in (None, "first"):
        try:
            teacher_seed = int(args.reuse_teacher)
        except ValueError:
            raise SystemExit(f"--reuse-teacher takes a seed (int), got "
                             f"{args.reuse_teacher!r}") from None
    suffix = "".join(f"_{key}{value}" for key, value in overrides.items())
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="kdcore_quality_"))
    held_out_speakers = list(dict.fromkeys(args.held_out))
    if held_out_speakers != [HELD_OUT_SPEAKER] and "fsdd" not in args.datasets:
        raise SystemExit("--held-out names FSDD test speakers; add fsdd to --datasets")
    folds = [(name, None) for name in args.datasets if name != "fsdd"]
    if "fsdd" in args.datasets:
        if (args.fsdd / "manifest.csv").is_file():
            check_held_out(load_source(args.fsdd / "manifest.csv"), args.fsdd,
                           held_out_speakers)
            folds += [("fsdd", speaker) for speaker in held_out_speakers]
        else:
            print(f"skipping fsdd: no manifest.csv under {args.fsdd}")
    for name, held_out in folds:
        fold = name if held_out in (None, HELD_OUT_SPEAKER) else f"{name}_heldout{held_out}"
        runs, teacher = [], None
        # whether each seed's compare call is handed a teacher (then none is created first)
        given = [args.reuse_teacher is not None or (position > 0 and not args.teacher_per_seed)
                 for position in range(len(args.seeds))]
        recipe = dataclasses.replace(CONFIGS[name], **overrides)
        started = time.perf_counter()
        if args.reuse_teacher is not None:
            teacher = load_teacher(work / fold / f"seed{teacher_seed}", recipe)
        alone = {}
        for position, seed in enumerate(args.seeds):
            config = dataclasses.replace(recipe, seed=seed)
            if name == "fsdd":
                train_set, test_set, classes, described, transfer_set = fsdd_data(
                    config, args.fsdd, held_out)
            else:
                train_set, test_set, classes, described, transfer_set = synthetic_data(config)
            print(f"\n### {name}, seed {seed}: {described}, {len(train_set)} train / "
                  f"{len(test_set)} test clips", flush=True)
            if args.alone_from and position == 0:  # every seed checked before any training
                alone = {later: alone_rows_from(args.results, args.alone_from, recipe,
                                                described, later, teacher_given)
                         for later, teacher_given in zip(args.seeds, given, strict=True)}
            assert given[position] == (teacher is not None)
            result = compare(train_set, test_set, classes, config, work / fold / f"seed{seed}",
                             progress=False, teacher=teacher, transfer_set=transfer_set,
                             alone_rows=alone.get(seed))
            if not args.teacher_per_seed:
                teacher = result["teacher"]
            runs.append(result)
        summary = summarise(runs)
        key = name + suffix + ("" if fold == name else fold[len(name):])
        print("\n" + format_summary(key, summary), flush=True)
        payload = {
            "date": datetime.date.today().isoformat(),
            "dataset": described,
            "train_clips": len(train_set), "test_clips": len(test_set),
            "seeds": args.seeds,
            "teacher": ("trained per seed" if args.teacher_per_seed else
                        f"trained once (seed {teacher_seed}), shared by every seed"
                        + (" (taken from an earlier run of the same configuration)"
                           if args.reuse_teacher is not None else "")),
            "config": dataclasses.asdict(recipe) | {"seed": "per run"},
            "summary": summary,
            "runs": [{"seed": seed, "rows": run["rows"], "baseline": run["baseline"],
                      "kd_gain_points": run["kd_gain_points"], "gap_closed": run["gap_closed"],
                      "teacher_given": teacher_given}
                     | ({"teacher_members_accuracy": run["teacher_members_accuracy"]}
                        if "teacher_members_accuracy" in run else {})
                     for seed, run, teacher_given in zip(args.seeds, runs, given, strict=True)],
            "seconds": time.perf_counter() - started,
        } | ({"students_alone": f"taken from {args.alone_from!r} of {args.results.name} (not "
                                "trained again: same recipe for them, data, seeds and "
                                "initialisation)"} if args.alone_from else {}) | {
            "environment": environment() | {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                                            "torch_threads": torch.get_num_threads(),
                                            "device": "cpu"},
        }
        merge_results(args.out, key, payload)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
