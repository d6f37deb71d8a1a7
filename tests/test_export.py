"""``kdcore.export_model``: exported TorchScript and ONNX files agree with the eager model at
any clip length, for plain and preset frontends (pre-emphasis, floor, dropped frame)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kdcore.checkpoints import save_model_checkpoint
from kdcore.export import export_model, run_exported
from kdcore.frontend import LogMel
from kdcore.models import create

RATE = 8000
CLIP = 4000
SMALL = dict(sample_rate=RATE, n_fft=256, win_length=200, hop_length=80, n_mels=16)
FRONTENDS = {
    "plain": dict(SMALL, pad_mode="reflect", log="ln"),
    "constant_odd_fft": dict(SMALL, n_fft=255, pad_mode="constant", log="db"),
    "whisper": dict(SMALL, mel_scale="slaney", norm="slaney", log="log10_clamp", log_eps=1e-10,
                    shift=4.0, divisor=4.0, floor_below_max=8.0, drop_last_frame=True),
    "kaldi": dict(SMALL, window="povey", center=False, mel_scale="kaldi", f_min=20.0,
                  log="ln_clamp", log_eps=1.1920928955078125e-07, preemphasis=0.97,
                  remove_dc_offset=True),
    "passt": dict(SMALL, window="hann_symmetric", mel_scale="kaldi", log="ln", log_eps=1e-5,
                  shift=4.5, divisor=5.0, waveform_preemphasis=0.97),
}


def _checkpoint(tmp_path, frontend: dict, model_name: str = "student_dscnn", **model_args):
    torch.manual_seed(0)
    model = create(model_name, 3, n_mels=16, **model_args).eval()
    path = tmp_path / "model.pt"
    save_model_checkpoint(path, model, class_names=["a", "b", "c"], frontend=frontend,
                          clip_samples=CLIP)
    return path, model


def _formats():
    formats = ["torchscript"]
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        formats.append("onnx")
    return formats


@pytest.mark.parametrize("format", _formats())
@pytest.mark.parametrize("name", list(FRONTENDS))
def test_exported_model_matches_eager_at_any_length(tmp_path, name, format):
    path, model = _checkpoint(tmp_path, FRONTENDS[name])
    out = export_model(path, tmp_path / f"model.{format}", format=format)
    eager_frontend = LogMel(backend="reference", **FRONTENDS[name])
    generator = torch.Generator().manual_seed(3)
    for length in (CLIP, 2001, 5555, 9000):
        waveforms = 0.1 * torch.randn(3, length, generator=generator)
        got = run_exported(out, format, waveforms)
        with torch.no_grad():
            features = eager_frontend(waveforms)
            expected = model(features)
        assert got.shape == expected.shape == (3, 3)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("format", _formats())
@pytest.mark.parametrize("model_name, model_args", [("frame_conv", {}),
                                                    ("ctc_conv", {"gru": True})])
def test_exported_per_frame_model_matches_eager_at_any_length(tmp_path, model_name, model_args,
                                                              format):
    """Per-frame models (frame_conv, ctc_conv with its GRU) export too: (B, frames, C) scores
    whose frame count follows the clip length, equal to the eager model behind LogMel."""
    path, model = _checkpoint(tmp_path, FRONTENDS["plain"], model_name, **model_args)
    out = export_model(path, tmp_path / f"model.{format}", format=format)
    eager_frontend = LogMel(backend="reference", **FRONTENDS["plain"])
    generator = torch.Generator().manual_seed(4)
    frame_counts = set()
    for length in (CLIP, 2001, 9000):
        waveforms = 0.1 * torch.randn(2, length, generator=generator)
        got = run_exported(out, format, waveforms)
        with torch.no_grad():
            expected = model(eager_frontend(waveforms))
        assert got.shape == expected.shape and got.shape[0] == 2 and got.shape[2] == 3
        frame_counts.add(got.shape[1])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(frame_counts) == 3


def test_export_frontend_counts_frames_like_the_op():
    """Frame counts of the exported frontend follow T (the traced file used to keep the
    exported T's count), against the features of LogMel itself."""
    from kdcore.export import ExportLogMel

    for name in ("plain", "kaldi", "whisper"):
        frontend = LogMel(backend="reference", **FRONTENDS[name])
        exported = torch.jit.trace(ExportLogMel(frontend), torch.randn(1, CLIP))
        for length in (1001, CLIP, 7777):
            waves = torch.randn(2, length)
            expected = frontend(waves)
            got = exported(waves)
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-4)


def test_export_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_file"):
        export_model(tmp_path / "missing.pt", tmp_path / "out.ts")
    path, _ = _checkpoint(tmp_path, FRONTENDS["plain"])
    with pytest.raises(ValueError, match="format"):
        export_model(path, tmp_path / "out.x", format="tflite")
