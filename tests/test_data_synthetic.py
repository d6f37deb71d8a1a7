"""SyntheticAudio determinism and class cues; on-device augmentations against numpy
references."""

import numpy as np
import pytest
import torch

from kdcore.data import SpecAugment, SyntheticAudio, WaveAugment, collate_audio
from kdcore.data.augment import (
    add_noise,
    mix_targets,
    mixup,
    random_gain,
    random_shift,
    spec_augment,
)
from kdcore.data.synthetic import CLASS_NAMES, VOWELS, Speaker, synthesize


def test_synthetic_is_deterministic_by_seed_and_split():
    first = SyntheticAudio(20, seed=7, sample_rate=8000, duration=0.5)
    again = SyntheticAudio(20, seed=7, sample_rate=8000, duration=0.5, cache=False)
    for index in (13, 0, 5, 13):  # access order must not matter
        a, b = first[index], again[index]
        assert a.waveform.dtype == torch.float32 and a.waveform.shape == (4000,)
        assert torch.equal(a.waveform, b.waveform) and a.label == b.label == index % 32
        assert a.index == index
    other_seed = SyntheticAudio(20, seed=8, sample_rate=8000, duration=0.5)
    other_split = SyntheticAudio(20, seed=7, split="test", sample_rate=8000, duration=0.5)
    for index in range(4):
        assert not torch.allclose(first[index].waveform, other_seed[index].waveform)
        assert not torch.allclose(first[index].waveform, other_split[index].waveform)


def test_synthetic_clips_are_sane_and_balanced():
    data = SyntheticAudio(64, seed=1, sample_rate=16000, duration=1.0)
    assert data.num_classes == len(CLASS_NAMES) == 32 and len(data) == 64
    assert np.bincount(data.labels).tolist() == [2] * 32
    batch = collate_audio([data[i] for i in range(64)])
    assert batch.waveforms.shape == (64, 16000)
    peaks = batch.waveforms.abs().amax(dim=1)
    assert torch.all(peaks <= 1.0) and torch.all(peaks > 0.05)
    assert torch.isfinite(batch.waveforms).all()
    with pytest.raises(ValueError, match="split"):
        SyntheticAudio(4, split="dev")
    with pytest.raises(ValueError, match="num_examples"):
        SyntheticAudio(0)
    with pytest.raises(ValueError, match="speakers"):
        SyntheticAudio(4, speakers=0)


def test_synthetic_speakers_are_balanced_and_split_disjoint():
    train = SyntheticAudio(32 * 12, seed=3, sample_rate=8000, duration=0.5, speakers=4)
    speakers = np.array([train.speaker_of(i) for i in range(len(train))])
    labels = np.array(train.labels)
    for speaker in range(4):  # every speaker says every class equally often
        assert np.bincount(labels[speakers == speaker], minlength=32).tolist() == [3] * 32
    test = SyntheticAudio(64, split="test", seed=3, sample_rate=8000, duration=0.5, speakers=4)
    train_tracts = {train._speaker(k).tract for k in range(4)}
    test_tracts = {test._speaker(k).tract for k in range(4)}
    assert len(train_tracts) == 4 and not train_tracts & test_tracts
    assert SyntheticAudio(8, speakers=None).speaker_of(5) is None


