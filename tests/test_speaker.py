"""kdcore.speaker: the speaker student, cosine-regression KD through the engine, the EER
pipeline (against scikit-learn's ROC and brute-force trial pairs) and the FSDD clip loader."""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
import torch

from kdcore import speaker as sp
from kdcore.teachers.resemblyzer import ResemblyzerMels, SpeakerEncoder
from tests.teacher_helpers import FSDD, require


def _toy_teacher() -> sp.ResemblyzerTeacher:
    """The resemblyzer architecture with random weights (no package needed)."""
    torch.manual_seed(5)
    bundle = types.SimpleNamespace(
        output=types.SimpleNamespace(kind="embedding", size=256), spec=types.SimpleNamespace(
            name="toy"), fingerprint="toy-teacher", frontend=ResemblyzerMels(),
        model=SpeakerEncoder().eval())
    return sp.ResemblyzerTeacher(bundle)


def _cosine_loss(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().numpy(), b.double().numpy()
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(1.0 - cos))


def test_student_is_at_most_a_fifth_and_outputs_unit_norm_256():
    student = sp.SpeakerStudentTDNN()
    teacher_params = sum(p.numel() for p in SpeakerEncoder().parameters())
    assert teacher_params == 1_423_616
    assert 5 * sum(p.numel() for p in student.parameters()) <= teacher_params
    out = student.eval()(torch.randn(3, 12_345))  # odd length
    assert out.shape == (3, 256) and out.dtype == torch.float32
    np.testing.assert_allclose(np.linalg.norm(out.detach().double().numpy(), axis=1), 1.0,
                               atol=1e-6)
    with pytest.raises(ValueError, match="waveform"):
        student(torch.randn(16000))
    # LSTM MACs by hand: 160 steps x (4*256*(40+256) + 2 * 4*256*512) + linear 256*256
    assert sp.speaker_macs(SpeakerEncoder(), torch.zeros(1, 160, 40)) == (
        160 * (4 * 256 * 296 + 2 * 4 * 256 * 512) + 256 * 256)


def test_one_distillation_step_lowers_the_cosine_loss(tmp_path):
    teacher = _toy_teacher()
    torch.manual_seed(0)
    clips = [0.1 * torch.randn(n) for n in (9000, 16000, 12000, 7000, 15000, 11000)]
    dataset = sp.SpeakerClips(sp.load_clips(clips, clip_samples=None), copies=0)
    waveforms = torch.stack([dataset[i]["waveform"] for i in range(len(dataset))])
    with torch.no_grad():
        targets = teacher(waveforms)
    torch.manual_seed(1)
    student = sp.SpeakerStudentTDNN().train()
    with torch.no_grad():
        before = _cosine_loss(student(waveforms), targets)
    student, history = sp.distill_speaker(teacher, dataset, tmp_path, student=student,
                                          epochs=1, batch_size=len(dataset), lr=1e-2,
                                          schedule="constant", seed=0)
    assert float(history.metric("train_loss")[0]) == pytest.approx(before, rel=1e-4)
    loaded, meta = sp.load_speaker_model(tmp_path / "student.pt")
    assert meta["teacher"] == "toy"
    torch.testing.assert_close(loaded(waveforms), student.eval()(waveforms))
    student.train()  # batch statistics, as in the step
    with torch.no_grad():
        after = _cosine_loss(student(waveforms), targets)
    assert after < before


def test_prefilled_teacher_embeddings_are_the_targets(tmp_path):
    teacher = _toy_teacher()
    torch.manual_seed(2)
    dataset = sp.SpeakerClips([0.05 * torch.randn(8000) for _ in range(4)], copies=1)
    rows = torch.nn.functional.normalize(torch.randn(len(dataset), 256), dim=-1)
    waveforms = torch.stack([dataset[i]["waveform"] for i in range(len(dataset))])
    student = sp.SpeakerStudentTDNN().train()
    with torch.no_grad():
        expected = _cosine_loss(student(waveforms), rows)
    _, history = sp.distill_speaker(teacher, dataset, tmp_path, student=student, epochs=1,
                                    batch_size=len(dataset), teacher_embeddings=rows,
                                    schedule="constant")
    assert float(history.metric("train_loss")[0]) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="teacher_embeddings"):
        sp.distill_speaker(teacher, dataset, tmp_path / "b", teacher_embeddings=rows[:3])


def test_augmented_copies_depend_on_the_clip_not_its_position():
    clips = [0.1 * torch.randn(6000), 0.1 * torch.randn(9000)]
    a = sp.SpeakerClips(clips, copies=2, seed=3)
    b = sp.SpeakerClips(clips[::-1], copies=2, seed=3)
    assert len(a) == 6
    torch.testing.assert_close(a[2]["waveform"], b[3]["waveform"])  # copy 1 of clip 0
    torch.testing.assert_close(a[5]["waveform"], b[4]["waveform"])  # copy 2 of clip 1
    assert not torch.equal(a[2]["waveform"], a[4]["waveform"])
    assert a[0]["waveform"].shape == (sp.CLIP_SAMPLES,)


