"""The command line wired to the engine, in process on tiny WAV data: ``train`` through
``kdcore.Trainer``, the loop flags (EMA, best.pt, clipping, patience), grouped ``--help`` with
defaults, one-line user errors versus internal tracebacks, the ``--out`` guards of
``cache-teacher`` and ``demo``, and the demo's mixup control."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("yaml")
pytest.importorskip("sklearn", reason="train reports need the report extra (scikit-learn)")
pytest.importorskip("matplotlib", reason="confusion PNGs need matplotlib")

from kdcore import cli  # noqa: E402
from kdcore.engine.config import LoopConfig  # noqa: E402

RATE = 8000
SIZES = ["--sample-rate", str(RATE), "--clip-seconds", "0.25", "--batch-size", "8",
         "--backend", "reference", "--no-progress", "--n-mels", "16", "--n-fft", "128",
         "--hop-length", "64", "--model", "teacher_cnn", "--width", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 tone clips per class (2 classes); manifest rows 0-4 train, 5 val, 6-7 test."""
    root = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    t = np.arange(2400) / RATE
    rows = ["path,label,split"]
    for label, frequency in (("low", 300.0), ("high", 2000.0)):
        for item in range(8):
            wave = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.size)
            soundfile.write(root / f"{label}{item}.wav", wave.astype(np.float32), RATE)
            split = "train" if item < 5 else "val" if item == 5 else "test"
            rows.append(f"{label}{item}.wav,{label},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdcore: error: "), lines
    return lines[0]


def test_train_is_plain_training_with_ema_and_best(data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from kdcore.checkpoints import load_model_checkpoint

    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(data), "--out", str(out), "--epochs", "2",
                     "--ema", "0.5", "--clip-grad-norm", "1.0", "--patience", "3",
                     "--schedule", "constant", *SIZES])
    assert code == 0, capsys.readouterr().err
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert "model" in last and "student" not in last and "teacher_fingerprint" not in last
    assert last["config"]["clip_grad_norm"] == 1.0 and last["config"]["patience"] == 3
    # model.pt holds the EMA weights, not the live ones
    saved = load_model_checkpoint(out / "model.pt").model.state_dict()
    for key, value in last["ema"].items():
        assert torch.equal(saved[key], value), key
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["ema"]
               if last["ema"][k].is_floating_point())
    # best.pt in --out: a model checkpoint of the best epoch's (EMA) weights
    best_state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu",
                            weights_only=True)
    assert best_state["ema"] is True
    best = load_model_checkpoint(out / "best.pt")
    for key, value in best_state["model"].items():
        assert torch.equal(best.model.state_dict()[key], value), key
    assert best.meta["best_metric"] == "val_loss"
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["ema"] == 0.5

    # resume with more epochs of a planned schedule: one line naming epochs
    planned = tmp_path / "planned"
    args = ["train", "--data", str(data), "--out", str(planned), "--epochs", "1", *SIZES]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert cli.main([*args[:-len(SIZES)], "--resume", "--epochs", "2", *SIZES]) == 2
    assert "--epochs 2" in _error_line(capsys)


@pytest.mark.parametrize("command", ["demo", "train", "distill", "eval", "cache-teacher",
                                     "export", "teachers", "bench"])
def test_every_help_groups_flags_and_shows_defaults(command: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    if command in ("train", "distill"):
        for title in ("data:", "frontend (log-mel):", "model:", "objective:",
                      "training loop:", "output and run:"):
            assert title in text, title
        loop = LoopConfig()
        assert f"--lr LR peak learning rate (default: {loop.lr})" in text
        assert f"(default: {loop.weight_decay})" in text
        for flag in ("--clip-grad-norm", "--ema", "--best-metric", "--best-mode",
                     "--patience", "--optimizer", "--schedule", "--grad-accum",
                     "--precision", "--compile", "--task"):
            assert flag in text, flag
    if command == "bench":
        assert "(default: 10)" in text


@pytest.mark.parametrize("flags, named", [
    (["--task", "frame"], "'frames'"),
    (["--task", "regression"], "'target'"),
    (["--ema", "1.5"], "--ema"),
    (["--patience", "0"], "--patience"),
])
def test_bad_loop_and_task_flags_are_one_line(data: Path, tmp_path: Path, flags: list[str],
                                              named: str,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data), "--out", str(out), "--epochs", "1",
                     *flags, *SIZES]) == 2
    assert named in _error_line(capsys)
    assert not (out / "run.json").exists()


