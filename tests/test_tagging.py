"""Audio tagging (multi-label) end to end: the tagging set with held-out speakers
(:func:`kdcore.data.write_tagging_dataset`), the per-class AP plot, and every CLI command with
``--task multilabel`` (train, ``cache-teacher``, distill from the cache, eval), with per-class
AP checked against scikit-learn and the cached teacher outputs against the teacher run
directly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("yaml")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
pytest.importorskip("matplotlib")

from kdcore import cli  # noqa: E402

RATE = 8000
SIZES = ["--sample-rate", str(RATE), "--clip-seconds", "0.25", "--batch-size", "8",
         "--backend", "reference", "--no-progress", "--n-mels", "16", "--n-fft", "128",
         "--hop-length", "64"]
TONES = {"low": 300.0, "mid": 900.0, "high": 2000.0}


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clips holding any subset of three tones (tags ``low``, ``mid``, ``high``) in noise:
    the 8 subsets twice over for training, once each for test (rows in that order)."""
    root = tmp_path_factory.mktemp("tagging")
    rng = np.random.default_rng(3)
    t = np.arange(2400) / RATE
    rows = ["path,labels,split"]
    for split, copies in (("train", 2), ("test", 1)):
        for copy in range(copies):
            for subset in range(8):
                tags = [name for bit, name in enumerate(TONES) if subset >> bit & 1]
                wave = 0.1 * rng.standard_normal(t.size)
                for name in tags:
                    wave += rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * TONES[name] * t)
                path = f"{split}{copy}_{subset}.wav"
                soundfile.write(root / path, wave.astype(np.float32), RATE)
                rows.append(f"{path},{';'.join(tags)},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _split_rows(manifest: Path, split: str) -> list[dict]:
    with open(manifest, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == split]


def _centre(path: Path, samples: int = 2000) -> torch.Tensor:
    wave, rate = soundfile.read(path, dtype="float32")
    assert rate == RATE
    start = (wave.size - samples) // 2
    return torch.from_numpy(wave[start:start + samples])


def _png_pixels(path: Path) -> np.ndarray:
    from matplotlib import image

    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    return pixels


def test_multilabel_cache_teacher_distill_cached_and_eval(tagged: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from kdcore.checkpoints import load_model_checkpoint

    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--data", str(tagged), "--task", "multilabel", "--model",
                     "teacher_cnn", "--width", "4", "--out", str(teacher), "--epochs", "1",
                     *SIZES]) == 0, capsys.readouterr().err
    assert (teacher / "per_class_ap.png").is_file()

    # cache-teacher --task multilabel: the cache is keyed multilabel and holds, per training
    # item, the teacher's logits on its centre crop.
    cache = tmp_path / "cache"
    assert cli.main(["cache-teacher", "--data", str(tagged), "--task", "multilabel",
                     "--teacher", str(teacher / "model.pt"), "--out", str(cache),
                     *SIZES]) == 0, capsys.readouterr().err
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["key"]["task"] == "multilabel"
    train_rows = _split_rows(tagged, "train")
    assert meta["num_items"] == len(train_rows) and meta["shapes"]["logits"] == [3]
    stored = np.fromfile(cache / "logits.f32", dtype=np.float32).reshape(len(train_rows), 3)
    checkpoint = load_model_checkpoint(teacher / "model.pt")
    waves = torch.stack([_centre(tagged.parent / row["path"]) for row in train_rows])
    with torch.no_grad():
        expected = checkpoint.model.eval()(checkpoint.build_frontend("reference")(waves))
    np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-4, atol=1e-4)
    before = (cache / "logits.f32").read_bytes()

    student = tmp_path / "student"
    assert cli.main(["distill", "--data", str(tagged), "--task", "multilabel", "--teacher",
                     str(teacher / "model.pt"), "--student", "student_dscnn", "--width", "4",
                     "--recipe", "classic", "--teacher-mode", "cached", "--cache-dir",
                     str(cache), "--out", str(student), "--epochs", "1",
                     *SIZES]) == 0, capsys.readouterr().err
    assert (cache / "logits.f32").read_bytes() == before  # read back, not refilled
    assert json.loads((student / "report.json").read_text())["task"] == "multilabel"

    # eval: mAP, micro AP and per-class AP equal scikit-learn's on the model's own scores,
    # and the per-class AP PNG is written.
    evaluated = tmp_path / "eval"
    capsys.readouterr()
    assert cli.main(["eval", "--data", str(tagged), "--model", str(student / "model.pt"),
                     "--out", str(evaluated), "--backend", "reference", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((evaluated / "report.json").read_text())
    model = load_model_checkpoint(student / "model.pt")
    test_rows = _split_rows(tagged, "test")
    waves = torch.stack([_centre(tagged.parent / row["path"]) for row in test_rows])
    with torch.no_grad():
        scores = torch.sigmoid(model.model.eval()(model.build_frontend("reference")(waves)))
    targets = np.array([[float(name in row["labels"].split(";")) for name in model.class_names]
                        for row in test_rows])
    assert model.class_names == ["high", "low", "mid"]
    for column, name in enumerate(model.class_names):
        assert report["ap_per_tag"][name] == pytest.approx(
            sklearn_metrics.average_precision_score(targets[:, column],
                                                    scores[:, column].numpy()), abs=1e-6)
        assert f"AP {name}" in printed
    assert report["mAP"] == pytest.approx(
        sklearn_metrics.average_precision_score(targets, scores.numpy()), abs=1e-6)
    assert report["micro_ap"] == pytest.approx(
        sklearn_metrics.average_precision_score(targets, scores.numpy(), average="micro"),
        abs=1e-6)
    _png_pixels(evaluated / "per_class_ap.png")


def test_average_precision_png_draws_each_class(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    from kdcore.eval import save_average_precision_png

    drawn = {}
    original = matplotlib.figure.Figure.savefig

    def spy(figure, *args, **kwargs):
        axes = figure.axes[0]
        drawn["bars"] = [patch.get_width() for patch in axes.patches]
        drawn["labels"] = [tick.get_text() for tick in axes.get_yticklabels()]
        drawn["texts"] = [text.get_text() for text in axes.texts]
        drawn["xlabel"], drawn["ylabel"] = axes.get_xlabel(), axes.get_ylabel()
        drawn["title"] = axes.get_title()
        drawn["lines"] = [line.get_xdata()[0] for line in axes.get_lines()]
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    path = save_average_precision_png({"speech": 0.5, "hum": None, "tone": 0.875,
                                       "pink": float("nan")}, tmp_path / "ap.png",
                                      title="student: per-class AP")
    _png_pixels(path)
    assert drawn["bars"] == [0.5, 0.0, 0.875, 0.0]
    assert drawn["labels"] == ["speech", "hum", "tone", "pink"]
    assert drawn["texts"] == ["0.500", "n/a", "0.875", "n/a"]
    assert drawn["lines"] == [pytest.approx(0.6875)]  # mean of the defined values
    assert "average precision" in drawn["xlabel"] and drawn["ylabel"] == "class"
    assert drawn["title"] == "student: per-class AP"
    with pytest.raises(ValueError, match="empty"):
        save_average_precision_png({}, tmp_path / "none.png")


def test_tagging_dataset_holds_out_speakers(tmp_path: Path) -> None:
    """Speaker ``a`` says a 400 Hz tone and speaker ``b`` a 1500 Hz one: with ``speech`` the
    only tag, every training clip is ``a``'s tone and every test clip ``b``'s."""
    from kdcore.data import write_tagging_dataset

    speech = tmp_path / "speech"
    speech.mkdir()
    rows = ["path,label,speaker"]
    t = np.arange(3000) / RATE
    for speaker, frequency in (("a", 400.0), ("b", 1500.0)):
        for item in range(3):
            name = f"{speaker}{item}.wav"
            wave = 0.2 * np.sin(2 * np.pi * frequency * t) * np.hanning(t.size)
            soundfile.write(speech / name, wave.astype(np.float32), RATE)
            rows.append(f"{name},{item},{speaker}")
    (speech / "manifest.csv").write_text("\n".join(rows) + "\n")

    out = tmp_path / "tagging"
    manifest = write_tagging_dataset(speech / "manifest.csv", out, test_speakers=["b"],
                                     train_clips=5, val_clips=2, test_clips=4, tags=("speech",),
                                     probability=1.0, duration_s=0.5, sample_rate=RATE, seed=1)
    with open(manifest, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["split"] for row in written] == ["train"] * 5 + ["val"] * 2 + ["test"] * 4
    assert {row["labels"] for row in written} == {"speech"}
    for row in written:
        wave, rate = soundfile.read(out / row["path"])
        assert rate == RATE and wave.size == RATE // 2
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(wave.size, 1 / RATE)[spectrum.argmax()]
        assert abs(peak - (1500.0 if row["split"] == "test" else 400.0)) < 10.0, row

    # the same settings write the same clips
    again = write_tagging_dataset(speech / "manifest.csv", tmp_path / "again",
                                  test_speakers=["b"], train_clips=5, test_clips=4,
                                  tags=("speech", "hum"), seed=1, sample_rate=RATE,
                                  duration_s=0.5)
    first = soundfile.read(tmp_path / "again" / "train" / "clip_000000.wav")[0]
    assert again.is_file()
    repeat = write_tagging_dataset(speech / "manifest.csv", tmp_path / "repeat",
                                   test_speakers=["b"], train_clips=5, test_clips=4,
                                   tags=("speech", "hum"), seed=1, sample_rate=RATE,
                                   duration_s=0.5)
    assert repeat.read_text() == again.read_text()
    assert np.array_equal(soundfile.read(tmp_path / "repeat" / "train" / "clip_000000.wav")[0],
                          first)

    with pytest.raises(ValueError, match="'zed'"):
        write_tagging_dataset(speech / "manifest.csv", tmp_path / "x", test_speakers=["zed"])
    with pytest.raises(ValueError, match="none is left"):
        write_tagging_dataset(speech / "manifest.csv", tmp_path / "x",
                              test_speakers=["a", "b"])