def test_pipeline_eer_matches_sklearn_roc_on_toy_speakers():
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    speakers = [f"s{k}" for k in range(4) for _ in range(9)]
    embeddings = np.repeat(centres, 9, axis=0) + 1.2 * rng.normal(size=(36, 16))
    result = sp.verification_eer(embeddings, speakers)
    # independent trials: every pair i < j, cosine in float64 by a plain loop
    scores, same = [], []
    for i in range(36):
        for j in range(i + 1, 36):
            u, v = embeddings[i], embeddings[j]
            scores.append(u @ v / np.sqrt((u @ u) * (v @ v)))
            same.append(speakers[i] == speakers[j])
    assert result["trials"] == len(scores) == 630 and result["target_trials"] == sum(same)
    far, tpr, _ = roc_curve(same, scores)
    frr = 1.0 - tpr
    k = int(np.argmax(far >= frr))
    step = 1.0 / min(sum(same), len(same) - sum(same))
    assert min(far[k], frr[k - 1]) - 1e-12 <= result["eer"] <= max(far[k], frr[k - 1]) + step
    assert 0.05 < result["eer"] < 0.45
    perfect = sp.verification_eer(np.repeat(np.eye(3), 4, axis=0), [0] * 4 + [1] * 4 + [2] * 4)
    assert perfect["eer"] == 0.0


def test_fsdd_clips_and_teacher_on_held_out_speakers():
    manifest = os.path.join(FSDD, "manifest.csv")
    if not os.path.isfile(manifest):
        pytest.skip(f"FSDD not found at {FSDD}")
    require("resemblyzer")
    import soundfile

    paths, speakers = sp.read_speaker_manifest(manifest, split="test",
                                               speakers=["theo", "yweweler"])
    assert set(speakers) == {"theo", "yweweler"} and len(paths) == 100
    keep = [i for name in ("theo", "yweweler")
            for i in [k for k, s in enumerate(speakers) if s == name][::10]]
    paths, speakers = [paths[i] for i in keep], [speakers[i] for i in keep]
    clips = sp.load_clips(paths)
    for path, clip in zip(paths, clips, strict=True):
        audio, rate = soundfile.read(path, dtype="float64")
        valid = min(len(audio) * 16000 // rate, sp.CLIP_SAMPLES)
        assert clip.shape == (sp.CLIP_SAMPLES,) and not clip[valid + 1:].any()
        rms = np.sqrt(np.mean(clip[:valid].double().numpy() ** 2))
        assert 20 * np.log10(rms) == pytest.approx(-30.0, abs=0.5)  # edge samples aside
    report = sp.evaluate_speaker(sp.ResemblyzerTeacher(), clips, speakers)
    assert 0.0 <= report["eer"] <= 1.0 and report["trials"] == 45
    with pytest.raises(ValueError, match="speaker"):
        sp.read_speaker_manifest(manifest, speakers=["nobody"])


def test_cli_eval_reports_eer_and_mean_cosine_for_a_speaker_student(tmp_path, capsys):
    manifest = os.path.join(FSDD, "manifest.csv")
    if not os.path.isfile(manifest):
        pytest.skip(f"FSDD not found at {FSDD}")
    require("resemblyzer")
    import csv
    import json

    from kdcore import cli

    with open(manifest, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    chosen = [r for name in ("george", "lucas") for r in rows if r["speaker"] == name][:3]
    chosen += [r for r in rows if r["speaker"] == "lucas"][:3]
    small = tmp_path / "speakers.csv"
    with open(small, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "speaker", "split"])
        writer.writeheader()
        for row in chosen:
            writer.writerow({"path": os.path.abspath(os.path.join(FSDD, row["path"])),
                             "speaker": row["speaker"], "split": "test"})
    torch.manual_seed(0)
    model = sp.save_speaker_student(tmp_path / "student.pt", sp.SpeakerStudentTDNN().eval(),
                                    teacher="resemblyzer")
    assert cli.main(["eval", "--model", str(model), "--data", str(small),
                     "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "student: EER" in printed and "mean cosine" in printed
    report = json.loads((tmp_path / "eval" / "speaker_report.json").read_text())
    assert report["speakers"] == ["george", "lucas"] and report["student"]["trials"] == 15
    clips = sp.load_clips([os.path.join(FSDD, r["path"]) for r in chosen])
    teacher = sp.embed(sp.ResemblyzerTeacher(), clips)
    student = sp.embed(sp.load_speaker_model(model)[0], clips)
    cos = np.sum(teacher * student, 1) / (np.linalg.norm(teacher, axis=1)
                                          * np.linalg.norm(student, axis=1))
    assert report["student"]["mean_cosine"] == pytest.approx(float(cos.mean()), abs=1e-6)


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_in_a_speaker_file_never_runs(tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save({"kind": sp.STUDENT_FILE_KIND, "x": _Payload(marker)}, evil)
    assert not sp.is_speaker_model(evil)
    with pytest.raises(ValueError, match="evil.pt"):
        sp.load_speaker_model(evil)
    assert not marker.exists()


def test_read_speaker_manifest_strips_spaces_filters_and_names_the_file(tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        (tmp_path / name).write_bytes(b"")  # only existence is checked here
    manifest = tmp_path / "speakers.csv"
    manifest.write_text("path , speaker, split\n a.wav , ann , test\nb.wav,bob,train\n"
                        "c.wav, bob ,test\n", encoding="utf-8")
    paths, speakers = sp.read_speaker_manifest(manifest, split="test")
    assert [p.name for p in paths] == ["a.wav", "c.wav"] and speakers == ["ann", "bob"]
    paths, speakers = sp.read_speaker_manifest(manifest, speakers=["bob"])
    assert [p.name for p in paths] == ["b.wav", "c.wav"] and speakers == ["bob", "bob"]
    with pytest.raises(ValueError, match="speakers.csv.*'nobody'|'nobody'.*not found"):
        sp.read_speaker_manifest(manifest, speakers=["bob", "nobody"])
    (tmp_path / "c.wav").unlink()
    with pytest.raises(FileNotFoundError, match="line 4.*c.wav"):
        sp.read_speaker_manifest(manifest)
    no_speaker = tmp_path / "no_speaker.csv"
    no_speaker.write_text("path,label\na.wav,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no_speaker.csv.*'speaker'"):
        sp.read_speaker_manifest(no_speaker)
