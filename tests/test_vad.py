"""kdcore.vad: training windows, the teacher on padded batches, the distillation through the
engine (what its cache holds), evaluation and costs against independent re-derivations; and
``kdcore distill --teacher silero-vad`` / ``kdcore eval`` end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import vad

pytest.importorskip("silero_vad", reason="the VAD teacher needs silero-vad (kdcore[teachers])")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

ASSETS = Path(vad.__file__).resolve().parent / "assets" / "fsdd" / "recordings"


@pytest.fixture(scope="module")
def teacher():
    from kdcore import teachers

    return teachers.load("silero-vad")


def _clips(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(300, 9000, (count,), generator=generator).tolist()
    return [0.1 * torch.randn(n, generator=generator) for n in lengths]


def test_windows_cover_every_chunk_of_every_clip_once():
    clips = [torch.arange(n, dtype=torch.float32) for n in (700, 5 * 512, 20 * 512 + 3, 33)]
    data = vad.vad_windows(clips, window_s=8 * 512 / 16000, overlap_s=3 * 512 / 16000)
    assert data.waveforms.shape[1] == 8 * 512 and data.mask.shape[1] == 8
    covered = [np.zeros(-(-c.numel() // 512), dtype=int) for c in clips]
    for (clip, start), wave, mask in zip(data.origin, data.waveforms, data.mask, strict=True):
        source = clips[clip]
        piece = source[start:start + 8 * 512]
        assert torch.equal(wave[:piece.numel()], piece)  # the clip's samples, then zeros
        assert not wave[piece.numel():].any()
        first = start // 512
        for chunk in np.flatnonzero(mask.numpy()):
            covered[clip][first + chunk] += 1
        if start > 0:  # the overlap with the previous window is not a target again
            assert not mask[:3].any()
    for counts in covered:
        assert (counts == 1).all(), counts
    # starts every 5 chunks: the 20-chunk clip takes windows at 0, 5, 10, 15
    assert [s for c, s in data.origin if c == 2] == [0, 5 * 512, 10 * 512, 15 * 512]
    # short clips only: the window shrinks to the longest clip
    short = vad.vad_windows([torch.ones(700), torch.ones(1100)])
    assert short.waveforms.shape == (2, 3 * 512)
    with pytest.raises(ValueError, match="overlap_s"):
        vad.vad_windows(clips, window_s=1.0, overlap_s=1.0)
    assert len(data.fingerprint()) == 64


def test_teacher_on_padded_batches_equals_each_clip_streamed_alone(teacher):
    clips = _clips(5)
    batched = vad.teacher_probabilities(teacher, clips, batch_size=3)
    for clip, p in zip(clips, batched, strict=True):
        alone = teacher.extras["stream"](clip[None])[0]
        assert p.shape == (-(-clip.numel() // 512),)
        torch.testing.assert_close(p, alone, rtol=1e-5, atol=1e-6)


def test_student_macs_follow_the_layer_shapes(teacher):
    student = vad.VadStudent(n_mels=32, width=16, depth=2, kernel=5)
    audio = 0.1 * torch.randn(1, 16000)
    costs = vad.compare_costs(student, teacher, audio)
    frames = -(-16000 // 512)  # 32 chunks in one second
    expected = frames * (32 * 16 + 2 * (16 * 5 + 16 * 16) + 16 * 1)  # stem, blocks, head
    expected += (1 + 16000 // 512) * 513 * 32  # the mel projection of 32 centred frames
    assert costs["student"]["macs_per_second_of_audio"] == expected
    assert costs["student"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert costs["teacher"]["parameters"] == teacher.num_parameters
    assert costs["teacher"]["macs_per_second_of_audio"] > 20 * expected


def test_distill_vad_fills_the_cache_with_the_streamed_teacher_and_learns(tmp_path, teacher):
    files = sorted(ASSETS.glob("*_jackson_*.wav"))[:12]
    epochs = []
    student, history = vad.distill_vad(
        teacher, files, tmp_path / "run", window_s=0.64, overlap_s=0.128, epochs=3,
        batch_size=8, lr=1e-2, progress=False, device="cpu",
        on_epoch=lambda record: epochs.append(record["epoch"]) or {"seen": 1.0})
    assert epochs == [0, 1, 2] and history.metric("seen") == [1.0, 1.0, 1.0]
    assert history.last["train_loss"] < history.epochs[0]["train_loss"]
    # the cache holds logit(p) of Silero streamed over each window from a reset state
    from kdcore.eval.pitch import load_clips

    data = vad.vad_windows(load_clips(files), window_s=0.64, overlap_s=0.128)
    meta = json.loads((tmp_path / "run" / "teacher_cache" / "meta.json").read_text())
    stored = np.memmap(tmp_path / "run" / "teacher_cache" / "logits.f32", dtype=np.float32,
                       mode="r", shape=(meta["num_items"], 1, data.mask.shape[1], 1))
    p = teacher.extras["stream"](data.waveforms).double().clamp(1e-4, 1 - 1e-4)
    np.testing.assert_allclose(stored[:, 0, :, 0], torch.log(p / (1 - p)).numpy(), rtol=1e-4,
                               atol=1e-4)
    # the saved student reloads and predicts what the returned one does
    again = vad.load_vad_student(tmp_path / "run" / "student.pt")
    wave = data.waveforms[:2]
    torch.testing.assert_close(again(wave), student(wave))
    assert vad.is_vad_student(tmp_path / "run" / "student.pt")
    assert not vad.is_vad_student(tmp_path / "run" / "metrics.jsonl")
    with pytest.raises(ValueError, match="Silero-style"):
        vad.distill_vad(teacher.spec, files, tmp_path / "x")
    with pytest.raises(TypeError, match="VadStudent"):
        vad.distill_vad(teacher, files, tmp_path / "y", student=torch.nn.Linear(2, 2))


def _hand_scores(teacher_p: np.ndarray, student_p: np.ndarray) -> tuple[float, float]:
    t, s = teacher_p >= 0.5, student_p >= 0.5
    tp, fp, fn = np.sum(t & s), np.sum(~t & s), np.sum(t & ~s)
    return 2 * tp / (2 * tp + fp + fn), float(np.mean(t == s))


def test_cli_distill_and_eval_on_a_folder(tmp_path, capsys, teacher):
    from kdcore import cli
    from kdcore.data.audio import read_audio
    from kdcore.resample import Resample

    data = tmp_path / "audio"
    (data / "more").mkdir(parents=True)
    for path in sorted(ASSETS.glob("*_lucas_*.wav"))[:8]:
        (data / path.name).write_bytes(path.read_bytes())
    # one file at another rate, in a subfolder: read, resampled to 16 kHz
    import soundfile

    soundfile.write(data / "more" / "tone.wav", 0.3 * np.sin(np.arange(11025) * 0.2), 22050)
    command = ["distill", "--teacher", "silero-vad", "--data", str(data), "--epochs", "2",
               "--batch-size", "4", "--seed", "3", "--no-progress", "--model-arg", "width=16"]
    assert cli.main([*command, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "MMACs per second of audio" in printed
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    costs = report["costs"]
    assert costs["student"]["parameters"] * 5 <= costs["teacher"]["parameters"]
    assert costs["student"]["config"]["width"] == 16 and report["clips"] == 9

    # a run folder is refused, resumed or overwritten on purpose; --seed is bitwise on the CPU
    assert cli.main([*command, "--out", str(tmp_path / "a")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main([*command, "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert cli.main([*command, "--out", str(tmp_path / "b")]) == 0
    first = torch.load(tmp_path / "a" / "student.pt", weights_only=True)["state_dict"]
    second = torch.load(tmp_path / "b" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert cli.main([*command, "--out", str(tmp_path / "b"), "--overwrite", "--seed",
                     "4"]) == 0
    third = torch.load(tmp_path / "b" / "student.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(first[k], third[k]) for k in first)
    capsys.readouterr()

    # eval: frame F1 and agreement, re-derived clip by clip
    model = tmp_path / "a" / "student.pt"
    assert cli.main(["eval", "--model", str(model), "--data", str(data),
                     "--out", str(tmp_path / "eval")]) == 0
    assert "frame F1" in capsys.readouterr().out
    scores = json.loads((tmp_path / "eval" / "report.json").read_text())
    student = vad.load_vad_student(model)
    teacher_all, student_all = [], []
    for path in sorted(data.rglob("*.wav")):
        rate = soundfile.info(str(path)).samplerate
        wave = torch.from_numpy(read_audio(path))
        wave = Resample(rate, 16000)(wave) if rate != 16000 else wave
        teacher_all.append(teacher.extras["stream"](wave[None])[0].numpy())
        with torch.no_grad():
            student_all.append(torch.sigmoid(student(wave[None]))[0, :, 0].numpy())
    f1, agreement = _hand_scores(np.concatenate(teacher_all), np.concatenate(student_all))
    assert scores["student"]["f1"] == pytest.approx(f1, abs=1e-6)
    assert scores["student"]["agreement"] == pytest.approx(agreement, abs=1e-6)
    assert scores["frames"] == sum(len(p) for p in teacher_all)
