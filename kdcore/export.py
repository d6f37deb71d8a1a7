"""Export a kdcore model checkpoint, frontend included, to TorchScript or ONNX.

The exported file maps waveforms (B, T) float32 at the checkpoint's sample rate to logits
(B, num_classes) float32, or (B, frames, num_classes) for the per-frame models
(``frame_conv``, ``ctc_conv``), for **any** clip length T (the batch size and T are dynamic in
the ONNX file too). It needs neither kdcore nor its custom ops: the frontend is the log-mel op's
reference written in ops that both formats carry:

- framing: the ``center`` padding (``torch.nn.functional.pad`` with the op's ``pad_mode``),
  then a strided identity convolution (exact: each output sample is one input sample times 1),
  so the frame count follows T as :func:`kdcore.num_frames` says;
- the DFT as two float64 matrix products with the window, DC removal and pre-emphasis folded
  in (:func:`kdcore.ops.log_mel.dft_basis`; ONNX has no ``rfft``), power, the float64 mel
  matrix and the op's log, shift and divisor;
- the :class:`kdcore.LogMel` extras: waveform pre-emphasis, the per-item floor below the
  maximum and the dropped last frame.

Limits: ``pad_mode="reflect"`` needs more than ``n_fft//2`` samples (as ``torch.stft``), and
the exported model sees whole clips (no per-item ``lengths``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.ops.log_mel import _apply_log, _tables, dft_basis

FORMATS = ("torchscript", "onnx")
_TORCH_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate",
                    "circular": "circular"}


class ExportLogMel(nn.Module):
    """A :class:`kdcore.LogMel` in plain torch ops (see the module doc): waveforms (B, T)
    float32 to log-mel (B, n_mels, frames) float32, for any T."""

    def __init__(self, log_mel: nn.Module) -> None:
        super().__init__()
        self.config = config = log_mel.config
        self.waveform_preemphasis = float(log_mel.waveform_preemphasis)
        self.floor_below_max = log_mel.floor_below_max
        self.drop_last_frame = bool(log_mel.drop_last_frame)
        window, filterbank = _tables(config.key(), torch.device("cpu"), torch.float64)
        basis = dft_basis(window, config.n_fft, preemphasis=config.preemphasis,
                          remove_dc_offset=config.remove_dc_offset)
        self.register_buffer("cosine", basis[0].clone())  # (win, n_freqs) float64
        self.register_buffer("sine", basis[1].clone())
        self.register_buffer("filterbank", filterbank.clone())  # (n_freqs, n_mels) float64
        win = config.win_length
        self.register_buffer("framing", torch.eye(win, dtype=torch.float32)[:, None, :])
        if config.center:
            half = config.n_fft // 2
            # frame i starts at hop*i + offset in the padded signal; trimming `trim` samples at
            # the end leaves 1 + (T + 2*half - n_fft)//hop frames, as the op counts them
            self.pad = half
            self.offset = (config.n_fft - win) // 2
            self.trim = config.n_fft - win - self.offset
        else:
            self.pad, self.offset, self.trim = 0, 0, 0

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        config = self.config
        signal = waveforms.float()
        if self.waveform_preemphasis != 0.0:
            signal = signal[:, 1:] - self.waveform_preemphasis * signal[:, :-1]
        signal = signal[:, None, :]
        if self.pad:
            signal = F.pad(signal, (self.pad, self.pad), mode=_TORCH_PAD_MODES[config.pad_mode])
        if self.trim:
            signal = signal[:, :, self.offset:-self.trim]
        elif self.offset:
            signal = signal[:, :, self.offset:]
        frames = F.conv1d(signal, self.framing, stride=config.hop_length)  # (B, win, frames)
        frames = frames.transpose(1, 2).double()
        power = (frames @ self.cosine).square() + (frames @ self.sine).square()
        if config.power != 2.0:
            power = power.pow(config.power / 2.0)
        out = _apply_log(power @ self.filterbank, config).transpose(1, 2)
        if self.drop_last_frame:
            out = out[:, :, :-1]
        if self.floor_below_max is not None:
            peak = out.amax(dim=(1, 2), keepdim=True)
            out = torch.maximum(out, peak - self.floor_below_max / config.divisor)
        return out.float()


class ExportedClassifier(nn.Module):
    """Waveforms (B, T) float32 -> the model's logits ((B, num_classes), or (B, frames,
    num_classes) for a per-frame model): frontend, then model."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.model(self.frontend(waveforms))


def export_model(model_file: str | os.PathLike, out_path: str | os.PathLike,
                 format: str = "torchscript", *, check: bool = True) -> Path:
    """Write the checkpoint ``model_file`` (``kdcore.checkpoints`` format) with its frontend to
    ``out_path`` as ``format`` (``"torchscript"``, the default, or ``"onnx"``, opset 18).

    The file maps waveforms (B, T) float32 to logits (B, num_classes) float32, or
    (B, frames, num_classes) for a per-frame model, for any B and T (see the module doc).
    With ``check`` (default True) it is loaded back (ONNX through onnxruntime, when
    installed) and compared with the checkpoint's model behind ``LogMel(backend="reference")``
    at the training clip length and at a shorter and a longer one; a difference above
    ``1e-4 * max(1, max |logit|)`` raises RuntimeError.
    Returns ``out_path`` as a Path. Raises ValueError for an unknown ``format``, FileNotFoundError
    for a missing ``model_file`` and ImportError when ``format="onnx"`` lacks the onnx package.
    """
    from kdcore.checkpoints import load_model_checkpoint

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    model_path = Path(model_file)
    if not model_path.is_file():
        raise FileNotFoundError(f"model_file {str(model_path)!r} does not exist")
    if format == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ImportError("format='onnx' needs the onnx package (pip install onnx "
                              "onnxruntime)")
    checkpoint = load_model_checkpoint(model_path)
    frontend = checkpoint.build_frontend("reference").eval()
    network = ExportedClassifier(ExportLogMel(frontend), checkpoint.model).eval()
    samples = checkpoint.clip_samples
    generator = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, samples, generator=generator)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(out))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(out), input_names=["waveform"],
                              output_names=["logits"],
                              dynamic_axes={"waveform": {0: "batch", 1: "samples"},
                                            "logits": {0: "batch"}},
                              opset_version=18, dynamo=False)
    if check:
        _check_export(out, format, checkpoint.model, frontend, samples)
    return out


def run_exported(path: str | os.PathLike, format: str, waveforms: torch.Tensor
                 ) -> torch.Tensor | None:
    """Logits of the exported file at ``path`` for (B, T) ``waveforms``; ``None`` for ONNX
    when onnxruntime is not installed."""
    if format == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(waveforms)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"waveform": waveforms.numpy()})[0])


def _check_export(path: Path, format: str, model: nn.Module, frontend: nn.Module,
                  samples: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for length in sorted({samples, max(samples * 2 // 3, 2), samples + samples // 3 + 1}):
        waveforms = 0.1 * torch.randn(2, length, generator=generator)
        got = run_exported(path, format, waveforms)
        if got is None:
            return
        with torch.no_grad():
            expected = model(frontend(waveforms))
        error = (got - expected).abs().max().item()
        if not error <= 1e-4 * max(1.0, expected.abs().max().item()):
            raise RuntimeError(f"the exported model disagrees with PyTorch at {length} samples: "
                               f"max |diff| {error:.3g}")