def test_synthetic_speaker_fixes_the_vowel_formants():
    """Properties, not the formula: a speaker's formants are fixed (same on every call); with
    a neutral accent every formant of every vowel scales by the same factor, the tract
    length; one accent entry moves exactly one formant of one vowel; drawn speakers stay
    within the documented tract (8 %) and accent (5 %) ranges."""
    rng = np.random.default_rng(0)
    speaker = Speaker.draw(rng, 16000)
    for vowel in VOWELS:
        assert np.array_equal(speaker.formants(vowel), speaker.formants(vowel))
        ratio = speaker.formants(vowel) / np.asarray(VOWELS[vowel], dtype=float)
        assert np.all(np.abs(ratio - 1) <= 0.08 + 0.05 + 0.01)
    neutral = Speaker(**{**speaker.__dict__, "tract": 1.1, "accent": np.ones((len(VOWELS), 3))})
    ratios = np.stack([neutral.formants(v) / np.asarray(VOWELS[v], dtype=float) for v in VOWELS])
    np.testing.assert_allclose(ratios, 1.1, rtol=1e-12)
    accent = np.ones((len(VOWELS), 3))
    accent[1, 2] = 1.04
    moved = Speaker(**{**neutral.__dict__, "accent": accent})
    changes = np.stack([moved.formants(v) / neutral.formants(v) for v in VOWELS])
    expected = np.ones((len(VOWELS), 3))
    expected[1, 2] = 1.04
    np.testing.assert_allclose(changes, expected, rtol=1e-12)


def test_synthetic_channel_eq_gain_matches_its_bumps():
    from kdcore.data.synthetic import _channel

    rate, n = 8000, 8000
    speaker = Speaker.draw(np.random.default_rng(1), rate)
    speaker = Speaker(**{**speaker.__dict__, "channel": ((1000.0, 0.5, 6.0),
                                                          (250.0, 0.3, -4.0))})
    seconds = np.arange(n) / rate
    for freq in (250.0, 500.0, 1000.0, 3000.0):
        tone = np.sin(2 * np.pi * freq * seconds)
        out = _channel(speaker, tone, rate)
        gain_db = 20 * np.log10(np.sqrt(np.mean(out**2) / np.mean(tone**2)))
        octave = np.log2(freq)
        expected = (6.0 * np.exp(-0.5 * ((octave - np.log2(1000.0)) / 0.5) ** 2)
                    - 4.0 * np.exp(-0.5 * ((octave - np.log2(250.0)) / 0.3) ** 2))
        assert abs(gain_db - expected) < 1e-6, (freq, gain_db, expected)


def _pitch_track(wave: np.ndarray, rate: int) -> np.ndarray:
    """Autocorrelation pitch (Hz, searched in 70-500 Hz) per 128 ms frame with energy."""
    frame, hop = 2048, 1024
    level = np.sqrt(np.mean(wave**2))
    shortest, longest = rate // 500, rate // 70
    track = []
    for start in range(0, wave.size - frame, hop):
        chunk = wave[start:start + frame]
        if np.sqrt(np.mean(chunk**2)) < 0.3 * level:
            continue
        correlation = np.correlate(chunk, chunk, "full")[frame - 1:]
        track.append(rate / (shortest + np.argmax(correlation[shortest:longest])))
    return np.asarray(track)


def test_synthetic_pitch_contours_move_pitch_as_named():
    moves = {"rise": [], "fall": [], "flat": []}
    for contour in moves:
        label = CLASS_NAMES.index(f"a-{contour}-steady")
        for seed in range(6):
            clip = synthesize(np.random.default_rng(seed), label, 16000, 16000,
                              snr_db=(30.0, 30.0))
            track = _pitch_track(clip, 16000)
            moves[contour].append(np.log2(track[-2:].mean() / track[:2].mean()))
    # Medians: the autocorrelation estimate can slip an octave on a single clip.
    assert np.median(moves["rise"]) > 0.15 and np.median(moves["fall"]) < -0.15
    assert abs(np.median(moves["flat"])) < 0.05


def test_synthetic_vowels_put_formants_where_named():
    rate = 16000
    freqs = np.fft.rfftfreq(rate, 1 / rate)
    low, mid = (freqs > 200) & (freqs < 1000), (freqs > 1000) & (freqs < 2200)
    for vowel, (first_formant, *_) in VOWELS.items():
        label = CLASS_NAMES.index(f"{vowel}-flat-steady")
        power = np.zeros(freqs.size)
        for seed in range(8):  # pitch and tract length vary per clip: the mean is smooth
            clip = synthesize(np.random.default_rng(seed), label, rate, rate,
                              snr_db=(30.0, 30.0))
            power += np.abs(np.fft.rfft(clip)) ** 2 / np.sum(clip**2)
        envelope = np.convolve(power, np.ones(101) / 101, "same")  # 100 Hz smoothing
        f1 = freqs[low][np.argmax(envelope[low])]
        assert abs(f1 / first_formant - 1) < 0.2, (vowel, f1)
        f2 = freqs[mid][np.argmax(envelope[mid])]
        # Only "e" has its second formant high (1840 Hz); the others near 0.8-1.1 kHz.
        assert (f2 > 1600) if vowel == "e" else (f2 < 1300), (vowel, f2)


