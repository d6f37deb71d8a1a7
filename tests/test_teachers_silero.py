"""Silero VAD teacher: parity with the package's own streaming inference
(``load_silero_vad()``, ``reset_states()``, ``model(chunk, 16000)`` per 512-sample chunk) on
FSDD speech and generated audio, batched windows each from a reset state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.teacher_helpers import assert_parity, fsdd_clips, require

require("silero_vad")

from kdcore import teachers  # noqa: E402
from kdcore.teachers import silero_vad as sv  # noqa: E402


@pytest.fixture(scope="module")
def vad():
    return teachers.load("silero-vad")


@pytest.fixture(scope="module")
def package_model():
    threads = torch.get_num_threads()
    import silero_vad  # sets torch's thread count to 1 on import

    model = silero_vad.load_silero_vad()
    torch.set_num_threads(threads)
    return model


def _package_stream(model, waveform: torch.Tensor) -> torch.Tensor:
    """The package's streaming loop over a batch: zero-pad to whole chunks, reset, feed."""
    chunks = max(1, math.ceil(waveform.shape[1] / 512))
    padded = torch.nn.functional.pad(waveform, (0, chunks * 512 - waveform.shape[1]))
    model.reset_states()
    with torch.no_grad():
        return torch.cat([model(padded[:, i: i + 512], 16000)
                          for i in range(0, padded.shape[1], 512)], 1)


def _generated(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Silence, a voiced-like harmonic burst with vibrato, then pink-ish noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) * (np.abs(t - 0.45) < 0.2)
    noise = np.cumsum(rng.standard_normal(t.shape)) * 1e-3 * (t > 0.7)
    return 0.3 * voiced + noise - (noise * (t > 0.7)).mean()


def test_registry_entry(vad):
    assert vad.name == "silero-vad" and vad.task == "frame_multilabel"
    assert vad.sample_rate == 16000 and vad.output.size == 1 and vad.output.hop == 512
    archive = torch.jit.load(sv.weights_path(), map_location="cpu")
    expected = sum(p.numel() for name, p in archive.named_parameters()
                   if name.startswith("_model."))
    assert vad.num_parameters == expected
    student = vad.student.build()
    assert sum(p.numel() for p in student.parameters()) <= vad.num_parameters // 5


def test_parity_with_package_on_fsdd(vad, package_model):
    for audio in fsdd_clips(3):
        waveform = torch.from_numpy(audio).float()[None]
        ours = vad(waveform)[..., 0]
        assert ours.shape == (1, math.ceil(len(audio) / 512))
        assert_parity(ours, _package_stream(package_model, waveform))


def test_parity_with_package_on_a_batch_of_generated_windows(vad, package_model):
    batch = torch.from_numpy(np.stack([_generated(seed=s) for s in range(3)])).float()
    batch[2, :5000] = 0.0  # one window starts in digital silence
    ours = vad(batch)[..., 0]
    assert_parity(ours, _package_stream(package_model, batch))
    # each window streams from its own reset state: alone == in the batch
    assert_parity(vad(batch[1:2])[..., 0], ours[1:2])


def test_tail_and_short_windows_match_package(vad, package_model):
    for length in (1, 511, 513, 1500):
        waveform = torch.from_numpy(_generated(seed=length)[:length]).float()[None]
        assert_parity(vad(waveform)[..., 0], _package_stream(package_model, waveform))


def test_stream_and_step_agree(vad):
    waveform = torch.from_numpy(_generated(0.3)).float()[None]
    streamed = vad.extras["stream"](waveform)
    windows = sv.SileroChunks()(waveform)
    state, steps = None, []
    with torch.no_grad():
        for n in range(windows.shape[1]):
            probability, state = vad.model.step(windows[:, n], state)
            steps.append(probability)
    # float32 convolutions round differently for 1 and N chunks: agreement to 1e-5
    torch.testing.assert_close(torch.cat(steps, 1), streamed, rtol=1e-4, atol=1e-5)


def test_speech_scores_above_silence(vad):
    speech = torch.from_numpy(fsdd_clips(1)[0]).float()[None]
    assert vad(speech).max().item() > 0.5
    assert vad(torch.zeros(1, 8000)).max().item() < 0.1


def test_bad_input_is_named(vad):
    with pytest.raises(ValueError, match="576"):
        vad.model(torch.zeros(1, 2, 512))
    with pytest.raises(ValueError, match="waveform"):
        sv.SileroChunks()(torch.zeros(1, 2, 3))
