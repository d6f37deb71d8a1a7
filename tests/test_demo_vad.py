"""The VAD demo (``kdcore demo``) end to end on a tiny configuration, and its helpers against
independent references."""

import json
import struct

import numpy as np
import pytest
import torch

from kdcore.demo_vad import (
    HOP,
    RATE,
    VadDemoConfig,
    VadStudent,
    agreement_metrics,
    build_data,
    count_macs,
    run_vad_demo,
)

pytest.importorskip("silero_vad", reason="the demo's teacher needs silero-vad (kdcore[teachers])")
pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib")
# loading the teacher reads the package's TorchScript archive for its tensors
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TINY = VadDemoConfig(train_windows=40, test_windows=6, window_s=2.048, test_snrs_db=(5.0,),
                     width=24, depth=2, epochs=3, batch_size=8, lr=5e-3)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_agreement_metrics_match_hand_counts():
    teacher = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.7, 0.4, 0.5, 0.0])
    student = torch.tensor([0.6, 0.1, 0.2, 0.9, 0.8, 0.3, 0.49, 0.0])
    # teacher speech: 0,1,4,6; student speech: 0,3,4 -> TP 2 (0,4), FP 1 (3), FN 2 (1,6)
    result = agreement_metrics(teacher, student)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert result["agreement"] == pytest.approx(5 / 8)  # 0,2,4,5,7 alike
    assert result["speech_share"] == pytest.approx(4 / 8)
    nothing = torch.zeros(5)
    assert agreement_metrics(nothing, nothing)["f1"] == 1.0


def test_count_macs_of_a_linear_layer():
    layer = torch.nn.Linear(7, 5)
    assert count_macs(layer, torch.zeros(3, 7)) == 3 * 7 * 5


