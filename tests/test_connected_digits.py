"""ConnectedDigits on generated clips and on real FSDD recordings (skipped when absent)."""

import csv
import os

import numpy as np
import pytest
import soundfile
import torch

from kdcore.data import ConnectedDigits, write_connected_digits
from tests.conftest import SHARED

FSDD = os.path.join(SHARED, "data", "fsdd", "manifest.csv")
SR = 8000


def _generated():
    """Clip of speaker s and digit d is a constant (10 s + d + 1) / 100 of varying length, so
    every sample says where it came from."""
    items = []
    for s, name in enumerate(["amy", "ben", "cat"]):
        for d in range(10):
            for take in range(2):
                n = 400 + 37 * d + 11 * take + 5 * s
                items.append({"waveform": torch.full((n,), (10 * s + d + 1) / 100.0),
                              "label": str(d), "speaker": name})
    return items


def _check_utterance(item, data, sources):
    wave = item["waveform"]
    words = item["transcript"].split(" ")
    assert 2 <= len(words) <= 7 and len(words) == len(item["targets"])
    assert [str(int(t)) for t in item["targets"]] == words
    speakers = {sources[int(c)][1] for c in item["clips"]}
    assert speakers == {item["speaker"]}
    covered = torch.zeros(len(wave), dtype=torch.bool)
    previous_end = 0
    for (start, end), clip, word in zip(item["segments"].tolist(), item["clips"].tolist(),
                                        words, strict=True):
        expected, speaker, label = sources[clip]
        assert label == word
        assert start >= previous_end
        gap = (start - previous_end) / SR
        if previous_end > 0:
            assert data.gap_s[0] - 1 / SR <= gap <= data.gap_s[1] + 1 / SR
        assert np.array_equal(wave[start:end].numpy(), expected)
        covered[start:end] = True
        previous_end = end
    assert np.abs(wave[~covered].numpy()).max(initial=0.0) == 0.0
    assert (len(wave) - previous_end) / SR <= data.edge_s[1] + 1 / SR


def test_generated_clips_make_one_speaker_utterances():
    items = _generated()
    sources = [(it["waveform"].numpy(), it["speaker"], it["label"]) for it in items]
    data = ConnectedDigits(items, 40, seed=1)
    lengths = set()
    for i in range(len(data)):
        item = data[i]
        _check_utterance(item, data, sources)
        lengths.add(len(item["targets"]))
    assert lengths == set(range(2, 8))


def test_deterministic_per_index_and_fingerprint():
    items = _generated()
    a, b = ConnectedDigits(items, 10, seed=3), ConnectedDigits(items, 10, seed=3)
    c = ConnectedDigits(items, 10, seed=4)
    for i in reversed(range(10)):
        assert torch.equal(a[i]["waveform"], b[i]["waveform"])
        assert a[i]["transcript"] == b[i]["transcript"]
    assert any(a[i]["transcript"] != c[i]["transcript"] for i in range(10))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    held_out = ConnectedDigits(items, 10, seed=3, speakers=["cat"])
    assert {held_out[i]["speaker"] for i in range(10)} == {"cat"}
    assert held_out.fingerprint() != a.fingerprint()


def test_write_folder_with_transcripts(tmp_path):
    items = _generated()
    data = ConnectedDigits(items, 5, seed=0)
    manifest = write_connected_digits(data, tmp_path / "cd", split={"amy": "train", "ben": "val",
                                                                    "cat": "test"})
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and list(rows[0]) == ["path", "transcript", "speaker", "num_digits",
                                                 "split"]
    for i, row in enumerate(rows):
        item = data[i]
        audio, rate = soundfile.read(str(manifest.parent / row["path"]), dtype="float32")
        assert rate == SR and row["transcript"] == item["transcript"]
        assert row["split"] == {"amy": "train", "ben": "val", "cat": "test"}[item["speaker"]]
        np.testing.assert_allclose(audio, item["waveform"].numpy(), atol=1 / 32768)


def test_errors_name_the_argument(tmp_path):
    items = _generated()
    with pytest.raises(ValueError, match="digits"):
        ConnectedDigits(items, 3, digits=(3, 2))
    with pytest.raises(ValueError, match="speakers not found"):
        ConnectedDigits(items, 3, speakers=["zed"])
    with pytest.raises(ValueError, match="sample_rate"):
        ConnectedDigits(type("Rated", (list,), {"sample_rate": 16000})(items), 3)
    with pytest.raises(ValueError, match="clip_labels"):
        ConnectedDigits([torch.ones(10)] * 3, 3)
    bad = tmp_path / "m.csv"
    bad.write_text("path,label\na.wav,1\n")
    with pytest.raises(ValueError, match="speaker"):
        ConnectedDigits(bad, 3)
    with pytest.raises(FileNotFoundError, match="manifest"):
        ConnectedDigits(tmp_path / "none.csv", 3)


def test_real_fsdd_manifest(tmp_path):
    if not os.path.exists(FSDD):
        pytest.skip("FSDD recordings not found in ../shared")
    data = ConnectedDigits(FSDD, 6, split="test", seed=0)
    root = os.path.dirname(FSDD)
    with open(FSDD, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    sources = {}
    for i in range(len(data)):
        item = data[i]
        for clip in item["clips"].tolist():
            row = rows[clip]
            audio, rate = soundfile.read(os.path.join(root, row["path"]), dtype="float32")
            assert rate == SR
            sources[clip] = (audio, row["speaker"], row["label"])
        _check_utterance(item, data, sources)
    manifest = write_connected_digits(data, tmp_path, indices=[0, 1], subtype="FLOAT")
    audio, _ = soundfile.read(str(tmp_path / "utt_000001.wav"), dtype="float32")
    assert np.array_equal(audio, data[1]["waveform"].numpy())
    assert manifest.read_text().splitlines()[0] == "path,transcript,speaker,num_digits"
