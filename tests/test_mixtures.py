"""NoisyMixtures: exact SNR, determinism, babble from other speakers only."""

import csv
import os

import numpy as np
import pytest
import soundfile
import torch

from kdcore.data import (
    AudioExample,
    AudioFileDataset,
    NoisyMixtures,
    TaggedMixtures,
    write_tagged_mixtures,
)
from kdcore.data.noise import NOISE_KINDS
from tests.conftest import SHARED

SR = 8000
TONES = {"ann": 300.0, "bob": 700.0, "cyd": 1100.0, "dee": 1900.0}


class ToneSpeakers(torch.utils.data.Dataset):
    """Each speaker 'speaks' one pure tone, so its voice is visible in a spectrum."""

    sample_rate = SR

    def __init__(self, per_speaker=3, dtype=torch.float64):
        self.items = []
        for s, (name, freq) in enumerate(TONES.items()):
            for k in range(per_speaker):
                n = 2000 + 500 * k + 100 * s
                t = torch.arange(n, dtype=torch.float64) / SR
                wave = (0.2 + 0.3 * k) * torch.sin(2 * np.pi * freq * t)
                self.items.append({"waveform": wave.to(dtype), "speaker": name})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _snr(clean, noisy):
    clean, noisy = clean.double().numpy(), noisy.double().numpy()
    return 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))


def test_requested_snr_exact_float64_and_in_range():
    mixes = NoisyMixtures(ToneSpeakers(), snr_db=(-5.0, 15.0), seed=1, dtype=torch.float64)
    kinds = set()
    for i in range(len(mixes)):
        item = mixes[i]
        assert -5.0 <= item["snr_db"] <= 15.0
        assert abs(_snr(item["clean"], item["noisy"]) - item["snr_db"]) < 1e-6
        assert item["noisy"].shape == item["clean"].shape
        kinds.add(item["noise_kind"])
    assert len(kinds) >= 4 and kinds <= set(NOISE_KINDS)


def test_float32_snr_and_fixed_snr():
    mixes = NoisyMixtures(ToneSpeakers(dtype=torch.float32), snr_db=5.0, seed=0)
    item = mixes[3]
    assert item["noisy"].dtype == torch.float32 and item["snr_db"] == 5.0
    assert abs(_snr(item["clean"], item["noisy"]) - 5.0) < 1e-3


def test_deterministic_per_index_and_seed():
    a = NoisyMixtures(ToneSpeakers(), seed=3)
    b = NoisyMixtures(ToneSpeakers(), seed=3)
    c = NoisyMixtures(ToneSpeakers(), seed=4)
    later = [b[i] for i in reversed(range(len(b)))][::-1]  # other access order
    for i in range(len(a)):
        first = a[i]
        assert torch.equal(first["noisy"], later[i]["noisy"])
        assert first["noise_kind"] == later[i]["noise_kind"]
        assert first["snr_db"] == later[i]["snr_db"]
    assert any(not torch.equal(a[i]["noisy"], c[i]["noisy"]) for i in range(len(a)))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_babble_uses_only_other_speakers():
    data = ToneSpeakers()
    mixes = NoisyMixtures(data, noises=["babble"], snr_db=0.0, seed=0, babble_talkers=3)
    for i in range(len(mixes)):
        item = mixes[i]
        noise = item["noise"].double().numpy()
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        freqs = np.fft.rfftfreq(len(noise), 1 / SR)

        def band(f, spectrum=spectrum, freqs=freqs):
            return spectrum[np.abs(freqs - f) < 40].sum() / spectrum.sum()

        own = TONES[item["speaker"]]
        assert band(own) < 1e-3
        assert sum(band(f) for f in TONES.values() if f != own) > 0.95  # joins click


def test_speakers_argument_and_unknown_speakers():
    clips = [torch.randn(1000 + 10 * i) for i in range(6)]
    mixes = NoisyMixtures(clips, noises=("babble", "hum"), seed=0, sample_rate=SR,
                          speakers=["a", "a", "b", "b", "c", "c"])
    assert mixes[0]["speaker"] == "a"
    unknown = NoisyMixtures([AudioExample(c, 0, i) for i, c in enumerate(clips)],
                            noises="babble", sample_rate=SR)
    assert unknown[2]["speaker"] == "" and unknown[2]["noise_kind"] == "babble"


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="sample_rate"):
        NoisyMixtures([torch.randn(100)] * 3)
    with pytest.raises(ValueError, match="noises"):
        NoisyMixtures([torch.randn(100)] * 3, noises=["rain"], sample_rate=SR)
    with pytest.raises(ValueError, match="snr_db"):
        NoisyMixtures([torch.randn(100)] * 3, snr_db=(10, 0), sample_rate=SR)
    with pytest.raises(ValueError, match="another speaker"):
        NoisyMixtures([torch.randn(100)] * 3, noises="babble", sample_rate=SR,
                      speakers=["a"] * 3)[0]
    with pytest.raises(ValueError, match="waveform"):
        NoisyMixtures([{"x": torch.randn(10)}] * 2, noises="white", sample_rate=SR)[0]