def test_internal_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdcore import teachers

    def broken() -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(teachers, "describe", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["teachers"])


def test_cache_teacher_and_demo_do_not_overwrite(data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--data", str(data), "--out", str(teacher), "--epochs", "1",
                     *SIZES]) == 0
    common = ["--data", str(data), "--teacher", str(teacher / "model.pt"), *SIZES[:-4]]
    cache = tmp_path / "cache"
    assert cli.main(["cache-teacher", "--out", str(cache), *common]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["key"]["task"] == "multiclass"
    capsys.readouterr()
    assert cli.main(["cache-teacher", "--out", str(cache), *common]) == 2
    assert str(cache) in _error_line(capsys)
    assert cli.main(["cache-teacher", "--out", str(cache), "--overwrite", *common]) == 0

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "results.json").write_text("{}")
    capsys.readouterr()
    assert cli.main(["demo", "--out", str(demo)]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert (demo / "results.json").read_text() == "{}"


def test_demo_mixup_control_trains_differently(tmp_path: Path) -> None:
    """The 'alone + mixup' run of the demo must not be the 'alone' run again: after one epoch
    from the same initial weights, seed and data, its weights differ."""
    from kdcore import demo
    from kdcore.models import create

    config = dataclasses.replace(demo.QUICK, train_clips=32, test_clips=16, epochs=1,
                                 duration=0.25, n_mels=16, n_fft=128, hop_length=64,
                                 batch_size=16, student_width=4, mixup=0.4)
    train_set, test_set, _ = demo.synthetic_sets(config, config.seed)
    torch.manual_seed(0)
    student = create("student_dscnn", len(train_set.classes), n_mels=config.n_mels, width=4)
    initial = copy.deepcopy(student.state_dict())
    weights = {}
    for name, mixup in (("alone", 0.0), ("alone_mixup", config.mixup)):
        model = copy.deepcopy(student)
        demo._train(name, None, model, 0.0, train_set, test_set, config, tmp_path, False,
                    epochs=1, lr=config.lr, mixup=mixup)
        weights[name] = model.state_dict()
    floats = [k for k, v in initial.items() if v.is_floating_point()]
    for name in weights:
        assert any(not torch.equal(weights[name][k], initial[k]) for k in floats), name
    differing = [k for k in floats if not torch.equal(weights["alone"][k],
                                                      weights["alone_mixup"][k])]
    assert differing, "mixup=0.4 trained exactly like mixup=0"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multilabel manifest: clips holding a low tone, a high tone, both or neither (tags
    ``low;high``), 6 of each kind, rows 0-3 train, 4 val, 5 test."""
    root = tmp_path_factory.mktemp("tagged")
    rng = np.random.default_rng(1)
    t = np.arange(2400) / RATE
    rows = ["path,labels,split"]
    for kind, tags in enumerate(("low", "high", "low;high", "")):
        for item in range(6):
            wave = 0.05 * rng.standard_normal(t.size)
            if "low" in tags:
                wave += 0.3 * np.sin(2 * np.pi * 300.0 * t)
            if "high" in tags:
                wave += 0.3 * np.sin(2 * np.pi * 2000.0 * t)
            name = f"k{kind}_{item}.wav"
            soundfile.write(root / name, wave.astype(np.float32), RATE)
            rows.append(f"{name},{tags},{'train' if item < 4 else 'val' if item == 4 else 'test'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_multilabel_train_eval_distill(tagged: Path, data: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from sklearn.metrics import average_precision_score

    from kdcore.checkpoints import load_model_checkpoint
    from kdcore.data import collate_audio, load_source

    out = tmp_path / "tagger"
    assert cli.main(["train", "--data", str(tagged), "--task", "multilabel", "--out", str(out),
                     "--epochs", "2", *SIZES]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    checkpoint = load_model_checkpoint(out / "model.pt")
    assert checkpoint.class_names == ["high", "low"] and checkpoint.meta["task"] == "multilabel"
    # the report's mAP against scikit-learn on the model's own test-split scores
    source = load_source(tagged, task="multilabel")
    test = [i for i, record in enumerate(source.records) if record.split == "test"]
    batch = collate_audio([source.dataset(test, sample_rate=RATE, clip_samples=2000)[i]
                           for i in range(len(test))])
    with torch.no_grad():
        scores = torch.sigmoid(checkpoint.model(checkpoint.build_frontend("reference")(
            batch.waveforms))).double().numpy()
    targets = batch.labels.numpy()
    assert targets.tolist().count([1.0, 1.0]) == 1 and targets.tolist().count([0.0, 0.0]) == 1
    assert report["items"] == 4
    assert report["mAP"] == pytest.approx(average_precision_score(targets, scores), abs=1e-9)
    assert report["micro_ap"] == pytest.approx(
        average_precision_score(targets, scores, average="micro"), abs=1e-9)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_mAP" in e for e in epochs if e.get("event") == "epoch")

    evaluated = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(tagged), "--model", str(out / "model.pt"),
                     "--out", str(evaluated), "--backend", "reference", "--no-progress"]) == 0
    assert json.loads((evaluated / "report.json").read_text())["mAP"] == report["mAP"]

    student = tmp_path / "student"
    assert cli.main(["distill", "--data", str(tagged), "--task", "multilabel", "--teacher",
                     str(out / "model.pt"), "--student", "student_dscnn", "--out",
                     str(student), "--epochs", "1", *SIZES[:-4], "--width", "4"]) == 0
    assert json.loads((student / "report.json").read_text())["task"] == "multilabel"

    capsys.readouterr()
    folder = data.parent
    (folder / "cls").mkdir(exist_ok=True)
    assert cli.main(["train", "--data", str(folder), "--task", "multilabel", "--out",
                     str(tmp_path / "x"), *SIZES]) == 2
    assert "'labels' column" in _error_line(capsys)
    assert cli.main(["train", "--data", str(data), "--task", "multilabel", "--out",
                     str(tmp_path / "x"), *SIZES]) == 2
    assert "'labels'" in _error_line(capsys)
    assert cli.main(["train", "--data", str(data), "--task", "ctc", "--out",
                     str(tmp_path / "x"), *SIZES]) == 2
    assert "'transcript'" in _error_line(capsys)


def test_hf_model_and_registered_teachers(data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """``train --model hf`` uses the model's own frontend (16 kHz, resampled from the data's
    8 kHz); ``distill --teacher hf:PATH`` distils it into a log-mel student; a registered
    teacher of another task is one line naming the API to use."""
    transformers = pytest.importorskip("transformers")
    directory = tmp_path / "ast"
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, num_mel_bins=32, max_length=48,
                                    frequency_stride=16, time_stride=16, num_labels=2,
                                    id2label={0: "high", 1: "low"},
                                    label2id={"high": 0, "low": 1})
    torch.manual_seed(0)
    transformers.ASTForAudioClassification(config).save_pretrained(directory)
    transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=48).save_pretrained(directory)
    out = tmp_path / "hf"
    sizes = SIZES[:-4]
    assert cli.main(["train", "--data", str(data), "--model", "hf", "--model-arg",
                     f"path={directory}", "--out", str(out), "--epochs", "1",
                     *sizes]) == 0, capsys.readouterr().err
    assert (out / "model.pt").is_file() and (out / "report.json").is_file()

    student = tmp_path / "student"
    assert cli.main(["distill", "--data", str(data), "--teacher", f"hf:{directory}",
                     "--student", "student_dscnn", "--width", "4", "--out", str(student),
                     "--epochs", "1", *sizes]) == 0, capsys.readouterr().err
    assert "resampling 8000 Hz to the teacher's 16000 Hz" in capsys.readouterr().out
    assert (student / "model.pt").is_file()

    assert cli.main(["distill", "--data", str(data), "--teacher", "crepe-tiny", "--student",
                     "student_dscnn", "--out", str(tmp_path / "x"), *sizes]) == 2
    line = _error_line(capsys)
    assert "frame_multilabel" in line and "kdcore.Distiller" in line
