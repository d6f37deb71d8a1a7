"""LogMel presets against the recipes they claim: librosa itself, Whisper's published formula,
Kaldi fbank and PaSST re-implemented in float64 numpy, torchaudio where it imports."""

from __future__ import annotations

import importlib

import librosa
import numpy as np
import pytest
import torch

import kdcore
from tests.mel64 import FLT_EPSILON, filterbank64, log_mel64, power_frames64
from tests.test_log_mel import rel_l2, require

BACKENDS = ["reference", "cpp"]


def _torchaudio():
    try:
        return importlib.import_module("torchaudio")
    except Exception as error:  # ImportError, or a torch/torchaudio ABI mismatch
        pytest.skip(f"torchaudio cannot be imported here ({type(error).__name__}: {error})")


def _clips(lengths, scale=0.2):
    batch = torch.zeros(len(lengths), max(lengths))
    for item, length in enumerate(lengths):
        batch[item, :length] = torch.randn(length) * scale
    return batch, torch.tensor(lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_librosa_preset_matches_librosa(backend):
    require(backend)
    frontend = kdcore.LogMel.from_preset("librosa", backend=backend)
    np.testing.assert_allclose(
        frontend.filterbank.double().numpy().T,
        librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128), rtol=1e-5, atol=1e-9)
    x, lengths = _clips([22050, 15000])
    out = frontend(x, lengths=lengths)
    for item, length in enumerate(lengths.tolist()):
        expected = librosa.feature.melspectrogram(y=x[item, :length].double().numpy(),
                                                  sr=22050)
        frames = expected.shape[1]
        assert int(frontend.frames(length)) == frames
        assert rel_l2(out[item, :, :frames].double().numpy(), expected) <= 1e-5
        assert (out[item, :, frames:] == 0).all()


