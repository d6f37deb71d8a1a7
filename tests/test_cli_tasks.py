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
                                     "export", "teachers", "bench", "data digits"])
def test_every_help_groups_flags_and_shows_defaults(command: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command.split(), "--help"])
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
    if command == "data digits":
        assert "--test-speakers" in text and "(default: 400)" in text


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


# ------------------------------------------------------------------------------------------
# The sequence and regression tasks: ctc, frame, frame_multilabel, regression
# ------------------------------------------------------------------------------------------

HOP = 64
SEQ = ["--sample-rate", str(RATE), "--batch-size", "8", "--backend", "reference",
       "--no-progress", "--n-mels", "16", "--n-fft", "128", "--hop-length", str(HOP),
       "--width", "8", "--model-arg", "depth=1", "--schedule", "constant"]
TONES = {"a": 300.0, "b": 2000.0}


def _tone_utterance(rng: np.random.Generator, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Waveform of ``words`` (0.1 s tones, 0.05 s gaps) and its per-sample class (0 silence,
    1 ``a``, 2 ``b``)."""
    pieces, kinds = [np.zeros(160)], [np.zeros(160, np.int64)]
    for word in words:
        n = 800
        pieces += [0.3 * np.sin(2 * np.pi * TONES[word] * np.arange(n) / RATE), np.zeros(400)]
        kinds += [np.full(n, 1 + list(TONES).index(word)), np.zeros(400, np.int64)]
    wave = np.concatenate(pieces)
    return (wave + 0.02 * rng.standard_normal(wave.size)).astype(np.float32), np.concatenate(kinds)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tone utterances of 1-3 words (8 train, 2 val, 2 test) with per-frame labels:
    ``frame.csv`` (class per log-mel frame), ``multi.csv`` ((T, 2) tone flags), ``reg.csv``
    ((T, 2) targets), ``clip.csv`` ((2,) targets), and a folder ``unlabelled/``."""
    root = tmp_path_factory.mktemp("sequences")
    (root / "unlabelled").mkdir()
    rng = np.random.default_rng(2)
    tables = {name: [f"path,{column},split"] for name, column in
              (("frame", "frames"), ("multi", "frames"), ("reg", "target"), ("clip", "target"))}
    for item in range(12):
        split = "train" if item < 8 else "val" if item < 10 else "test"
        words = [str(w) for w in rng.choice(list(TONES), size=int(rng.integers(1, 4)))]
        wave, kind = _tone_utterance(rng, words)
        soundfile.write(root / f"u{item}.wav", wave, RATE)
        soundfile.write(root / "unlabelled" / f"u{item}.wav", wave, RATE)
        frames = 1 + wave.size // HOP  # centred log-mel frames
        label = kind[np.minimum(np.arange(frames) * HOP, wave.size - 1)]
        flags = np.stack([label == 1, label == 2], 1).astype(np.float32)
        for name, value in (("frame", label), ("multi", flags), ("reg", 0.5 * flags),
                            ("clip", flags.mean(0))):
            np.save(root / f"u{item}_{name}.npy", value)
            tables[name].append(f"u{item}.wav,u{item}_{name}.npy,{split}")
    for name, rows in tables.items():
        (root / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return root


def _test_batch(root: Path, manifest: str) -> tuple[torch.Tensor, list[int], list[np.ndarray]]:
    """The test rows of ``manifest`` zero-padded into one batch (manifest order), their sample
    counts and their targets, read independently of kdcore."""
    import csv

    rows = [r for r in csv.DictReader(open(root / manifest)) if r["split"] == "test"]
    waves = [soundfile.read(root / r["path"], dtype="float32")[0] for r in rows]
    batch = torch.zeros(len(waves), max(w.size for w in waves))
    for i, wave in enumerate(waves):
        batch[i, :wave.size] = torch.from_numpy(wave)
    column = "transcript" if "transcript" in rows[0] else "frames" if "frames" in rows[0] \
        else "target"
    targets = [r[column] if column == "transcript" else np.load(root / r[column]) for r in rows]
    return batch, [w.size for w in waves], targets


def _outputs(model_file: Path, batch: torch.Tensor) -> torch.Tensor:
    from kdcore.checkpoints import load_model_checkpoint

    checkpoint = load_model_checkpoint(model_file)
    with torch.no_grad():
        return checkpoint.model(checkpoint.build_frontend("reference")(batch)).double()


def test_frame_task_train_distill_eval(sequences: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from sklearn.metrics import f1_score

    data = ["--data", str(sequences / "frame.csv"), "--task", "frame"]
    teacher = tmp_path / "teacher"
    assert cli.main(["train", *data, "--model", "frame_conv", "--out", str(teacher),
                     "--epochs", "2", *SEQ]) == 0, capsys.readouterr().err
    # seeded: the same command gives bitwise the same weights
    again = tmp_path / "again"
    assert cli.main(["train", *data, "--model", "frame_conv", "--out", str(again),
                     "--epochs", "2", *SEQ]) == 0
    first, second = (torch.load(d / "model.pt", weights_only=True)["state_dict"]
                     for d in (teacher, again))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # strict resume: another --distance is refused, naming it, and nothing changes
    record = (again / "run.json").read_text()
    assert cli.main(["train", *data, "--model", "frame_conv", "--out", str(again),
                     "--epochs", "2", "--resume", "--distance", "l1", *SEQ]) == 2
    assert "distance" in _error_line(capsys) and (again / "run.json").read_text() == record
    student = tmp_path / "student"
    assert cli.main(["distill", *data, "--teacher", str(teacher / "model.pt"), "--student",
                     "frame_conv", "--out", str(student), "--epochs", "1", *SEQ,
                     "--model-arg", "kernel=3"]) == 0, capsys.readouterr().err
    trained = json.loads((student / "report.json").read_text())
    assert trained["kd_loss"] > 0 and trained["task"] == "frame"
    evaluated = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(sequences / "frame.csv"), "--model",
                     str(student / "model.pt"), "--out", str(evaluated), "--backend",
                     "reference", "--no-progress", "--batch-size", "8"]) == 0
    report = json.loads((evaluated / "report.json").read_text())
    # frame accuracy and macro-F1 over the valid frames, re-derived with scikit-learn
    batch, samples, labels = _test_batch(sequences, "frame.csv")
    predicted = _outputs(student / "model.pt", batch).argmax(-1)
    truth, guess = [], []
    for row, (count, label) in enumerate(zip(samples, labels, strict=True)):
        valid = min(1 + count // HOP, label.size)
        truth += label[:valid].tolist()
        guess += predicted[row, :valid].tolist()
    assert report["items"] == 2
    assert report["accuracy"] == pytest.approx(np.mean(np.equal(truth, guess)), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(f1_score(truth, guess, average="macro"),
                                               abs=1e-9)
    assert report["ce_loss"] == pytest.approx(trained["ce_loss"], rel=1e-6)


def test_frame_multilabel_and_teacher_only_distillation(sequences: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from sklearn.metrics import average_precision_score

    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--data", str(sequences / "multi.csv"), "--task",
                     "frame_multilabel", "--model", "frame_conv", "--out", str(teacher),
                     "--epochs", "1", *SEQ]) == 0, capsys.readouterr().err
    student = tmp_path / "student"
    assert cli.main(["distill", "--data", str(sequences / "unlabelled"), "--task",
                     "frame_multilabel", "--teacher", str(teacher / "model.pt"), "--student",
                     "frame_conv", "--out", str(student), "--epochs", "1",
                     *SEQ]) == 0, capsys.readouterr().err
    assert "12 unlabelled files" in capsys.readouterr().out
    taught = json.loads((student / "report.json").read_text())
    assert set(taught) == {"task", "split", "items", "loss", "kd_loss"}  # no labels: KD alone
    evaluated = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(sequences / "multi.csv"), "--model",
                     str(student / "model.pt"), "--out", str(evaluated), "--backend",
                     "reference", "--no-progress", "--batch-size", "8"]) == 0
    report = json.loads((evaluated / "report.json").read_text())
    batch, samples, targets = _test_batch(sequences, "multi.csv")
    scores = _outputs(student / "model.pt", batch)
    rows = [(scores[i, :min(1 + n // HOP, t.shape[0])].numpy(), t[:1 + n // HOP])
            for i, (n, t) in enumerate(zip(samples, targets, strict=True))]
    s, t = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    present = t.sum(0) > 0
    assert report["mAP"] == pytest.approx(
        average_precision_score(t[:, present], s[:, present], average="macro"), abs=1e-9)
    assert report["micro_ap"] == pytest.approx(average_precision_score(t, s, average="micro"),
                                               abs=1e-9)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(s),
                                                               torch.from_numpy(t).double())
    assert report["ce_loss"] == pytest.approx(float(bce), rel=1e-5)


def test_regression_per_frame_and_per_clip(sequences: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--data", str(sequences / "reg.csv"), "--task", "regression",
                     "--model", "frame_conv", "--out", str(teacher), "--epochs", "1",
                     *SEQ]) == 0, capsys.readouterr().err
    student = tmp_path / "student"
    assert cli.main(["distill", "--data", str(sequences / "reg.csv"), "--task", "regression",
                     "--distance", "l1", "--teacher", str(teacher / "model.pt"), "--student",
                     "frame_conv", "--out", str(student), "--epochs", "1",
                     *SEQ]) == 0, capsys.readouterr().err
    evaluated = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(sequences / "reg.csv"), "--model",
                     str(student / "model.pt"), "--out", str(evaluated), "--backend",
                     "reference", "--no-progress", "--batch-size", "8"]) == 0
    report = json.loads((evaluated / "report.json").read_text())
    batch, samples, targets = _test_batch(sequences, "reg.csv")
    outputs = _outputs(student / "model.pt", batch)
    pairs = [(outputs[i, :1 + n // HOP].numpy(), t[:1 + n // HOP])
             for i, (n, t) in enumerate(zip(samples, targets, strict=True))]
    s, t = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    assert report["label_loss"] == pytest.approx(np.abs(s - t).mean(), rel=1e-5)  # l1 kept
    cosine = (s * t).sum(1) / np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1),
                                         1e-8)
    assert report["cosine"] == pytest.approx(cosine.mean(), rel=1e-6)

    clip = tmp_path / "clip"
    assert cli.main(["train", "--data", str(sequences / "clip.csv"), "--task", "regression",
                     "--model", "student_dscnn", "--width", "4", "--out", str(clip),
                     "--epochs", "1", *SEQ[:-6], "--clip-seconds", "0.5"]) == 0
    assert json.loads((clip / "report.json").read_text())["label_loss"] > 0
    # teacher-only on unlabelled audio: the clip teacher makes the student a clip model too
    only = tmp_path / "only"
    assert cli.main(["distill", "--data", str(sequences / "unlabelled"), "--task", "regression",
                     "--teacher", str(clip / "model.pt"), "--student", "student_dscnn",
                     "--width", "4", "--out", str(only), "--epochs", "1", *SEQ[:-6],
                     "--clip-seconds", "0.5"]) == 0, capsys.readouterr().err
    assert set(json.loads((only / "report.json").read_text())) == {"task", "split", "items",
                                                                  "loss", "kd_loss"}
    # a (D,) target needs a clip model, a (T, D) target a per-frame one: one line each
    capsys.readouterr()
    assert cli.main(["train", "--data", str(sequences / "clip.csv"), "--task", "regression",
                     "--model", "frame_conv", "--out", str(tmp_path / "x"), *SEQ]) == 2
    assert "one per clip" in _error_line(capsys)
    assert cli.main(["train", "--data", str(sequences / "reg.csv"), "--task", "regression",
                     "--model", "student_dscnn", "--out", str(tmp_path / "x"),
                     *SEQ[:-4]]) == 2
    assert "per-frame model" in _error_line(capsys)
    assert cli.main(["train", "--data", str(sequences / "reg.csv"), "--task", "regression",
                     "--model", "student_dscnn", "--out", str(tmp_path / "x"), *SEQ]) == 2
    assert "--model-arg" in _error_line(capsys)  # depth=1 is not a student_dscnn keyword
    assert cli.main(["distill", "--data", str(sequences / "clip.csv"), "--task", "regression",
                     "--teacher", str(clip / "model.pt"), "--student", "frame_conv",
                     "--out", str(tmp_path / "x"), *SEQ]) == 2
    assert "outputs per frame" in _error_line(capsys)
    assert not (tmp_path / "x" / "run.json").exists()


