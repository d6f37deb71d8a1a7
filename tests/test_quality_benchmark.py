"""``benchmarks/quality.py``: recipe overrides and the seed summary (hand-computed cases)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"
_SPEC = importlib.util.spec_from_file_location("kdcore_quality_benchmark", _PATH)
quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quality)


def test_overrides_are_cast_to_the_recipe_field_types():
    overrides = quality.parse_overrides(["student_width=32", "temperature=4",
                                         "mixup_control=false", "teacher_epochs=20",
                                         "student_pooling=meanmax"])
    assert overrides == {"student_width": 32, "temperature": 4.0, "mixup_control": False,
                         "teacher_epochs": 20, "student_pooling": "meanmax"}
    assert type(overrides["temperature"]) is float


@pytest.mark.parametrize("pair, message", [
    ("width=32", "FIELD=VALUE"),
    ("student_width", "FIELD=VALUE"),
    ("seed=3", "FIELD=VALUE"),
    ("student_width=wide", "student_width takes a int"),
    ("mixup_control=maybe", "mixup_control takes a bool"),
])
def test_bad_overrides_exit_naming_the_option(pair, message):
    with pytest.raises(SystemExit, match="--set") as raised:
        quality.parse_overrides([pair])
    assert message in str(raised.value)


def _run(teacher: float, alone: float, kd: float) -> dict:
    rows = [{"model": "teacher", "accuracy": teacher, "macro_f1": teacher},
            {"model": "student alone", "accuracy": alone, "macro_f1": alone},
            {"model": "student + KD", "accuracy": kd, "macro_f1": kd}]
    for row in rows:
        row |= {"parameters": 1, "macs": 1}
    return {"rows": rows, "baseline": "student alone", "kd_gain_points": 100 * (kd - alone)}


def test_summary_by_hand():
    runs = [_run(0.98, 0.92, 0.95), _run(0.98, 0.94, 0.95), _run(0.98, 0.93, 0.96)]
    summary = quality.summarise(runs)
    assert summary["student alone"]["accuracy"]["mean"] == pytest.approx(93.0)
    assert summary["student alone"]["accuracy"]["std"] == pytest.approx(1.0)
    # gains 3, 1, 3 points; gaps 6, 4, 5 points
    assert summary["kd_gain_points"]["mean"] == pytest.approx(7 / 3)
    assert summary["kd_gain_points"]["std"] == pytest.approx((4 / 3) ** 0.5)
    assert summary["gap_closed"] == pytest.approx((7 / 3) / 5)
    assert summary["targets_met"] == {"gain_at_least_2_points": True,
                                      "gap_closed_at_least_half": False}


def _seed_file(path, seeds, runs, config=None, dataset="SyntheticAudio",
               key="synthetic_epochs120", environment=None):
    payload = {"seeds": seeds, "runs": runs, "seconds": 10.0 * len(seeds),
               "config": config or {"epochs": 120}, "teacher": "trained once (seed 0)",
               "summary": quality.summarise(runs), "dataset": dataset,
               "train_clips": 2048, "test_clips": 512}
    if environment is not None:
        payload["environment"] = environment
    path.write_text(json.dumps({key: payload}))
    return path


def test_merge_concatenates_seeds_and_recomputes_the_summary(tmp_path):
    first = _seed_file(tmp_path / "s0.json", [0], [_run(0.98, 0.92, 0.95)])
    rest = _seed_file(tmp_path / "s12.json", [1, 2],
                      [_run(0.98, 0.94, 0.95), _run(0.98, 0.93, 0.96)])
    out = tmp_path / "quality.json"
    out.write_text(json.dumps({"fsdd": {"kept": True}}))
    assert quality.main(["--merge", str(first), str(rest), "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    assert stored["fsdd"] == {"kept": True}
    merged = stored["synthetic_epochs120"]
    assert merged["seeds"] == [0, 1, 2] and merged["seconds"] == 30.0
    assert merged["summary"]["kd_gain_points"]["mean"] == pytest.approx(7 / 3)
    assert merged["summary"]["gap_closed"] == pytest.approx((7 / 3) / 5)


def test_merge_records_the_cpu_of_each_file_when_they_differ(tmp_path):
    def with_cpu(path, seed, cpu):
        return _seed_file(path, [seed], [_run(0.98, 0.92, 0.95)],
                          environment={"torch": "2.13.0+cpu"} | ({"cpu": cpu} if cpu else {}))

    same = [with_cpu(tmp_path / f"s{seed}.json", seed, "Xeon") for seed in (0, 1)]
    quality.merge_seed_files(same, tmp_path / "same.json")
    merged = json.loads((tmp_path / "same.json").read_text())["synthetic_epochs120"]
    assert merged["environment"] == {"torch": "2.13.0+cpu", "cpu": "Xeon"}
    older = with_cpu(tmp_path / "s2.json", 2, None)  # written before the cpu was recorded
    epyc = with_cpu(tmp_path / "s3.json", 3, "EPYC")
    quality.merge_seed_files([*same, older, epyc], tmp_path / "mixed.json")
    merged = json.loads((tmp_path / "mixed.json").read_text())["synthetic_epochs120"]
    assert merged["environment"]["cpu"] == "per file (merged_from)"
    assert [entry.rsplit("CPU ", 1)[1] for entry in merged["merged_from"]] == [
        "Xeon", "Xeon", "not recorded", "EPYC"]


def test_merge_keeps_keys_that_only_later_files_hold(tmp_path):
    short = _seed_file(tmp_path / "short.json", [0, 1], [_run(0.98, 0.92, 0.95)] * 2)
    long = _seed_file(tmp_path / "long.json", [0], [_run(0.98, 0.90, 0.97)],
                      key="synthetic_epochs360")
    out = tmp_path / "quality.json"
    assert quality.main(["--merge", str(short), str(long), "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    assert stored["synthetic_epochs120"]["seeds"] == [0, 1]
    assert stored["synthetic_epochs360"]["seeds"] == [0]
    assert stored["synthetic_epochs360"]["summary"]["kd_gain_points"]["mean"] == pytest.approx(7)


def test_merge_refuses_repeated_seeds_different_recipes_and_different_data(tmp_path):
    first = _seed_file(tmp_path / "a.json", [0], [_run(0.98, 0.92, 0.95)])
    again = _seed_file(tmp_path / "b.json", [0], [_run(0.98, 0.92, 0.95)])
    other = _seed_file(tmp_path / "c.json", [1], [_run(0.98, 0.92, 0.95)], {"epochs": 60})
    out = tmp_path / "quality.json"
    with pytest.raises(SystemExit, match="seed repeated"):
        quality.main(["--merge", str(first), str(again), "--out", str(out)])
    with pytest.raises(SystemExit, match="different recipes"):
        quality.main(["--merge", str(first), str(other), "--out", str(out)])
    described = _seed_file(tmp_path / "d.json", [1], [_run(0.98, 0.92, 0.95)],
                           dataset="SyntheticAudio, 3 speakers per split")
    with pytest.raises(SystemExit, match="different data \\('dataset' differs\\)"):
        quality.main(["--merge", str(first), str(described), "--out", str(out)])
    assert not out.exists()


def test_reuse_teacher_takes_a_seed(tmp_path):
    with pytest.raises(SystemExit, match="--reuse-teacher takes a seed"):
        quality.main(["--reuse-teacher", "first-one", "--work", str(tmp_path)])
    with pytest.raises(SystemExit, match="no teacher checkpoint at .*seed3"):
        quality.main(["--datasets", "synthetic", "--seeds", "1", "--reuse-teacher", "3",
                      "--work", str(tmp_path), "--out", str(tmp_path / "q.json")])


def test_reuse_teacher_loads_every_ensemble_member(tmp_path):
    import torch

    from kdcore.models import TeacherEnsemble, create

    config = quality.DemoConfig(train_clips=32, test_clips=16, epochs=1, teacher_epochs=3,
                                n_mels=16, teacher_width=4, teachers=2)
    weights = []
    for index, name in enumerate(["teacher", "teacher_1"]):
        torch.manual_seed(index)
        state = create("teacher_cnn", 5, n_mels=16, width=4).state_dict()
        weights.append(state)
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        torch.save({"epoch": 3, "student": state},
                   tmp_path / name / "checkpoints" / "last.pt")
    teacher = quality.load_teacher(tmp_path, config)
    assert isinstance(teacher, TeacherEnsemble) and not teacher.training
    for member, state in zip(teacher.members, weights, strict=True):
        assert torch.equal(member.classifier.weight, state["classifier.weight"])
    with pytest.raises(SystemExit, match="no teacher checkpoint at .*teacher_2"):
        quality.load_teacher(tmp_path, quality.dataclasses.replace(config, teachers=3))
    with pytest.raises(SystemExit, match="has 3 epochs, the configuration 4"):
        quality.load_teacher(tmp_path, quality.dataclasses.replace(config, teacher_epochs=4))


def test_runs_keep_the_ensemble_members_accuracy(tmp_path, monkeypatch):
    def fake_data(config):
        return [0] * 4, [0] * 2, ["a", "b"], "fake data", None

    def fake_compare(train_set, test_set, classes, config, out, progress, teacher,
                     transfer_set, alone_rows):
        run = _run(0.98, 0.92 + config.seed / 100, 0.95)
        members = {"teacher_members_accuracy": [0.97, 0.96]} if config.seed == 1 else {}
        return run | {"gap_closed": 0.5, "teacher": "trained"} | members

    monkeypatch.setattr(quality, "synthetic_data", fake_data)
    monkeypatch.setattr(quality, "compare", fake_compare)
    out = tmp_path / "q.json"
    assert quality.main(["--datasets", "synthetic", "--seeds", "0", "1", "--work",
                         str(tmp_path), "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["synthetic"]
    # float results differ between CPU models, so every entry names the one it ran on
    assert entry["environment"]["cpu"] == quality.cpu_model() != ""
    runs = entry["runs"]
    assert [run["seed"] for run in runs] == [0, 1]
    assert "teacher_members_accuracy" not in runs[0]
    assert runs[1]["teacher_members_accuracy"] == [0.97, 0.96]
    assert runs[1]["kd_gain_points"] == pytest.approx(2.0)


def _tiny_fsdd(root: Path, speakers: list[str]) -> Path:
    """A manifest with one silent 0.1 s clip per speaker (class = the speaker's index)."""
    import numpy as np
    import soundfile

    root.mkdir(exist_ok=True)
    rows = ["path,label,speaker"]
    for index, speaker in enumerate(speakers):
        soundfile.write(root / f"{index}.wav", np.zeros(800, dtype=np.float32), 8000)
        rows.append(f"{index}.wav,{index},{speaker}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_each_held_out_speaker_is_a_fold_with_its_own_key_work_dir_and_teacher(tmp_path,
                                                                               monkeypatch):
    calls = []

    def fake_fsdd(config, root, held_out):
        return [0] * 4, [0] * 2, ["a", "b"], f"FSDD, speaker {held_out!r} held out", None

    def fake_compare(train_set, test_set, classes, config, out, progress, teacher,
                     transfer_set, alone_rows):
        calls.append((out, teacher))
        return _run(0.98, 0.90, 0.95) | {"gap_closed": 0.625, "teacher": f"teacher of {out}"}

    monkeypatch.setattr(quality, "fsdd_data", fake_fsdd)
    monkeypatch.setattr(quality, "compare", fake_compare)
    _tiny_fsdd(tmp_path / "fsdd", ["george", "theo"])
    out = tmp_path / "q.json"
    assert quality.main(["--datasets", "fsdd", "--held-out", "theo", "george", "theo",
                         "--seeds", "0", "1", "--set", "epochs=360",
                         "--fsdd", str(tmp_path / "fsdd"), "--work", str(tmp_path / "work"),
                         "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    assert sorted(stored) == ["fsdd_epochs360", "fsdd_epochs360_heldoutgeorge"]
    assert stored["fsdd_epochs360_heldoutgeorge"]["dataset"] == "FSDD, speaker 'george' held out"
    work = tmp_path / "work"
    assert [out for out, _ in calls] == [work / "fsdd" / "seed0", work / "fsdd" / "seed1",
                                         work / "fsdd_heldoutgeorge" / "seed0",
                                         work / "fsdd_heldoutgeorge" / "seed1"]
    # the first seed of each fold trains its teacher; the fold's later seeds reuse it
    george = work / "fsdd_heldoutgeorge"
    assert [teacher for _, teacher in calls] == [None, f"teacher of {work / 'fsdd' / 'seed0'}",
                                                 None, f"teacher of {george / 'seed0'}"]


def test_an_unknown_held_out_speaker_exits_naming_the_option(tmp_path):
    _tiny_fsdd(tmp_path, ["anna", "bert"])
    with pytest.raises(SystemExit, match="--held-out: no speaker 'theo' .*speakers: anna, bert"):
        quality.fsdd_data(quality.CONFIGS["fsdd"], tmp_path, "theo")
    # checked before any fold runs, every unknown name listed
    with pytest.raises(SystemExit, match="--held-out: no speaker 'carl', 'dora' in"):
        quality.main(["--held-out", "anna", "carl", "dora", "--fsdd", str(tmp_path),
                      "--work", str(tmp_path / "work"), "--out", str(tmp_path / "q.json")])
    assert not (tmp_path / "work").exists() and not (tmp_path / "q.json").exists()
    with pytest.raises(SystemExit, match="--held-out names FSDD test speakers; add fsdd"):
        quality.main(["--datasets", "synthetic", "--held-out", "anna"])


def _entry(seeds: list[int], runs: list[dict], config: dict | None = None) -> dict:
    return {"date": "2026-11-24", "dataset": "FSDD", "test_clips": 500, "seeds": seeds,
            "teacher": "trained once (seed 0)", "config": config or {"epochs": 360},
            "runs": runs, "summary": quality.summarise(runs)}


def test_pool_takes_one_seed_per_fold_and_summarises_over_the_folds(tmp_path):
    out = tmp_path / "q.json"
    # an entry written before DemoConfig had a field pools with one that records its default
    out.write_text(json.dumps({
        "fsdd": _entry([0, 1], [_run(0.97, 0.93, 0.95), _run(0.97, 0.90, 0.96)]),
        "fsdd_heldoutgeorge": _entry([0], [_run(0.91, 0.91, 0.90)],
                                     {"epochs": 360, "teachers": 1}),
        "other": _entry([0], [_run(0.9, 0.8, 0.85)], {"epochs": 360, "teachers": 2}),
    }))
    assert quality.main(["--pool", "fsdd", "fsdd_heldoutgeorge", "--into", "folds",
                         "--seeds", "0", "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())["folds"]
    assert [fold["key"] for fold in pooled["folds"]] == ["fsdd", "fsdd_heldoutgeorge"]
    summary = pooled["summary"]
    # gains +2 and -1 points; gaps 4 and 0 points: mean gain 0.5 over mean gap 2
    assert summary["kd_gain_points"]["values"] == pytest.approx([2.0, -1.0])
    assert summary["kd_gain_points"]["std"] == pytest.approx(2.1213203, abs=1e-6)
    assert summary["gap_closed"] == pytest.approx(0.25)
    assert summary["student alone"]["accuracy"]["mean"] == pytest.approx(92.0)
    with pytest.raises(SystemExit, match="no run of seed 1"):
        quality.main(["--pool", "fsdd", "fsdd_heldoutgeorge", "--into", "x", "--seeds", "1",
                      "--out", str(out)])
    assert pooled["config"]["teachers"] == 1 and pooled["config"]["epochs"] == 360
    with pytest.raises(SystemExit, match="other has another recipe"):
        quality.main(["--pool", "fsdd", "other", "--into", "x", "--seeds", "0",
                      "--out", str(out)])
    with pytest.raises(SystemExit, match="no key 'nobody'"):
        quality.main(["--pool", "fsdd", "nobody", "--into", "x", "--out", str(out)])
    with pytest.raises(SystemExit, match="--pool needs --into"):
        quality.main(["--pool", "fsdd", "--out", str(out)])
    assert "x" not in json.loads(out.read_text())


def test_a_transfer_set_is_refused_for_fsdd():
    with pytest.raises(SystemExit, match="--set transfer_clips: FSDD has no unlabelled clips"):
        quality.main(["--datasets", "fsdd", "--set", "transfer_clips=2048"])


def _stored_alone(path: Path, teacher: str, runs: list[dict], merged_from=None) -> Path:
    """A results file whose key ``synthetic_epochs360`` holds ``runs`` of seeds 0, 1, ..."""
    entry = {"seeds": list(range(len(runs))), "runs": runs, "config": {"epochs": 360},
             "teacher": teacher, "dataset": "fake data", "train_clips": 4, "test_clips": 2}
    if merged_from:
        entry["merged_from"] = merged_from
    path.write_text(json.dumps({"synthetic_epochs360": entry}))
    return path


def test_alone_from_takes_the_stored_students_alone_of_each_seed(tmp_path, monkeypatch):
    stored = [_run(0.98, 0.91, 0.93), _run(0.98, 0.92, 0.94)]
    results = _stored_alone(tmp_path / "stored.json",
                            "trained once (seed 0), shared by every seed", stored)
    calls = []

    def fake_data(config):
        described = "fake data" + (quality.unlabelled_clause(config.transfer_clips)
                                   if config.transfer_clips else "")
        return [0] * 4, [0] * 2, ["a", "b"], described, None

    def fake_compare(train_set, test_set, classes, config, out, progress, teacher,
                     transfer_set, alone_rows):
        calls.append(alone_rows)
        kd = 0.96 if config.seed == 0 else 0.95
        alone = alone_rows[0]["accuracy"]
        return {"rows": [stored[0]["rows"][0], *alone_rows,
                         {"model": "student + KD", "accuracy": kd, "macro_f1": kd,
                          "parameters": 1, "macs": 1}],
                "baseline": "student alone", "kd_gain_points": 100 * (kd - alone),
                "gap_closed": None, "teacher": "trained"}

    monkeypatch.setattr(quality, "synthetic_data", fake_data)
    monkeypatch.setattr(quality, "compare", fake_compare)
    out = tmp_path / "q.json"
    common = ["--datasets", "synthetic", "--set", "epochs=360", "transfer_clips=64",
              "--alone-from", "synthetic_epochs360", "--results", str(results),
              "--work", str(tmp_path), "--out", str(out)]
    with pytest.raises(SystemExit, match="no run of seed 7"):
        quality.main(common + ["--seeds", "0", "7"])
    assert calls == []  # refused before the first seed trained anything
    assert quality.main(common + ["--seeds", "0", "1"]) == 0
    assert calls == [[stored[0]["rows"][1]], [stored[1]["rows"][1]]]
    entry = json.loads(out.read_text())["synthetic_epochs360_transfer_clips64"]
    assert "synthetic_epochs360" in entry["students_alone"]
    assert [run["teacher_given"] for run in entry["runs"]] == [False, True]
    assert entry["summary"]["kd_gain_points"]["values"] == pytest.approx([5.0, 3.0])
    # seeds stored with and without taken students alone merge with the source per run
    other = tmp_path / "other.json"
    trained = {key: value for key, value in entry.items() if key != "students_alone"}
    other.write_text(json.dumps({"synthetic_epochs360_transfer_clips64": trained | {
        "seeds": [2], "runs": [entry["runs"][0] | {"seed": 2}]}}))
    quality.merge_seed_files([out, other], tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())[
        "synthetic_epochs360_transfer_clips64"]
    assert merged["seeds"] == [0, 1, 2]
    assert merged["students_alone"].startswith("per run")
    assert [run["students_alone"] for run in merged["runs"]] == [
        entry["students_alone"], entry["students_alone"], quality.TRAINED_ALONE]
    # files that agree keep the one entry-level record and no per-run copies
    quality.merge_seed_files([out], tmp_path / "same.json")
    same = json.loads((tmp_path / "same.json").read_text())["synthetic_epochs360_transfer_clips64"]
    assert same["students_alone"] == entry["students_alone"]
    assert all("students_alone" not in run for run in same["runs"])


def test_alone_from_refuses_other_recipes_data_seeds_and_initialisations(tmp_path):
    from kdcore.demo import FULL

    recipe = dataclasses.replace(FULL, epochs=360, temperature=4.0, alpha=0.5)
    runs = [_run(0.98, 0.91, 0.93), _run(0.98, 0.92, 0.94)]
    given = _stored_alone(tmp_path / "given.json", "trained once (seed 0), shared by every "
                          "seed (taken from an earlier run of the same configuration)", runs)
    rows = quality.alone_rows_from(given, "synthetic_epochs360", recipe, "fake data", 1, True)
    assert rows == [runs[1]["rows"][1]]  # KD-only fields may differ
    with pytest.raises(SystemExit, match="no key 'missing'"):
        quality.alone_rows_from(given, "missing", recipe, "fake data", 0, True)
    with pytest.raises(SystemExit, match=r"another recipe \(epochs, student_width differ\)"):
        quality.alone_rows_from(given, "synthetic_epochs360",
                                dataclasses.replace(recipe, epochs=120, student_width=32),
                                "fake data", 0, True)
    with pytest.raises(SystemExit, match="ran on other data"):
        quality.alone_rows_from(given, "synthetic_epochs360", recipe, "FSDD", 0, True)
    with pytest.raises(SystemExit, match="seed 0 of synthetic_epochs360 was handed its "
                                         "teacher and this run does not"):
        quality.alone_rows_from(given, "synthetic_epochs360", recipe, "fake data", 0, False)
    # a run's own record wins over the entry's text
    runs[0]["teacher_given"] = False
    recorded = _stored_alone(tmp_path / "recorded.json", "anything", runs)
    with pytest.raises(SystemExit, match="seed 0 of synthetic_epochs360 created its teacher"):
        quality.alone_rows_from(recorded, "synthetic_epochs360", recipe, "fake data", 0, True)
    del runs[0]["teacher_given"]
    merged = _stored_alone(tmp_path / "merged.json", "trained once (seed 0), shared by every "
                           "seed", runs, merged_from=["1 seed(s) in 1 s, teacher trained once",
                                                      "1 seed(s) in 1 s, teacher trained once"])
    with pytest.raises(SystemExit, match="does not record which seeds"):
        quality.alone_rows_from(merged, "synthetic_epochs360", recipe, "fake data", 1, True)
    # a stored KD student with a transfer set: its students alone serve a run without one
    transfer_path = _stored_alone(tmp_path / "transfer.json", "trained per seed", runs)
    stored = json.loads(transfer_path.read_text())
    stored["synthetic_epochs360"]["config"]["transfer_clips"] = 64
    stored["synthetic_epochs360"]["dataset"] += quality.unlabelled_clause(64)
    transfer_path.write_text(json.dumps(stored))
    assert quality.alone_rows_from(transfer_path, "synthetic_epochs360", recipe, "fake data",
                                   1, False) == [runs[1]["rows"][1]]
    with pytest.raises(SystemExit, match="ran on other data"):
        quality.alone_rows_from(transfer_path, "synthetic_epochs360", recipe, "FSDD", 1, False)
    per_seed = _stored_alone(tmp_path / "per_seed.json", "trained per seed", runs)
    assert quality.alone_rows_from(per_seed, "synthetic_epochs360", recipe, "fake data", 1,
                                   False) == [runs[1]["rows"][1]]