def test_gain_and_shift_match_numpy():
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(5, 37)
    gained = random_gain(waves, (-6.0, 6.0), generator)
    ratio = (gained / waves).numpy()
    assert np.allclose(ratio, ratio[:, :1], rtol=1e-5)
    assert np.all(np.abs(20 * np.log10(ratio[:, 0])) <= 6.0 + 1e-4)

    shifted = random_shift(waves, 6, torch.Generator().manual_seed(3)).numpy()
    source = waves.numpy()
    for row in range(5):
        matches = []
        for shift in range(-6, 7):
            expected = np.zeros(37, dtype=np.float32)
            if shift >= 0:
                expected[shift:] = source[row, : 37 - shift]
            else:
                expected[:shift] = source[row, -shift:]
            matches.append(np.array_equal(shifted[row], expected))
        assert sum(matches) == 1


def test_noise_reaches_requested_snr_and_respects_lengths():
    waves = torch.randn(4, 20000) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    lengths = torch.tensor([20000, 20000, 20000, 8000])
    waves[3, 8000:] = 0
    noisy = add_noise(waves, (20.0, 20.0), lengths=lengths,
                      generator=torch.Generator().manual_seed(0))
    noise = (noisy - waves).double().numpy()
    signal = waves.double().numpy()
    for row, length in enumerate(lengths.tolist()):
        snr = 10 * np.log10(np.mean(signal[row, :length] ** 2) / np.mean(noise[row, :length] ** 2))
        assert abs(snr - 20.0) < 0.3
    assert np.all(noise[3, 8000:] == 0)


def test_mixup_weights_and_targets_are_consistent():
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(64, 3, 11)
    mixed, lam, perm = mixup(inputs, alpha=0.4, generator=generator)
    assert lam.shape == (64,) and torch.all(lam >= 0.5) and torch.all(lam <= 1.0)
    assert sorted(perm.tolist()) == list(range(64))
    lam64, x64 = lam.double().numpy(), inputs.double().numpy()
    expected = lam64[:, None, None] * x64 + (1 - lam64[:, None, None]) * x64[perm.numpy()]
    assert np.allclose(mixed.double().numpy(), expected, atol=1e-5)
    # Beta(0.4, 0.4) folded to [0.5, 1]: mean 0.5 + E|X - 0.5|, about 0.78 here.
    samples = np.random.default_rng(0).beta(0.4, 0.4, 200000)
    folded = np.sort(np.maximum(samples, 1 - samples))
    torch.manual_seed(3)
    for source in (generator, None):  # the generator's inverse CDF, torch's Beta sampler
        many = np.sort(mixup(torch.zeros(5000, 1), alpha=0.4, generator=source)[1].double()
                       .numpy())
        # Kolmogorov-Smirnov distance to the folded Beta(0.4, 0.4) sample.
        cdf_gap = np.abs(np.searchsorted(folded, many) / folded.size
                         - np.arange(1, many.size + 1) / many.size)
        assert cdf_gap.max() < 0.03

    labels = torch.randint(0, 10, (64,), generator=generator)
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    mixed_targets = mix_targets(one_hot, lam, perm).double().numpy()
    rows = np.arange(64)
    expected_targets = np.zeros((64, 10))
    np.add.at(expected_targets, (rows, labels.numpy()), lam64)
    np.add.at(expected_targets, (rows, labels.numpy()[perm.numpy()]), 1 - lam64)
    assert np.allclose(mixed_targets, expected_targets, atol=1e-6)
    assert np.allclose(mixed_targets.sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="lam and perm"):
        mix_targets(one_hot[:3], lam, perm)


