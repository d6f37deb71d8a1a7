"""Procedural noises: spectra measured with scipy's Welch estimate, SNR re-derived in float64."""

import numpy as np
import pytest
import torch
from scipy import signal

from kdcore.data.noise import (
    NOISE_KINDS,
    babble_noise,
    bursts_noise,
    hum_noise,
    make_noise,
    mix_at_snr,
    scale_to_snr,
)

SR = 16000


def _clips():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(int(SR * (0.3 + 0.1 * i)), generator=g) * (i + 1) for i in range(5)]


def _slope_db_per_decade(x, low=100.0, high=0.4 * SR):
    freqs, power = signal.welch(np.asarray(x, dtype=np.float64), fs=SR, nperseg=4096)
    keep = (freqs >= low) & (freqs <= high)
    slope, _ = np.polyfit(np.log10(freqs[keep]), 10 * np.log10(power[keep]), 1)
    return slope


@pytest.mark.parametrize("kind,expected,tol", [("white", 0.0, 1.0), ("pink", -10.0, 1.0),
                                                ("brown", -20.0, 1.5)])
def test_spectral_slope(kind, expected, tol):
    x = make_noise(kind, 8 * SR, SR, seed=3, dtype=torch.float64)
    assert abs(_slope_db_per_decade(x) - expected) < tol


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_seeded_unit_rms_and_reproducible(kind):
    clips = _clips()
    a = make_noise(kind, 12345, SR, 7, babble_clips=clips)
    b = make_noise(kind, 12345, SR, 7, babble_clips=clips)
    c = make_noise(kind, 12345, SR, 8, babble_clips=clips)
    assert a.shape == (12345,) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert abs(float(a.double().square().mean().sqrt()) - 1.0) < 1e-6
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(make_noise(kind, 12345, SR, gen, babble_clips=clips), a)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.3, 20.0])
def test_mix_at_exact_snr_float64(snr_db):
    g = torch.Generator().manual_seed(1)
    speech = torch.randn(3, 4000, generator=g, dtype=torch.float64) * torch.tensor([[.1], [1], [3]])
    noise = make_noise("pink", 4000, SR, 2, dtype=torch.float64).expand(3, -1).clone()
    noisy = mix_at_snr(speech, noise, snr_db)
    residual = (noisy - speech).numpy()
    measured = 10 * np.log10(np.mean(speech.numpy() ** 2, -1) / np.mean(residual ** 2, -1))
    assert np.abs(measured - snr_db).max() < 1e-6


def test_per_row_snr_tensor():
    speech = torch.randn(2, 1000, dtype=torch.float64)
    noise = torch.randn(2, 1000, dtype=torch.float64)
    scaled = scale_to_snr(speech, noise, torch.tensor([0.0, 10.0], dtype=torch.float64))
    measured = 10 * torch.log10(speech.square().mean(-1) / scaled.square().mean(-1))
    torch.testing.assert_close(measured, torch.tensor([0.0, 10.0], dtype=torch.float64))


def test_hum_has_mains_harmonics_only():
    x = hum_noise(SR, SR, 0, mains_hz=60.0, harmonics=4, dtype=torch.float64).numpy()
    spectrum = np.abs(np.fft.rfft(x)) / len(x)  # 1 Hz bins
    peaks = set(np.flatnonzero(spectrum > 1e-3).tolist())
    assert peaks == {60, 120, 180, 240}
    drawn = {float(np.argmax(np.abs(np.fft.rfft(hum_noise(SR, SR, s).numpy())))) for s in range(8)}
    assert drawn <= {50.0, 60.0} and len(drawn) == 2


def test_bursts_are_short_and_sparse():
    x = bursts_noise(4 * SR, SR, 1, rate_hz=2.0, max_ms=50.0).numpy()
    active = np.abs(x) > 0
    assert 0 < active.mean() < 0.25
    edges = np.flatnonzero(np.diff(active.astype(int)) == 1)
    assert len(edges) >= 1


def test_babble_is_made_of_the_clips():
    tone = np.sin(2 * np.pi * 440 * np.arange(SR // 2) / SR)
    x = babble_noise(SR, SR, 0, clips=[tone], num_talkers=3).numpy()
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) - 440) <= 1


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="clips"):
        babble_noise(100, SR, 0, clips=[])
    with pytest.raises(ValueError, match="kind"):
        make_noise("rain", 100, SR, 0)
    with pytest.raises(ValueError, match="num_samples"):
        make_noise("white", 0, SR, 0)
    with pytest.raises(ValueError, match="same shape"):
        mix_at_snr(torch.ones(10), torch.ones(11), 0.0)
    with pytest.raises(ValueError, match="noise is silent"):
        mix_at_snr(torch.ones(10), torch.zeros(10), 0.0)
    with pytest.raises(ValueError, match="speech is silent"):
        mix_at_snr(torch.zeros(10), torch.ones(10), 0.0)
