"""Dataset sources (class folders, CSV manifests), audio reading and resampling, crops,
batching, the three split kinds and bad-file handling. Audio is written to tmp with soundfile."""

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from kdcore.data import (
    UNLABELLED,
    AudioExample,
    AudioReadError,
    ManifestError,
    TransferSet,
    center_crop,
    collate_audio,
    group_split,
    load_source,
    probe_audio,
    random_crop,
    read_audio,
    split_from_column,
    stratified_split,
)

FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def _sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * freq * t)
    return tone if channels == 1 else np.stack([tone * (c + 1) / channels
                                                for c in range(channels)], axis=1)


def _write(path: Path, data: np.ndarray, rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt, subtype = FORMATS[path.suffix]
    soundfile.write(path, data, rate, format=fmt, subtype=subtype)
    return path


def _dominant_frequency(wave: np.ndarray, rate: int) -> float:
    window = np.hanning(wave.size)
    spectrum = np.abs(np.fft.rfft(wave * window))
    return float(np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_read_audio_formats_mixdown_and_resample(tmp_path, suffix):
    stereo = _sine(440.0, 8000, 0.5, channels=2)  # channel 2 is twice channel 1
    path = _write(tmp_path / f"tone{suffix}", stereo)
    native = read_audio(path)
    assert native.dtype == np.float32 and native.ndim == 1 and native.size == 4000
    expected_mono = 0.75 * 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(4000) / 8000)
    tolerance = 2e-4 if suffix != ".ogg" else 0.08  # Vorbis is lossy
    assert np.max(np.abs(native[200:-200] - expected_mono[200:-200])) < tolerance

    upsampled = read_audio(path, 16000)
    assert upsampled.size == 8000
    assert abs(_dominant_frequency(upsampled, 16000) - 440.0) <= 2.0
    assert 0.3 < np.max(np.abs(upsampled)) < 0.45


def test_resampling_keeps_frequency_and_lengths(tmp_path):
    path = _write(tmp_path / "tone.wav", _sine(1000.0, 8000, 0.73))
    for rate, length in [(16000, 11680), (22050, 16097), (4000, 2920)]:
        wave = read_audio(path, rate)
        assert wave.size == length
        assert abs(_dominant_frequency(wave, rate) - 1000.0) <= 1.5
        rms = np.sqrt(np.mean(wave[rate // 20: -rate // 20] ** 2))
        assert abs(rms - 0.5 / np.sqrt(2)) < 0.01


def test_crops_and_collate():
    wave = torch.arange(10, dtype=torch.float32)
    assert center_crop(wave, 4).tolist() == [3, 4, 5, 6]
    assert center_crop(wave, 13).tolist() == [0] + list(range(10)) + [0, 0]
    generator = torch.Generator().manual_seed(1)
    starts = set()
    for _ in range(40):
        crop = random_crop(wave, 4, generator)
        assert crop.shape == (4,) and torch.equal(crop, crop[0] + torch.arange(4.0))
        starts.add(int(crop[0]))
    assert len(starts) > 3 and starts <= set(range(7))
    padded = random_crop(wave, 14, generator)
    assert padded.shape == (14,) and padded.sum() == wave.sum()

    batch = collate_audio([(torch.ones(3), 2, 7), (torch.full((5,), 2.0), 0, 1)])
    assert batch.waveforms.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert batch.lengths.tolist() == [3, 5] and batch.labels.tolist() == [2, 0]
    assert batch.indices.tolist() == [7, 1]
    waves, labels, indices = batch[:3]
    assert indices is batch.indices and set(batch.as_dict()) == {"waveform", "label", "index"}


def test_transfer_set_marks_the_unlabelled_part_and_renumbers_indices():
    labelled = [AudioExample(torch.full((4,), float(i)), i % 3, i) for i in range(5)]
    unlabelled = [AudioExample(torch.full((4,), 10.0 + i), 2, i) for i in range(3)]
    transfer = TransferSet(labelled, unlabelled)
    assert len(transfer) == 8
    items = [transfer[i] for i in range(8)]
    assert [item.label for item in items] == [0, 1, 2, 0, 1] + [UNLABELLED] * 3
    assert [item.index for item in items] == list(range(8))
    assert [float(item.waveform[0]) for item in items] == [0, 1, 2, 3, 4, 10, 11, 12]
    assert transfer[-1].waveform[0] == 12.0 and transfer[-1].index == 7
    batch = collate_audio(items[3:7])
    assert batch.labels.tolist() == [0, 1, UNLABELLED, UNLABELLED]
    with pytest.raises(IndexError, match="8 items"):
        transfer[8]
    with pytest.raises(ValueError, match="unlabelled"):
        TransferSet(labelled, [])


def _class_folder(root: Path) -> Path:
    for label, freq in (("dog", 300.0), ("cat", 600.0), ("bird", 1200.0)):
        for take, suffix in enumerate((".wav", ".flac", ".ogg")):
            _write(root / label / f"{take}{suffix}", _sine(freq, 8000, 0.2 + 0.1 * take))
    (root / "dog" / "notes.txt").write_text("not audio")
    return root


def test_folder_source_and_dataset(tmp_path):
    source = load_source(_class_folder(tmp_path / "data"))
    assert source.classes == ["bird", "cat", "dog"]
    assert len(source.records) == 9 and not source.skipped
    dataset = source.dataset(sample_rate=16000, clip_samples=4000, train=False)
    for index in range(len(dataset)):
        wave, label, position = dataset[index]
        assert wave.shape == (4000,) and position == index
        freq = {0: 1200.0, 1: 600.0, 2: 300.0}[label]
        assert source.records[index].label == source.classes[label]
        assert abs(_dominant_frequency(wave.numpy(), 16000) - freq) < 8
    variable = source.dataset(sample_rate=8000)
    lengths = sorted({variable[i].waveform.shape[0] for i in range(len(variable))})
    assert lengths == [1600, 2400, 3200]


def _manifest(root: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = root / name
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_source_with_split_and_group(tmp_path):
    rows = []
    for digit in range(3):
        for speaker in ("ann", "bob"):
            for take in range(2):
                rel = f"audio/{digit}_{speaker}_{take}.wav"
                _write(tmp_path / rel, _sine(200.0 * (digit + 1), 8000, 0.1))
                rows.append({"path": rel, "label": str(digit * 5),  # 0, 5, 10: numeric order
                             "split": "test" if take == 0 else "train", "speaker": speaker})
    source = load_source(_manifest(tmp_path, rows))
    assert source.classes == ["0", "5", "10"]
    assert source.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert all(r.path.is_absolute() and r.path.exists() for r in source.records)
    splits = split_from_column([r.split for r in source.records])
    assert splits == {"test": [0, 2, 4, 6, 8, 10], "train": [1, 3, 5, 7, 9, 11]}
    assert source.groups("speaker")[:4] == ["ann", "ann", "bob", "bob"]
    assert source.split() == splits
    by_speaker = source.split(group_column="speaker", test_groups=["bob"])
    assert by_speaker == {"train": [0, 1, 4, 5, 8, 9], "test": [2, 3, 6, 7, 10, 11]}
    stratified = source.split(use_split_column=False, test_fraction=0.25, seed=0)
    assert [source.labels[i] for i in stratified["test"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="group column 'group'"):
        source.groups()


def test_manifest_missing_label_column_names_csv(tmp_path):
    path = _manifest(tmp_path, [{"path": "a.wav", "class": "x"}])
    with pytest.raises(ManifestError, match=r"manifest\.csv.*'label'"):
        load_source(path)


def test_bad_files_raise_naming_file_or_are_skipped_and_counted(tmp_path):
    good = [_write(tmp_path / f"good{i}.wav", _sine(440.0, 8000, 0.1)) for i in range(3)]
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    empty_file = tmp_path / "empty.flac"
    empty_file.write_bytes(b"")
    _write(tmp_path / "silent.wav", np.zeros(0))
    rows = [{"path": p.name, "label": "a"} for p in good]
    rows += [{"path": "corrupt.wav", "label": "a"}, {"path": "empty.flac", "label": "b"},
             {"path": "silent.wav", "label": "b"}, {"path": "missing.ogg", "label": "b"},
             {"path": "unlabelled.wav", "label": ""}]
    manifest = _manifest(tmp_path, rows)

    with pytest.raises(AudioReadError, match="corrupt.wav"):
        load_source(manifest)
    source = load_source(manifest, skip_bad=True)
    assert len(source.records) == 3 and source.classes == ["a"]
    assert len(source.skipped) == 5
    where = " ".join(entry.where for entry in source.skipped)
    for name in ("corrupt.wav", "empty.flac", "silent.wav", "missing.ogg", "manifest.csv:9"):
        assert name in where
    assert "skipped 5 bad entries" in source.summary()

    with pytest.raises(ManifestError, match=r"m2\.csv:2 .*good0\.wav.*unknown label 'a'"):
        load_source(_manifest(tmp_path, rows[:3], "m2.csv"), classes=["x", "y"])
    with pytest.raises(AudioReadError, match="empty.flac"):
        read_audio(empty_file)

    folder = tmp_path / "folder"
    _write(folder / "a" / "ok.wav", _sine(440.0, 8000, 0.1))
    (folder / "b").mkdir()
    (folder / "b" / "broken.ogg").write_bytes(b"OggS" + bytes(40))
    with pytest.raises(AudioReadError, match="broken.ogg"):
        load_source(folder)
    skipped = load_source(folder, skip_bad=True)
    assert [r.label for r in skipped.records] == ["a"] and len(skipped.skipped) == 1


def test_source_errors_for_user_mistakes(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_source(tmp_path / "does-not-exist")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        load_source(tmp_path)


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = [0] * 50 + [1] * 30 + [2] * 10 + [3] * 3
    split = stratified_split(labels, test_fraction=0.2, val_fraction=0.1, seed=3)
    members = {name: np.asarray(labels)[indices] for name, indices in split.items()}
    assert sorted(sum(split.values(), [])) == list(range(len(labels)))
    assert [int((members["test"] == c).sum()) for c in range(4)] == [10, 6, 2, 1]
    assert [int((members["val"] == c).sum()) for c in range(4)] == [5, 3, 1, 1]
    assert split == stratified_split(labels, test_fraction=0.2, val_fraction=0.1, seed=3)
    assert split["test"] != stratified_split(labels, test_fraction=0.2, val_fraction=0.1,
                                             seed=4)["test"]
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, test_fraction=1.5)


def test_group_split_is_group_disjoint():
    groups = [f"spk{i % 7}" for i in range(70)]
    split = group_split(groups, test_fraction=0.3, val_fraction=0.15, seed=0)
    seen = {name: {groups[i] for i in indices} for name, indices in split.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["val"]
    assert not seen["val"] & seen["test"]
    assert len(seen["test"]) == 2 and len(seen["val"]) == 1 and len(seen["train"]) == 4
    assert sorted(sum(split.values(), [])) == list(range(70))

    held = group_split(groups, test_groups=["spk3"])
    assert {groups[i] for i in held["test"]} == {"spk3"} and len(held["test"]) == 10
    with pytest.raises(ValueError, match="nobody"):
        group_split(groups, test_groups=["nobody"])
    with pytest.raises(ValueError, match="no group for training"):
        group_split(["a", "b"], test_groups=["a"], val_groups=["b"])


def test_split_values_are_strict_and_aliases_map_to_val():
    from kdcore.data.splits import normalize_split

    assert [normalize_split(v) for v in ("train", " Val ", "validation", "valid", "DEV",
                                         "test")] == ["train", "val", "val", "val", "val",
                                                      "test"]
    assert normalize_split("tarin") is None and normalize_split("eval") is None
    assert split_from_column(["train", "dev", "test", "valid"]) == {
        "train": [0], "val": [1, 3], "test": [2]}
    with pytest.raises(ValueError, match="row 1 has split value 'tarin'"):
        split_from_column(["train", "tarin"])


def test_truncated_wav_is_found_from_its_header(tmp_path):
    """libsndfile reads a WAV cut short as a short clip; probe_audio and read_audio compare
    the header's data size with the bytes present and name both lengths."""
    from kdcore.data.audio import wav_declared_frames

    whole = _write(tmp_path / "whole.wav", _sine(440.0, 8000, 1.0))
    assert wav_declared_frames(whole) == (8000, 8000)
    data = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:len(data) - 2 * 6500])
    declared, present = wav_declared_frames(cut)
    assert (declared, present) == (8000, 1500)
    for reader in (probe_audio, read_audio):
        with pytest.raises(AudioReadError, match=r"cut\.wav.*declares 8000 frames, 1500"):
            reader(cut)
    assert wav_declared_frames(_write(tmp_path / "x.flac", _sine(440.0, 8000, 0.1))) is None