def test_spec_augment_masks_bands_within_valid_frames():
    features = torch.randn(6, 40, 50) - 10.0
    lengths = torch.tensor([50, 50, 30, 20, 50, 10])
    out = spec_augment(features, freq_masks=1, freq_width=6, time_masks=1, time_width=8,
                       lengths=lengths, fill="zero", generator=torch.Generator().manual_seed(2))
    masked = (out == 0).numpy()
    assert masked.any()
    for row in range(6):
        full_rows = masked[row].all(axis=1)
        full_cols = masked[row].all(axis=0)
        assert full_rows.sum() <= 6 and full_cols.sum() <= 8
        assert not full_cols[lengths[row]:].any()
        explained = full_rows[:, None] | full_cols[None, :]
        assert np.array_equal(masked[row], explained)
    unchanged = ~torch.from_numpy(masked)
    assert torch.equal(out[unchanged], features[unchanged])
    with pytest.raises(ValueError, match="features"):
        spec_augment(torch.randn(3, 4))


def test_augment_modules_act_only_in_training():
    waves = torch.randn(4, 300)
    wave_aug = WaveAugment(gain_db=(-3.0, 3.0), max_shift=5, noise_snr_db=(20.0, 30.0),
                           generator=torch.Generator().manual_seed(0))
    spec_aug = SpecAugment(freq_width=3, time_width=4, generator=torch.Generator().manual_seed(0))
    features = torch.randn(4, 16, 30)
    wave_aug.eval()
    spec_aug.eval()
    assert wave_aug(waves) is waves and spec_aug(features) is features
    wave_aug.train()
    spec_aug.train()
    changed = wave_aug(waves)
    assert changed.shape == waves.shape and not torch.allclose(changed, waves)
    repeat = WaveAugment(gain_db=(-3.0, 3.0), max_shift=5, noise_snr_db=(20.0, 30.0),
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(repeat(waves), changed)
    assert spec_aug(features).shape == features.shape
    with pytest.raises(ValueError, match="gain_db"):
        WaveAugment(gain_db=(3.0, -3.0))
    with pytest.raises(ValueError, match="fill"):
        SpecAugment(fill="nan")


def test_spec_augment_module_masks_the_configured_widths_in_training():
    """In training mode SpecAugment masks whole mel bands and whole frames (filled with the
    row's mean); over many rows every width from 0 to the configured one appears, never a
    wider one, and nothing outside the masks changes."""
    module = SpecAugment(freq_masks=1, freq_width=3, time_masks=1, time_width=5, fill="zero",
                         generator=torch.Generator().manual_seed(4)).train()
    features = torch.rand(400, 16, 40) + 1.0  # no cell is 0 before masking
    out = module(features)
    masked = (out == 0).numpy()
    band_widths, frame_widths = set(), set()
    for row in masked:
        bands, frames = row.all(axis=1), row.all(axis=0)
        assert np.array_equal(row, bands[:, None] | frames[None, :])
        for full, widths in ((bands, band_widths), (frames, frame_widths)):
            runs = np.flatnonzero(np.diff(np.concatenate([[0], full.astype(int), [0]])))
            assert runs.size <= 2  # one mask per axis: at most one contiguous run
            widths.add(int(runs[1] - runs[0]) if runs.size else 0)
    assert band_widths == {0, 1, 2, 3} and frame_widths == {0, 1, 2, 3, 4, 5}
    kept = ~torch.from_numpy(masked)
    assert torch.equal(out[kept], features[kept])
    mean_filled = SpecAugment(freq_masks=1, freq_width=3, time_masks=0, time_width=0,
                              generator=torch.Generator().manual_seed(5)).train()(features)
    changed = mean_filled != features
    row_means = features.mean(dim=(1, 2), keepdim=True).expand_as(features)
    assert changed.any() and torch.allclose(mean_filled[changed], row_means[changed])
