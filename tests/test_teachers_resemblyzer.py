"""Resemblyzer teacher: parity with the resemblyzer package's own ``VoiceEncoder`` on the same
audio (it imports webrtcvad and librosa, so those tests skip where either is absent), and a
float64 NumPy re-derivation of the LSTM from the state dict (needs only the weights file)."""

from __future__ import annotations

import importlib
import importlib.util
import warnings

import numpy as np
import pytest
import torch

from tests import teacher_helpers

resemblyzer = pytest.importorskip("kdcore.teachers.resemblyzer")

HAVE_WEIGHTS = importlib.util.find_spec("resemblyzer") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="needs resemblyzer (pip install --no-deps resemblyzer==0.1.4)")


def _package():
    """The importable resemblyzer package, or a skip naming what is missing."""
    for name in ("resemblyzer", "webrtcvad", "librosa"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (resemblyzer's own imports need resemblyzer, "
                        "webrtcvad-wheels and librosa)")
    with warnings.catch_warnings():  # its scipy.ndimage.morphology import is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module("resemblyzer")


@pytest.fixture(scope="module")
def package_encoder():
    return _package().VoiceEncoder("cpu", verbose=False)


@pytest.fixture(scope="module")
def teacher():
    if not HAVE_WEIGHTS:
        pytest.skip("resemblyzer is not installed")
    return resemblyzer.load_model(), resemblyzer.ResemblyzerMels()


def fsdd_clips(count: int) -> list[np.ndarray]:
    """``count`` FSDD clips (one per speaker) at 16 kHz, float32."""
    return [clip.astype(np.float32) for clip in teacher_helpers.fsdd_clips(count)]


def generated(samples: int, seed: int) -> np.ndarray:
    """A vibrato harmonic tone, a silent gap and white noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    phase = 2 * np.pi * (140 * t + 3 * np.sin(2 * np.pi * 5 * t))
    tone = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))
    tone[samples // 4: samples // 3] = 0.0
    return (tone + 0.02 * rng.standard_normal(samples)).astype(np.float32)


def test_partial_starts_match_the_package():
    encoder_class = _package().VoiceEncoder
    lengths = [1, 159, 160, 8000, 25599, 25600, 25601, 38000, 40000, 52000, 90001]
    for rate, coverage in ((1.3, 0.75), (0.7, 0.5), (2.0, 1.0)):
        for samples in lengths:
            _, mel_slices = encoder_class.compute_partial_slices(samples, rate, coverage)
            assert resemblyzer.partial_starts(samples, rate, coverage) == \
                [s.start for s in mel_slices], (samples, rate, coverage)
    with pytest.raises(ValueError, match="rate"):
        resemblyzer.partial_starts(16000, rate=0.5)
    with pytest.raises(ValueError, match="min_coverage"):
        resemblyzer.partial_starts(16000, min_coverage=0.0)


def test_mel_matches_the_package():
    audio = _package().audio
    frontend = resemblyzer.ResemblyzerMels()
    for signal in (*fsdd_clips(2), generated(16000 + 77, 1)):
        expected = audio.wav_to_mel_spectrogram(signal)
        got = frontend.mel(torch.from_numpy(signal))[0].numpy()
        assert got.shape == expected.shape == (1 + len(signal) // 160, 40)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max())


def check_embedding(encoder, teacher, signal: np.ndarray) -> None:
    model, frontend = teacher
    embed, partials, wav_slices = encoder.embed_utterance(signal, return_partials=True)
    mels = frontend(torch.from_numpy(signal))
    assert mels.shape == (1, len(wav_slices), 160, 40)
    with torch.no_grad():
        got_partials = model.embed_partials(mels)[0].numpy()
        got = model(mels)[0].numpy()
    # Unit-norm embeddings: an absolute bound of 1e-5 is 1e-5 relative to their norm.
    np.testing.assert_allclose(got_partials, partials, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, embed, rtol=0, atol=1e-5)
    assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-6) and got.min() >= 0


def test_embedding_parity_fsdd(package_encoder, teacher):
    for signal in fsdd_clips(3):
        check_embedding(package_encoder, teacher, signal)


def test_embedding_parity_generated_several_partials(package_encoder, teacher):
    # 2.9 s: partials start at frames 0, 77, 154 (the last one zero-padded, coverage >= 0.75).
    signal = generated(46400, 2)
    assert resemblyzer.partial_starts(len(signal)) == [0, 77, 154]
    check_embedding(package_encoder, teacher, signal)


def test_batch_equals_single_items(teacher):
    model, frontend = teacher
    signals = torch.from_numpy(np.stack([generated(30000, 3), generated(30000, 4)]))
    with torch.no_grad():
        batch = model(frontend(signals))
        single = torch.cat([model(frontend(s)) for s in signals])
    assert batch.shape == (2, 256)
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-6)


def _lstm64(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Final hidden state of the last layer of a stacked LSTM, float64, from the equations
    (gates in the documented row order input, forget, cell, output)."""
    layer = 0
    while f"lstm.weight_ih_l{layer}" in state:
        w_ih, w_hh = state[f"lstm.weight_ih_l{layer}"], state[f"lstm.weight_hh_l{layer}"]
        bias = state[f"lstm.bias_ih_l{layer}"] + state[f"lstm.bias_hh_l{layer}"]
        hidden = w_hh.shape[1]
        h, c, outputs = np.zeros(hidden), np.zeros(hidden), []
        for frame in x:
            gates = w_ih @ frame + w_hh @ h + bias
            i, f, g, o = np.split(gates, 4)
            sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            outputs.append(h)
        x, layer = np.stack(outputs), layer + 1
    return h


@needs_weights
def test_state_dict_against_float64_equations(teacher):
    model, _ = teacher
    checkpoint = torch.load(resemblyzer.weights_path(), map_location="cpu", weights_only=True)
    state = {k: v.double().numpy() for k, v in checkpoint["model_state"].items()}
    assert sum(model.state_dict()[k].numel() for k in model.state_dict()) == \
        model.num_parameters()
    # 3 LSTM layers of 4*256 gates (inputs 40, then 256; recurrent 256; two biases), Linear.
    lstm = 4 * 256 * (40 + 256 + 2) + 2 * 4 * 256 * (256 + 256 + 2)
    assert model.num_parameters() == lstm + 256 * 256 + 256 == 1_423_616
    mels = np.random.default_rng(5).gamma(0.5, 0.2, size=(2, 24, 40))
    for item in mels:
        raw = np.maximum(state["linear.weight"] @ _lstm64(state, item) + state["linear.bias"], 0)
        expected = raw / np.linalg.norm(raw)
        with torch.no_grad():
            got = model.embed_partials(torch.from_numpy(item).float()[None])[0].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_student_shapes_and_size():
    student = resemblyzer.SpeakerStudent().eval()
    assert student.num_parameters() * 5 <= 1_423_616
    with torch.no_grad():
        out = student(torch.rand(3, 2, 160, 40))
    assert out.shape == (3, 256)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_bad_inputs_name_the_argument():
    frontend = resemblyzer.ResemblyzerMels()
    with pytest.raises(ValueError, match="waveform"):
        frontend(torch.zeros(1, 1, 100))
    with pytest.raises(ValueError, match="mels"):
        resemblyzer.SpeakerEncoder()(torch.zeros(2, 160, 39))
    with pytest.raises(ValueError, match="samples"):
        resemblyzer.partial_starts(0)


@needs_weights
def test_registry_bundle():
    registry = importlib.import_module("kdcore.teachers")
    if not hasattr(registry, "load"):
        pytest.skip("the teacher registry (kdcore.teachers.load) is not on this branch")
    teacher = registry.load("resemblyzer")
    assert teacher.task == "embedding" and teacher.sample_rate == 16000
    assert teacher.output.size == 256 and teacher.num_parameters == 1_423_616
    assert teacher.student.build().num_parameters() * 5 <= teacher.num_parameters
    signal = torch.from_numpy(generated(20000, 6))[None]
    embedding = teacher(signal)
    assert embedding.shape == (1, 256)
    partials = teacher.extras["embed_partials"](teacher.frontend(signal))
    assert partials.shape == (1, 1, 256)
    torch.testing.assert_close(embedding, partials[:, 0], rtol=0, atol=1e-6)