@pytest.mark.parametrize("samples", [HOP * 6, HOP * 6 + 1, HOP * 6 + 255, HOP * 6 + 300])
def test_student_frames_match_silero_chunks(samples):
    student = VadStudent(width=8, depth=1).eval()
    out = student(torch.randn(2, samples))
    assert out.shape == (2, -(-samples // HOP), 1)


def test_student_frame_is_centred_on_the_teacher_chunk():
    # a click in the middle of chunk 3 must peak the energy of the student's log-mel frame 3
    student = VadStudent(width=8, depth=1).eval()
    waveform = torch.zeros(1, HOP * 8)
    waveform[0, 3 * HOP + HOP // 2] = 1.0
    energy = student.frontend(waveform)[0].exp().sum(0)  # the frontend shifts by 256 itself
    assert energy.shape == (8,)
    assert int(energy.argmax()) == 3
    assert energy[3] > 1e3 * energy[[0, 1, 5, 6, 7]].max()


def test_build_data_holds_out_speakers_and_mixes_at_the_snr():
    data = build_data(TINY, seed=3)
    assert data["train"].shape == (40, round(2.048 * 8000) * 2)
    assert set(data["train_speakers"]).isdisjoint(data["test_speakers"])
    assert sorted(data["test_speakers"]) == ["nicolas", "theo"]
    clean, noisy = data["test"]["clean"].double(), data["test"]["5 dB"].double()
    snr = 10 * torch.log10(clean.square().mean(-1) / (noisy - clean).square().mean(-1))
    # mixed at 8 kHz, then resampled: the SNR holds up to the resampler's band edge
    np.testing.assert_allclose(snr.numpy(), 5.0, atol=0.3)
    again = build_data(TINY, seed=3)
    assert torch.equal(again["train"], data["train"])
    with pytest.raises(ValueError, match="test_speakers"):
        build_data(VadDemoConfig(test_speakers=("nobody",)), seed=0)


def test_tiny_demo_end_to_end(tmp_path, capsys):
    report = run_vad_demo(tmp_path / "run", quiet=True, seed=0, config=TINY)
    assert capsys.readouterr().out == ""  # quiet prints nothing
    out = tmp_path / "run"
    for name in ("student.pt", "report.json", "report.md", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0, name
    for name in ("vad_timeline.png", "training_curves.png"):
        width, height = _png_size(out / name)
        assert width > 300 and height > 200
        assert (out / name).stat().st_size > 10_000  # a drawn figure, not an empty canvas
    saved = json.loads((out / "report.json").read_text())
    assert saved["teacher"]["parameters"] == report["teacher"]["parameters"]
    assert "student F1" in (out / "report.md").read_text()
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["event"] == "epoch"] == [0, 1, 2]

    # the student is at least 10x smaller and cheaper than the teacher
    teacher_parameters = report["teacher"]["parameters"]
    assert teacher_parameters == 243_585
    assert report["student"]["parameters"] * 10 <= teacher_parameters
    assert report["student"]["macs_per_second_of_audio"] * 10 <= \
        report["teacher"]["macs_per_second_of_audio"]

    # agreement beats both trivial predictors on the held-out speakers (clean)
    clean = report["held_out"]["clean"]
    trivial = max(clean["all_speech"]["agreement"], clean["all_silence"]["agreement"])
    assert clean["student"]["agreement"] > trivial + 0.05
    assert clean["student"]["f1"] > clean["all_speech"]["f1"]

    # the saved student rebuilds and reproduces the reported probabilities' decisions
    state = torch.load(out / "student.pt", weights_only=True)
    rebuilt = VadStudent(**state["model_kwargs"]).eval()
    rebuilt.load_state_dict(state["state_dict"])
    assert state["frontend"]["sample_rate"] == RATE
    data = build_data(TINY, seed=0)
    with torch.no_grad():
        probabilities = torch.sigmoid(rebuilt(data["test"]["clean"]))[..., 0]
    from kdcore import teachers

    teacher_p = teachers.load("silero-vad").extras["stream"](data["test"]["clean"])
    assert agreement_metrics(teacher_p, probabilities)["agreement"] == pytest.approx(
        clean["student"]["agreement"])


def test_cli_demo_runs_the_vad_demo_by_default(monkeypatch, tmp_path):
    from kdcore import cli, demo_vad

    calls = []
    monkeypatch.setattr(demo_vad, "run_vad_demo",
                        lambda out, **kwargs: calls.append((out, kwargs)) or {})
    assert cli.main(["demo", "--quick", "--quiet", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert calls == [(str(tmp_path), {"quick": True, "quiet": True, "seed": 3,
                                      "progress": True})]
    calls.clear()
    assert cli.main(["demo"]) == 0
    assert calls == [("kdcore_demo", {"quick": False, "quiet": False, "seed": 0,
                                      "progress": True})]


def test_cli_demo_synthetic_kd_task_runs_the_old_demo(monkeypatch, tmp_path):
    from kdcore import cli, demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: calls.append(kwargs) or {})
    out = str(tmp_path / "synthetic")
    assert cli.main(["demo", "--task", "synthetic-kd", "--quick", "--seed", "5",
                     "--out", out]) == 0
    (kwargs,) = calls
    assert kwargs["out_dir"] == out and kwargs["progress"] is True
    assert kwargs["config"].seed == 5
    assert kwargs["config"].epochs == demo.QUICK.epochs


def test_cli_demo_missing_package_is_one_line(monkeypatch, capsys):
    from kdcore import cli, demo_vad

    def missing(out, **kwargs):
        raise ImportError("teacher 'silero-vad' needs the package silero-vad: pip install x")

    monkeypatch.setattr(demo_vad, "run_vad_demo", missing)
    assert cli.main(["demo", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("kdcore: error:") and "pip install" in error
    assert "\n" not in error


def test_out_must_be_a_folder(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="out must be a folder"):
        run_vad_demo(target, quiet=True, config=TINY)
    with pytest.raises(ValueError, match="seed"):
        run_vad_demo(tmp_path / "run", quiet=True, seed=-1, config=TINY)