def _whisper64(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log_mel_spectrogram (openai/whisper audio.py), per sample, in float64."""
    padded = np.pad(audio.astype(np.float64), 200, mode="reflect")
    window = np.hanning(401)[:-1]
    count = 1 + (len(padded) - 400) // 160
    spectrum = np.stack([np.fft.rfft(padded[i * 160:i * 160 + 400] * window)
                         for i in range(count)], axis=1)
    magnitudes = np.abs(spectrum[:, :-1]) ** 2
    filters = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels).astype(np.float64)
    log_spec = np.log10(np.maximum(filters @ magnitudes, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_preset_matches_published_formula(backend, n_mels):
    require(backend)
    frontend = kdcore.LogMel.from_preset("whisper", n_mels=n_mels, backend=backend)
    x, lengths = _clips([16000, 9000, 4800])
    x[1] *= 30.0  # a loud item must not move the others' floor (per-sample max)
    out = frontend(x, lengths=lengths)
    assert out.shape == (3, n_mels, 100)
    for item, length in enumerate(lengths.tolist()):
        expected = _whisper64(x[item, :length].numpy(), n_mels)
        frames = expected.shape[1]
        assert frames == length // 160 and int(frontend.frames(length)) == frames
        assert np.abs(out[item, :, :frames].double().numpy() - expected).max() <= 1e-4
        assert (out[item, :, frames:] == 0).all()
    alone = frontend(x[2, :4800])
    torch.testing.assert_close(alone, out[2, :, :alone.shape[-1]], rtol=0, atol=1e-5)


def _kaldi_fbank64(audio: np.ndarray) -> np.ndarray:
    """(frames, 23) torchaudio.compliance.kaldi.fbank defaults, float64."""
    spectrum = power_frames64(audio, n_fft=512, hop=160, win_length=400, window="povey",
                              center=False, preemphasis=0.97, remove_dc=True)
    bank = filterbank64(512, 16000, 23, 20.0, 8000.0, "kaldi")
    return np.log(np.maximum(spectrum @ bank, FLT_EPSILON))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kaldi_preset_matches_fbank_recipe(backend):
    require(backend)
    frontend = kdcore.LogMel.from_preset("kaldi", backend=backend)
    x, lengths = _clips([16000, 7001], scale=3000.0)  # Kaldi reads int16-scale samples
    out = frontend(x, lengths=lengths)
    for item, length in enumerate(lengths.tolist()):
        expected = _kaldi_fbank64(x[item, :length].double().numpy()).T
        frames = expected.shape[1]
        assert frames == 1 + (length - 400) // 160
        assert np.abs(out[item, :, :frames].double().numpy() - expected).max() <= 1e-3


def test_kaldi_preset_matches_torchaudio_fbank():
    torchaudio = _torchaudio()
    x = torch.randn(1, 16000) * 3000.0
    expected = torchaudio.compliance.kaldi.fbank(x, dither=0.0).T
    got = kdcore.LogMel.from_preset("kaldi")(x[0])
    assert (got - expected).abs().max() <= 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_passt_preset_matches_recipe(backend):
    require(backend)
    frontend = kdcore.LogMel.from_preset("passt", backend=backend)
    x, lengths = _clips([32000, 20001])
    out = frontend(x, lengths=lengths)
    for item, length in enumerate(lengths.tolist()):
        audio = x[item, :length].double().numpy()
        emphasised = audio[1:] - 0.97 * audio[:-1]
        expected, _ = log_mel64(emphasised, sample_rate=32000, n_fft=1024, win_length=800,
                                hop_length=320, n_mels=128, f_max=15500.0,
                                window="hann_symmetric", mel_scale="kaldi", log="ln",
                                log_eps=1e-5, shift=4.5, divisor=5.0)
        frames = expected.shape[1]
        assert int(frontend.frames(length)) == frames
        assert np.abs(out[item, :, :frames].double().numpy() - expected).max() <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_torchaudio_preset_matches_melspectrogram_defaults(backend):
    require(backend)
    with pytest.warns(UserWarning, match="all zero values"):
        frontend = kdcore.LogMel.from_preset("torchaudio", backend=backend)
    x = torch.randn(16000) * 0.2
    out = frontend(x)
    expected, _ = log_mel64(x.double().numpy(), n_fft=400, hop_length=200, n_mels=128,
                            log=None)
    assert out.shape == expected.shape == (128, 81)
    assert rel_l2(out.double().numpy(), expected) <= 1e-5


def test_torchaudio_preset_matches_torchaudio():
    torchaudio = _torchaudio()
    x = torch.randn(2, 16000) * 0.2
    expected = torchaudio.transforms.MelSpectrogram()(x)
    got = kdcore.LogMel.from_preset("torchaudio")(x)
    assert float((got - expected).norm() / expected.norm()) <= 1e-5


def test_preset_overrides_and_errors():
    frontend = kdcore.LogMel.from_preset("whisper", n_mels=128, backend="reference")
    assert frontend.config.n_mels == 128 and frontend.filterbank.shape == (201, 128)
    with pytest.raises(TypeError, match="unknown arguments"):
        kdcore.LogMel(hop=3)
    with pytest.raises(ValueError, match="backend"):
        kdcore.LogMel(backend="gpu")
    with pytest.raises(ValueError, match="floor_below_max"):
        kdcore.LogMel(log=None, floor_below_max=80.0)


def test_whisper_floor_is_differentiable_and_matches_inference():
    require("cpp")
    frontend = kdcore.LogMel.from_preset("whisper", backend="cpp")
    x, lengths = _clips([8000, 5000])
    with torch.no_grad():
        expected = frontend(x, lengths=lengths)
    leaf = x.clone().requires_grad_(True)
    out = frontend(leaf, lengths=lengths)
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)
    out.backward(torch.randn_like(out))
    assert leaf.grad[1, 5000:].abs().max() == 0  # samples past an item's end get no gradient
    assert leaf.grad[1, :5000].abs().max() > 0