def test_real_fsdd_clips():
    manifest = os.path.join(SHARED, "data", "fsdd", "manifest.csv")
    if not os.path.exists(manifest):
        pytest.skip("FSDD recordings not found in ../shared")
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))[::250]
    root = os.path.dirname(manifest)
    speech = AudioFileDataset([os.path.join(root, r["path"]) for r in rows],
                              [int(r["label"]) for r in rows], sample_rate=SR)
    mixes = NoisyMixtures(speech, snr_db=(0, 10), seed=2, speakers=[r["speaker"] for r in rows],
                          dtype=torch.float64)
    for i in range(len(mixes)):
        item = mixes[i]
        assert abs(_snr(item["clean"], item["noisy"]) - item["snr_db"]) < 1e-6


def _speech_clips():
    g = torch.Generator().manual_seed(9)
    return [torch.randn(1000 + 500 * i, generator=g) * 0.1 for i in range(4)]


def test_tagged_mixtures_targets_match_events():
    clips = _speech_clips()
    data = TaggedMixtures(clips, 120, tags=("speech", "hum", "bursts", "tone", "pink"),
                          duration_s=0.5, sample_rate=SR, seed=0)
    counts = torch.zeros(5)
    for i in range(len(data)):
        item = data[i]
        events, targets = item["events"], item["targets"]
        assert events.shape == (5, SR // 2) and targets.shape == (5,)
        torch.testing.assert_close(item["waveform"], events.sum(0), rtol=0, atol=1e-6)
        active = events.abs().amax(-1) > 0
        assert torch.equal(active, targets.bool()) and targets.sum() >= 1
        assert item["labels"].split(";") == [t for t, p in zip(data.tags, targets.tolist(),
                                                                strict=True) if p]
        for c, tag in enumerate(data.tags):
            if not targets[c]:
                continue
            x = events[c].double().numpy()
            if tag == "speech":  # one whole clip (all shorter than the mixture), scaled
                nz = np.flatnonzero(x)
                piece = x[nz[0]:nz[-1] + 1]
                source = [c.double().numpy() for c in clips if len(c) == len(piece)]
                assert len(source) == 1
                ratio = piece / source[0]
                assert ratio.min() > 0 and np.allclose(ratio, ratio[0], rtol=1e-5)
            elif tag == "tone":
                power = np.abs(np.fft.rfft(x)) ** 2
                freqs = np.fft.rfftfreq(len(x), 1 / SR)
                peak = freqs[np.argmax(power)]
                assert 290 <= peak <= 0.4 * SR + 10
                assert power[np.abs(freqs - peak) <= 50].sum() > 0.95 * power.sum()
        counts += targets
    rates = counts / len(data)
    assert ((rates > 0.35) & (rates < 0.75)).all()


def test_tagged_mixtures_deterministic_and_written(tmp_path):
    a = TaggedMixtures(_speech_clips(), 6, sample_rate=SR, seed=1)
    b = TaggedMixtures(_speech_clips(), 6, sample_rate=SR, seed=1)
    c = TaggedMixtures(_speech_clips(), 6, sample_rate=SR, seed=2)
    assert all(torch.equal(a[i]["waveform"], b[i]["waveform"]) for i in range(6))
    assert any(a[i]["labels"] != c[i]["labels"] or not torch.equal(a[i]["waveform"],
                                                                    c[i]["waveform"])
               for i in range(6))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    manifest = write_tagged_mixtures(a, tmp_path, split="train")
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["labels"] for r in rows] == [a[i]["labels"] for i in range(6)]
    audio, rate = soundfile.read(str(tmp_path / rows[2]["path"]), dtype="float32")
    assert rate == SR and np.array_equal(audio, a[2]["waveform"].numpy())
    ramp = torch.arange(1, 10001, dtype=torch.float64)  # longer than the clip: a window of it
    long = TaggedMixtures([ramp], 4, tags=("speech",), sample_rate=SR, duration_s=0.5)
    steps = np.diff(long[0]["events"][0].double().numpy())
    assert steps.min() > 0 and np.allclose(steps, steps[0], rtol=1e-3)
    with pytest.raises(ValueError, match="speech"):
        TaggedMixtures(None, 3)
    with pytest.raises(ValueError, match="tags"):
        TaggedMixtures(None, 3, tags=("rain",))
