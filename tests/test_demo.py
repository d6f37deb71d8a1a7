"""The training demo end to end on a tiny configuration (the real sizes are QUICK/FULL)."""

import dataclasses
import json

import pytest
import torch

pytest.importorskip("sklearn", reason="the demo's reports need scikit-learn")
pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib")

from kdcore.demo import FULL, QUICK, DemoConfig, run_demo  # noqa: E402


def test_tiny_demo_writes_table_reports_and_plots(tmp_path, capsys):
    config = DemoConfig(train_clips=48, test_clips=32, epochs=1, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4, mixup=0.3)
    results = run_demo(out_dir=tmp_path, config=config, progress=False)
    table = capsys.readouterr().out
    for name in ("teacher", "student alone", "alone + mixup", "student + KD", "KD gain",
                 "macro-F1"):
        assert name in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in saved["rows"]] == ["teacher", "student alone",
                                                        "alone + mixup", "student + KD"]
    rows = {row["model"]: row for row in saved["rows"]}
    assert rows["student alone"]["parameters"] == rows["student + KD"]["parameters"]
    assert rows["teacher"]["parameters"] > rows["student + KD"]["parameters"]
    for row in saved["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["clips_per_s"] > 0 and row["macs"] > 0
    # the gain is taken over the better of the two students trained without a teacher
    baseline = max(rows["student alone"]["accuracy"], rows["alone + mixup"]["accuracy"])
    assert rows[saved["baseline"]]["accuracy"] == baseline
    assert saved["kd_gain_points"] == pytest.approx(100 * (rows["student + KD"]["accuracy"]
                                                           - baseline))
    assert results["rows"] == saved["rows"]
    slugs = {"teacher": "teacher", "student_alone": "student alone",
             "alone_mixup": "alone + mixup", "student_KD": "student + KD"}
    for slug, model in slugs.items():
        report = json.loads((tmp_path / f"report_{slug}.json").read_text())
        assert report["accuracy"] == pytest.approx(rows[model]["accuracy"])
        assert (tmp_path / f"confusion_{slug}.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_demo_without_the_mixup_control_trains_three_models(tmp_path):
    config = DemoConfig(train_clips=32, test_clips=16, epochs=1, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4,
                        mixup_control=False)
    results = run_demo(out_dir=tmp_path, config=config, progress=False)
    assert [row["model"] for row in results["rows"]] == ["teacher", "student alone",
                                                          "student + KD"]
    assert results["baseline"] == "student alone"


def test_demo_sizes_are_ordered():
    assert QUICK.train_clips * QUICK.epochs * QUICK.duration < \
        FULL.train_clips * FULL.epochs * FULL.duration
    assert QUICK.teacher_epochs <= FULL.teacher_epochs


def test_compare_reuses_a_trained_teacher(tmp_path):
    from kdcore.data import SyntheticAudio
    from kdcore.demo import compare

    config = DemoConfig(train_clips=32, test_clips=16, epochs=1, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4)
    data = {"seed": 0, "sample_rate": config.sample_rate, "duration": config.duration}
    train_set = SyntheticAudio(32, split="train", **data)
    test_set = SyntheticAudio(16, split="test", **data)
    first = compare(train_set, test_set, list(train_set.classes), config, tmp_path / "a",
                    progress=False)
    weights = {k: v.clone() for k, v in first["teacher"].state_dict().items()}
    second = compare(train_set, test_set, list(train_set.classes),
                     dataclasses.replace(config, seed=1), tmp_path / "b", progress=False,
                     teacher=first["teacher"])
    assert second["teacher"] is first["teacher"]
    for key, value in second["teacher"].state_dict().items():
        assert torch.equal(value, weights[key])  # evaluated, not trained again
    assert second["rows"][0]["train_seconds"] == 0.0
    assert second["rows"][0]["accuracy"] == first["rows"][0]["accuracy"]


def test_compare_with_alone_rows_trains_only_the_kd_student_as_a_full_call_would(tmp_path):
    from kdcore.data import SyntheticAudio
    from kdcore.demo import compare

    config = DemoConfig(train_clips=32, test_clips=16, epochs=2, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4, mixup=0.4)
    data = {"seed": 0, "sample_rate": config.sample_rate, "duration": config.duration}
    train_set = SyntheticAudio(32, split="train", **data)
    test_set = SyntheticAudio(16, split="test", **data)
    classes = list(train_set.classes)
    teacher = compare(train_set, test_set, classes, config, tmp_path / "a",
                      progress=False)["teacher"]
    seeded = dataclasses.replace(config, seed=1)
    full = compare(train_set, test_set, classes, seeded, tmp_path / "full", progress=False,
                   teacher=teacher)
    alone_rows = full["rows"][1:3]
    alone_rows[1] = alone_rows[1] | {"accuracy": 1.0}  # a stored value, not recomputed
    taken = compare(train_set, test_set, classes, seeded, tmp_path / "taken", progress=False,
                    teacher=teacher, alone_rows=alone_rows)
    assert sorted(path.name for path in (tmp_path / "taken").iterdir()
                  if path.is_dir()) == ["student_KD"]
    assert taken["rows"][1:3] == alone_rows
    kd_full, kd_taken = full["rows"][-1], taken["rows"][-1]
    for field in ("accuracy", "macro_f1"):  # same initialisation, order and augmentation
        assert kd_taken[field] == kd_full[field]
    assert taken["baseline"] == "alone + mixup"
    assert taken["kd_gain_points"] == pytest.approx(
        100 * (kd_full["accuracy"] - alone_rows[1]["accuracy"]))
    for bad in (alone_rows[:1], [alone_rows[0], alone_rows[1] | {"parameters": 5}]):
        with pytest.raises(ValueError, match="alone_rows: expected rows of "
                                             r"\['student alone', 'alone \+ mixup'\]"):
            compare(train_set, test_set, classes, seeded, tmp_path / "bad", progress=False,
                    alone_rows=bad)
        assert not (tmp_path / "bad" / "teacher").exists()  # refused before any training


def _table_results(teacher: float, alone: float, kd: float) -> dict:
    rows = [{"model": model, "parameters": 1000, "macs": 10, "accuracy": accuracy,
             "macro_f1": accuracy, "clips_per_s": 1.0}
            for model, accuracy in (("teacher", teacher), ("student alone", alone),
                                    ("student + KD", kd))]
    gap = teacher - alone
    return {"rows": rows, "baseline": "student alone", "kd_gain_points": 100 * (kd - alone),
            "gap_points": 100 * gap, "gap_closed": (kd - alone) / gap if gap > 0 else None}


def test_table_states_the_gap_closed_only_when_there_is_a_gap():
    from kdcore.demo import format_table

    table = format_table(_table_results(0.97, 0.91, 0.94))
    assert "+3.0 pt" in table and "KD closes 50 % of the gap" in table
    close = format_table(_table_results(0.378, 0.370, 0.292))  # gap 0.8 points
    assert "% of the gap" not in close and "0.8 points above that student" in close


def test_compare_trains_an_ensemble_teacher_with_seeded_members(tmp_path):
    from kdcore.data import SyntheticAudio
    from kdcore.demo import compare
    from kdcore.models import TeacherEnsemble

    config = DemoConfig(train_clips=32, test_clips=16, epochs=1, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4,
                        teachers=2, mixup_control=False)
    data = {"seed": 0, "sample_rate": config.sample_rate, "duration": config.duration}
    train_set = SyntheticAudio(32, split="train", **data)
    test_set = SyntheticAudio(16, split="test", **data)
    results = compare(train_set, test_set, list(train_set.classes), config, tmp_path,
                      progress=False)
    teacher = results["teacher"]
    assert isinstance(teacher, TeacherEnsemble) and len(teacher.members) == 2
    for name in ("teacher", "teacher_1"):
        assert (tmp_path / name / "checkpoints" / "last.pt").is_file()
    saved_member = torch.load(tmp_path / "teacher_1" / "checkpoints" / "last.pt",
                              weights_only=True)["model"]
    for key, value in teacher.members[1].state_dict().items():
        assert torch.equal(value, saved_member[key])
    assert not torch.equal(teacher.members[0].classifier.weight,
                           teacher.members[1].classifier.weight)
    assert len(results["teacher_members_accuracy"]) == 2
    rows = {row["model"]: row for row in results["rows"]}
    assert rows["teacher"]["parameters"] == sum(m.num_parameters() for m in teacher.members)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["teacher_members_accuracy"] == results["teacher_members_accuracy"]
    # members after the first are created after the students, so the students alone do not
    # depend on the member count (benchmarks/quality.py --alone-from counts it KD-only)
    single = compare(train_set, test_set, list(train_set.classes),
                     dataclasses.replace(config, teachers=1), tmp_path / "single",
                     progress=False)
    alone, alone_single = rows["student alone"], single["rows"][1]
    assert alone_single["model"] == "student alone"
    for field in ("accuracy", "macro_f1"):
        assert alone_single[field] == alone[field]
    for name in ("student_alone", "teacher"):
        weights = torch.load(tmp_path / name / "checkpoints" / "last.pt",
                             weights_only=True)["model"]
        weights_single = torch.load(tmp_path / "single" / name / "checkpoints" / "last.pt",
                                    weights_only=True)["model"]
        for key, value in weights.items():
            assert torch.equal(value, weights_single[key]), (name, key)


def test_compare_with_a_transfer_set_gives_the_kd_student_the_same_optimizer_steps(tmp_path):
    from kdcore.data import SyntheticAudio
    from kdcore.demo import compare, kd_epochs, synthetic_transfer_set

    config = DemoConfig(train_clips=32, test_clips=16, epochs=2, teacher_epochs=1, duration=0.3,
                        batch_size=16, n_mels=16, teacher_width=4, student_width=4,
                        mixup_control=False, transfer_clips=32)
    data = {"seed": 0, "sample_rate": config.sample_rate, "duration": config.duration}
    train_set = SyntheticAudio(32, split="train", **data)
    test_set = SyntheticAudio(16, split="test", **data)
    transfer_set = synthetic_transfer_set(config, 0)
    assert len(transfer_set) == 32 and transfer_set.seed == 1 and transfer_set.speakers is None
    results = compare(train_set, test_set, list(train_set.classes), config, tmp_path,
                      progress=False, transfer_set=transfer_set)
    assert results["kd_epochs"] == 1 and results["transfer_clips"] == 32

    def steps(run: str) -> list[tuple[int, int]]:
        records = [json.loads(line) for line in
                   (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["epoch"], r["step"]) for r in records if r["event"] == "epoch"]

    # 2 epochs x 2 batches alone; 1 epoch x 4 batches (32 labelled + 32 unlabelled) with KD
    assert steps("student_alone") == [(0, 2), (1, 4)]
    assert steps("student_KD") == [(0, 4)]

    assert kd_epochs(dataclasses.replace(config, transfer_clips=0), 32) == 2
    assert kd_epochs(dataclasses.replace(config, epochs=360, transfer_clips=64), 32) == 120
    with pytest.raises(ValueError, match="transfer_clips=16: 3 batches per epoch do not "
                                         "divide the 4 optimizer steps"):
        kd_epochs(dataclasses.replace(config, transfer_clips=16), 32)
    with pytest.raises(ValueError, match=r"transfer_set: expected 32 clips .* got None"):
        compare(train_set, test_set, list(train_set.classes), config, tmp_path / "b",
                progress=False)
    with pytest.raises(ValueError, match=r"transfer_set: expected 0 clips .* got 32"):
        compare(train_set, test_set, list(train_set.classes),
                dataclasses.replace(config, transfer_clips=0), tmp_path / "c", progress=False,
                transfer_set=transfer_set)
