"""Connected-digit CTC: the ``ctc_conv`` model family, batching, training/distillation steps
and greedy WER/CER decoding."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from kdcore import Distiller, Trainer
from kdcore.asr import (
    CTCCollate,
    TranscriptManifest,
    ctc_text_metrics,
    digits_frontend,
    evaluate_ctc,
    transcribe,
)
from kdcore.data import ConnectedDigits, write_connected_digits
from kdcore.models import CTCConvNet, create

from .conftest import SHARED

RATE = 8000


def _digit_clips():
    """Two speakers x ten digits of tone clips (each digit its own pitch), 0.12 s each."""
    t = np.arange(int(0.12 * RATE)) / RATE
    clips = []
    for speaker, scale in (("a", 1.0), ("b", 1.1)):
        for digit in range(10):
            wave = 0.5 * np.sin(2 * np.pi * (200 + 150 * digit) * scale * t)
            clips.append({"waveform": torch.tensor(wave, dtype=torch.float32),
                          "label": digit, "speaker": speaker})
    return clips


def _setup(width=8, n=6, seed=0):
    data = ConnectedDigits(_digit_clips(), n, digits=(2, 4), gap_s=(0.02, 0.05),
                           edge_s=(0.0, 0.02), seed=seed)
    frontend = digits_frontend(RATE, n_mels=16, backend="reference")
    model = CTCConvNet(11, n_mels=16, width=width, depth=1, stride=2, dropout=0.0)
    collate = CTCCollate(lambda s: model.output_frames(frontend.frames(s)))
    return data, frontend, model, collate


# ------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("frames,stride", [(1, 2), (37, 2), (50, 4), (23, 3)])
def test_output_shape_frames_and_log_probs(frames, stride):
    model = CTCConvNet(11, n_mels=12, width=6, depth=2, stride=stride).double().eval()
    out = model(torch.randn(3, 12, frames, dtype=torch.float64))
    assert out.shape == (3, math.ceil(frames / stride), 11)
    assert int(model.output_frames(frames)) == math.ceil(frames / stride)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3, out.shape[1], dtype=torch.float64))


def test_gru_variant_shape_and_registry_sizes():
    model = create("ctc_conv", 11, n_mels=12, width=10, gru=True, stride=2)
    assert model(torch.randn(2, 12, 9)).shape == (2, 5, 11)
    teacher = create("ctc_conv", 11, width=160, stride=4)
    student = create("ctc_conv", 11, width=40, stride=4)
    assert type(teacher) is type(student) and student.num_parameters() * 10 <= \
        teacher.num_parameters()
    with pytest.raises(ValueError, match="kernel"):
        CTCConvNet(11, kernel=4)


@pytest.mark.parametrize("stride,depth,kernel", [(2, 2, 5), (3, 1, 3), (1, 3, 3)])
def test_receptive_field_by_perturbation_in_float64(stride, depth, kernel):
    """Output frame t changes when input frame j changes iff |stride*t - j| <= radius."""
    torch.manual_seed(1)
    model = CTCConvNet(5, n_mels=4, width=6, depth=depth, kernel=kernel, stride=stride)
    for module in model.modules():  # non-trivial running statistics for eval mode
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model = model.double().eval()
    frames = 61
    x = torch.randn(1, 4, frames, dtype=torch.float64)
    base = model(x)[0]
    radius = model.receptive_radius()
    assert radius == kernel // 2 * (1 + depth * stride)
    for j in (0, 17, 30, frames - 1):
        y = x.clone()
        y[0, :, j] += 3.0
        changed = (model(y)[0] - base).abs().amax(-1) > 1e-12
        t = torch.arange(base.shape[0])
        expected = (stride * t - j).abs() <= radius
        assert torch.equal(changed, expected), (j, changed.nonzero().flatten().tolist())


# ---------------------------------------------------------------------------------- batching
def test_collate_pads_offsets_and_lengths_match_unpadded_outputs():
    data, frontend, model, collate = _setup()
    items = [data[i] for i in range(4)]
    batch = collate(items)
    assert batch["waveform"].shape == (4, max(it["waveform"].numel() for it in items))
    for b, item in enumerate(items):
        n = item["targets"].numel()
        assert batch["target_lengths"][b] == n
        assert batch["label"][b, :n].tolist() == (item["targets"] + 1).tolist()
        assert (batch["label"][b, n:] == -1).all()
        alone = model.eval()(frontend(item["waveform"][None]))  # unpadded: its own frames
        assert int(batch["lengths"][b]) == alone.shape[1]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="waveform"):
        collate([{"targets": torch.tensor([1])}])


def test_transcript_manifest_reads_written_utterances_back(tmp_path):
    data, _, _, _ = _setup(n=3)
    manifest = write_connected_digits(data, tmp_path, subtype="FLOAT", split="test")
    back = TranscriptManifest(manifest, split="test")
    assert len(back) == 3
    for i in range(3):
        item, again = data[i], back[i]
        assert again["transcript"] == item["transcript"] and again["speaker"] == item["speaker"]
        assert torch.equal(again["targets"], item["targets"])
        torch.testing.assert_close(again["waveform"], item["waveform"])
    (tmp_path / "bad.csv").write_text("path,transcript\nutt_000000.wav,1 x\n")
    with pytest.raises(ValueError, match="bad.csv: row 2"):
        TranscriptManifest(tmp_path / "bad.csv")


# ---------------------------------------------------------------------------------- training
def test_trainer_ctc_step_and_loss_decreases_on_a_fixed_batch():
    data, frontend, model, collate = _setup(width=16)
    batch = collate([data[i] for i in range(4)])
    trainer = Trainer(model, task="ctc", frontend=frontend, progress=False, device="cpu",
                      lr=1e-2, schedule="constant", precision="fp32",
                      metrics=ctc_text_metrics())
    before = trainer.evaluate([batch])
    trainer.fit([batch] * 8, epochs=1)
    after = trainer.evaluate([batch])
    assert math.isfinite(before["ctc_loss"]) and {"wer", "cer", "ter"} <= set(after)
    assert after["ctc_loss"] < 0.9 * before["ctc_loss"]


def test_distiller_ctc_step_frame_kd_plus_ctc():
    data, frontend, teacher, collate = _setup(width=12)
    student = CTCConvNet(11, n_mels=16, width=4, depth=1, stride=2)
    batch = collate([data[i] for i in range(3)])
    distiller = Distiller(teacher, student, frontend=frontend, task="ctc", progress=False,
                          device="cpu", precision="fp32")
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = [p.detach().clone() for p in student.parameters()]
    history = distiller.fit([batch, batch], epochs=1)
    result = distiller.evaluate([batch])
    assert result["kd_loss"] > 0 and result["ctc_loss"] > 0 and len(history.epochs) == 1
    for key, value in teacher.state_dict().items():  # frozen teacher
        assert torch.equal(value, teacher_before[key]), key
    assert any(not torch.equal(p, q)
               for p, q in zip(student.parameters(), student_before, strict=True))


# ---------------------------------------------------------------------------------- decoding
class _Fixed(nn.Module):
    """Returns a fixed (B, T, C) log-prob tensor whatever the input."""

    def __init__(self, log_probs):
        super().__init__()
        self.register_buffer("log_probs", log_probs)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.log_probs


def _hand_log_probs(paths, classes=11):
    out = torch.full((len(paths), max(map(len, paths)), classes), math.log(0.01))
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            out[b, t, c] = math.log(0.9)
    return torch.log_softmax(out, -1)


def test_greedy_decoding_of_a_hand_made_matrix_gives_the_transcript():
    # classes: 0 blank, digit d is d + 1. Item 0: "2 2 0" (blank between the repeats; the
    # last frames lie beyond its length); item 1: "9" then "4 4" merged into one 4.
    paths = [[0, 3, 3, 0, 3, 1, 1, 0, 7, 7], [10, 10, 0, 5, 5, 5, 0, 0, 0, 0]]
    batch = {"waveform": torch.zeros(2, 5), "lengths": torch.tensor([8, 10]),
             "label": torch.tensor([[3, 3, 1, 6], [10, 5, -1, -1]])}
    model = _Fixed(_hand_log_probs(paths))
    refs, hyps = transcribe(model, [batch])
    assert refs == ["2 2 0 5", "9 4"] and hyps == ["2 2 0", "9 4"]
    scores = evaluate_ctc(model, [batch])
    # one deleted word of 6; two deleted characters (" 5") of 7 + 3
    assert scores["wer"] == pytest.approx(1 / 6) and scores["cer"] == pytest.approx(2 / 10)
    metrics = ctc_text_metrics()
    assert metrics["wer"]([[3, 3, 1, 6]], [[3, 3, 1]]) == pytest.approx(0.25)


# ---------------------------------------------------------------------------------- real data
FSDD = os.path.join(SHARED, "data", "fsdd", "manifest.csv")


@pytest.mark.skipif(not os.path.isfile(FSDD), reason="FSDD manifest not present")
def test_real_fsdd_connected_digits_one_training_step():
    data = ConnectedDigits(FSDD, 3, digits=(2, 3), speakers=["george"], seed=3)
    frontend = digits_frontend(data.sample_rate, backend="reference")
    model = create("ctc_conv", 11, width=8, depth=1)
    collate = CTCCollate(lambda s: model.output_frames(frontend.frames(s)))
    batch = collate([data[i] for i in range(3)])
    trainer = Trainer(model, task="ctc", frontend=frontend, progress=False, device="cpu",
                      precision="fp32")
    trainer.fit([batch], epochs=1)
    assert math.isfinite(trainer.evaluate([batch])["ctc_loss"])


def test_model_checkpoint_round_trip(tmp_path):
    from kdcore.checkpoints import load_model_checkpoint, save_model_checkpoint

    model = create("ctc_conv", 11, n_mels=12, width=6, depth=1, stride=3, gru=True).eval()
    path = save_model_checkpoint(tmp_path / "m.pt", model, class_names=["<blank>", *"0123456789"],
                                 frontend={}, clip_samples=8000)
    loaded = load_model_checkpoint(path)
    x = torch.randn(2, 12, 20)
    assert loaded.model.config() == model.config()
    torch.testing.assert_close(loaded.model(x), model(x))