@pytest.fixture(scope="module")
def digit_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FSDD-style manifest of isolated 'digits' (tones 0-2) by speakers s1, s2, s3."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    rows = ["path,label,speaker"]
    for speaker in ("s1", "s2", "s3"):
        for digit, frequency in enumerate((300.0, 900.0, 2000.0)):
            n = int(rng.integers(700, 900))
            wave = 0.3 * np.sin(2 * np.pi * frequency * np.arange(n) / RATE)
            soundfile.write(root / f"{digit}_{speaker}.wav", wave.astype(np.float32), RATE)
            rows.append(f"{digit}_{speaker}.wav,{digit},{speaker}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def test_ctc_from_data_digits_train_distill_eval(digit_clips: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    import csv

    import jiwer

    digits = tmp_path / "digits"
    assert cli.main(["data", "digits", "--source", str(digit_clips), "--out", str(digits),
                     "--train", "12", "--val", "2", "--test", "3", "--test-speakers", "s3",
                     "--digits", "1", "3"]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(digits / "manifest.csv")))
    assert [r["split"] for r in rows].count("test") == 3
    assert {r["speaker"] for r in rows if r["split"] == "test"} == {"s3"}
    assert "s3" not in {r["speaker"] for r in rows if r["split"] != "test"}
    assert cli.main(["data", "digits", "--source", str(digit_clips), "--out",
                     str(digits)]) == 2
    assert "--overwrite" in _error_line(capsys)

    data = ["--data", str(digits / "manifest.csv"), "--task", "ctc"]
    teacher = tmp_path / "teacher"
    assert cli.main(["train", *data, "--model", "ctc_conv", "--out", str(teacher),
                     "--epochs", "2", *SEQ]) == 0, capsys.readouterr().err
    student = tmp_path / "student"
    assert cli.main(["distill", *data, "--teacher", str(teacher / "model.pt"), "--student",
                     "ctc_conv", "--out", str(student), "--epochs", "1", *SEQ,
                     "--model-arg", "stride=4"]) == 0, capsys.readouterr().err
    assert json.loads((student / "report.json").read_text())["kd_loss"] > 0
    evaluated = tmp_path / "eval"
    assert cli.main(["eval", "--data", str(digits / "manifest.csv"), "--model",
                     str(student / "model.pt"), "--out", str(evaluated), "--backend",
                     "reference", "--no-progress", "--batch-size", "8"]) == 0
    report = json.loads((evaluated / "report.json").read_text())
    # greedy decoding and jiwer, re-derived: argmax per valid frame, merge repeats, drop blank
    batch, samples, transcripts = _test_batch(digits, "manifest.csv")
    best = _outputs(student / "model.pt", batch).argmax(-1)
    names = ["<blank>", "0", "1", "2"]
    hypotheses = []
    for row, count in enumerate(samples):
        valid = (1 + count // HOP - 1) // 4 + 1  # log-mel frames, then the stem's stride 4
        path = [int(v) for v in best[row, :valid]]
        tokens = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
        hypotheses.append(" ".join(names[t] for t in tokens))
    assert report["wer"] == pytest.approx(jiwer.wer(transcripts, hypotheses), abs=1e-12)
    assert report["cer"] == pytest.approx(jiwer.cer(transcripts, hypotheses), abs=1e-12)


def test_sequence_task_bad_inputs_are_one_line(sequences: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    train = ["train", "--out", str(out), "--model", "frame_conv", *SEQ]
    # a missing transcript column names the column and the columns found
    assert cli.main([*train, "--data", str(sequences / "frame.csv"), "--task", "ctc"]) == 2
    line = _error_line(capsys)
    assert "'transcript'" in line and "frame.csv" in line
    # per-frame labels of the wrong length: the file and both counts
    bad = sequences / "bad"
    bad.mkdir(exist_ok=True)
    wave, kind = _tone_utterance(np.random.default_rng(0), ["a", "b"])
    soundfile.write(bad / "x.wav", wave, RATE)
    soundfile.write(bad / "y.wav", wave, RATE)
    np.save(bad / "short.npy", np.zeros(5, np.int64))
    np.save(bad / "wide.npy", np.zeros((1 + wave.size // HOP, 2), np.int64))
    for name, expected in (("short.npy", "5 per-frame target rows"),
                           ("wide.npy", "(T,) integer class ids")):
        (bad / "m.csv").write_text(f"path,frames,split\nx.wav,{name},train\n"
                                   f"y.wav,{name},test\n")
        assert cli.main([*train, "--data", str(bad / "m.csv"), "--task", "frame"]) == 2
        line = _error_line(capsys)
        assert expected in line and ("x.wav" in line or name in line), line
    # a missing .npy file, unlabelled data for train, mixup, a cached teacher
    (bad / "m.csv").write_text("path,frames\nx.wav,missing.npy\n")
    assert cli.main([*train, "--data", str(bad / "m.csv"), "--task", "frame"]) == 2
    assert "missing.npy" in _error_line(capsys)
    assert cli.main([*train, "--data", str(sequences / "unlabelled"), "--task", "frame"]) == 2
    assert "'frames'" in _error_line(capsys)
    assert cli.main([*train, "--data", str(sequences / "frame.csv"), "--task", "frame",
                     "--mixup", "0.2"]) == 2
    assert "--mixup" in _error_line(capsys)
    assert cli.main(["distill", "--data", str(sequences / "frame.csv"), "--task", "frame",
                     "--teacher-mode", "cached", "--teacher", str(bad / "x.wav"), "--student",
                     "frame_conv", "--out", str(out), *SEQ[:-4]]) == 2
    assert "--teacher-mode online" in _error_line(capsys)
    assert not out.exists()
