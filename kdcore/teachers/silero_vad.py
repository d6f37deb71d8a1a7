"""Silero VAD (16 kHz) with the weights shipped in the silero-vad wheel, loaded into
:class:`SileroVAD`, kdcore's own module. The tensors come from ``silero_vad/data/silero_vad.jit``
(the archive the package's ``load_silero_vad()`` runs), read with ``torch.jit.load(...)
.state_dict()``: its ``_model.*`` entries are the 16 kHz network; its TorchScript code is not
run. (The wheel's ``silero_vad_16k.safetensors`` holds different weights from that archive,
so it would not reproduce the package's own inference.)

Silero is a streaming model. The package's own inference takes 512-sample chunks (32 ms) and
keeps two pieces of state between calls: the last 64 samples of the previous chunk (the
*context*, zeros after a reset) and an LSTM cell state (h, c), zeros after a reset. One step:

1. ``x`` = context (64) + chunk (512) = 576 samples, reflect-padded by 64 on the right (640);
2. a fixed STFT as a Conv1d (258 filters of 256 samples, stride 128: 4 frames), magnitude
   ``sqrt(re^2 + im^2)`` of 129 bins;
3. four Conv1d (kernel 3, padding 1, strides 1, 2, 2, 1; 129->128->64->64->128), each + ReLU,
   leaving one frame of 128 features;
4. an LSTM cell (128) from the carried (h, c); ReLU(h), a 1x1 Conv1d to one output, sigmoid:
   the speech probability of the chunk.

:class:`SileroChunks` (the frontend) cuts (B, T) waveforms into (B, N, 576) context+chunk
windows, ``N = ceil(T / 512)`` with the tail zero-padded, the first context zeros.
:class:`SileroVAD` runs the convolutions on every chunk at once and the LSTM cell over the N
chunks in order, from a zero state for each item: chunked streaming from a reset state per
training window or clip, exactly what ``reset_states()`` then ``model(chunk, 16000)`` per
chunk gives in the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.teachers import (
    OutputSpec,
    StudentSpec,
    TeacherBundle,
    TeacherSpec,
    fingerprint_files,
    package_file,
)

SAMPLE_RATE = 16000
CHUNK = 512
CONTEXT = 64


class SileroChunks(nn.Module):
    """Waveform (B, T) or (T,) float at 16 kHz -> context+chunk windows (B, ceil(T/512), 576):
    window ``n`` is samples ``[512 n - 64, 512 n + 512)`` with zeros before 0 and after T."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or waveform.dim() not in (1, 2):
            raise ValueError("waveform must be a (B, T) or (T,) tensor")
        if not waveform.is_floating_point():
            raise TypeError("waveform must be a floating tensor")
        if waveform.dim() == 1:
            waveform = waveform[None]
        chunks = max(1, -(-waveform.shape[-1] // CHUNK))
        padded = F.pad(waveform, (CONTEXT, chunks * CHUNK - waveform.shape[-1]))
        return padded.unfold(-1, CONTEXT + CHUNK, CHUNK)


class SileroVAD(nn.Module):
    """Context+chunk windows (B, N, 576) -> speech probabilities (B, N, 1), streaming the LSTM
    over the N chunks from ``state`` (default zeros). :meth:`step` is one chunk with state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("stft_basis", torch.zeros(258, 1, 256))
        self.convs = nn.ModuleList([nn.Conv1d(129, 128, 3, 1, 1), nn.Conv1d(128, 64, 3, 2, 1),
                                    nn.Conv1d(64, 64, 3, 2, 1), nn.Conv1d(64, 128, 3, 1, 1)])
        self.cell = nn.LSTMCell(128, 128)
        self.head = nn.Conv1d(128, 1, 1)

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """(..., 576) -> (..., 128), the per-chunk encoder output (no state)."""
        if windows.shape[-1] != CONTEXT + CHUNK:
            raise ValueError(f"windows must have {CONTEXT + CHUNK} samples in the last dim, "
                             f"got {tuple(windows.shape)}")
        x = F.pad(windows.reshape(-1, 1, windows.shape[-1]), (0, CONTEXT), mode="reflect")
        spectrum = F.conv1d(x, self.stft_basis, stride=128)
        x = torch.sqrt(spectrum[:, :129] ** 2 + spectrum[:, 129:] ** 2)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(-1).reshape(*windows.shape[:-1], 128)

    def _decode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(torch.relu(h)[..., None]))[..., 0]

    def step(self, window: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One chunk: window (B, 576), state (h, c) each (B, 128) or None -> ((B, 1), state)."""
        h, c = self.cell(self.features(window), state)
        return self._decode(h), (h, c)

    def forward(self, windows: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if windows.dim() != 3:
            raise ValueError(f"windows must be (B, N, 576), got {tuple(windows.shape)}")
        encoded = self.features(windows)
        outputs = []
        for n in range(encoded.shape[1]):
            state = self.cell(encoded[:, n], state)
            outputs.append(state[0])
        return self._decode(torch.stack(outputs, 1).reshape(-1, 128)).reshape(
            windows.shape[0], windows.shape[1], 1)

    def load_package_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load the 16 kHz tensors (``_model.*`` keys) of the package's JIT archive."""
        mapped = {"stft_basis": state["_model.stft.forward_basis_buffer"],
                  "head.weight": state["_model.decoder.decoder.2.weight"],
                  "head.bias": state["_model.decoder.decoder.2.bias"]}
        for i in range(4):
            mapped[f"convs.{i}.weight"] = state[f"_model.encoder.{i}.reparam_conv.weight"]
            mapped[f"convs.{i}.bias"] = state[f"_model.encoder.{i}.reparam_conv.bias"]
        for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            mapped[f"cell.{key}"] = state[f"_model.decoder.rnn.{key}"]
        self.load_state_dict(mapped)


def weights_path() -> str:
    """Path of ``silero_vad/data/silero_vad.jit`` in the installed package (not imported)."""
    return str(package_file("silero_vad", "data", "silero_vad.jit"))


def load_model() -> SileroVAD:
    """:class:`SileroVAD` with the installed package's 16 kHz weights, in eval mode."""
    model = SileroVAD()
    archive = torch.jit.load(weights_path(), map_location="cpu")
    model.load_package_state({k: v.detach().clone() for k, v in archive.state_dict().items()})
    return model.eval()


def stream(model: SileroVAD, waveform: torch.Tensor) -> torch.Tensor:
    """Speech probability per 512-sample chunk of each item of ``waveform`` (B, T) at 16 kHz,
    streamed from a reset state per item: (B, ceil(T / 512)) float32."""
    with torch.no_grad():
        return model(SileroChunks()(waveform))[..., 0]


def student_spec() -> StudentSpec:
    """A :class:`FrameStudent` with one output on 32 log-mels with a 512-sample hop (one frame
    per chunk; 1024-sample window, centred, so ``1 + T // 512`` frames: crop to the teacher's
    ``ceil(T / 512)``)."""
    from kdcore.teachers.students import FrameStudent

    kwargs = {"n_mels": 32, "width": 48, "depth": 3, "kernel": 5}
    frontend = {"sample_rate": SAMPLE_RATE, "n_fft": 1024, "win_length": 1024,
                "hop_length": CHUNK, "n_mels": 32, "center": True, "log": "ln"}
    return StudentSpec(config={"model": "frame_student", "num_outputs": 1, "kwargs": kwargs,
                               "frontend": frontend},
                       build=lambda: FrameStudent(1, **kwargs))


def bundle(spec: TeacherSpec) -> TeacherBundle:
    """The registry factory for ``silero-vad``."""
    model = load_model()
    output = OutputSpec(kind="probabilities", size=1, hop=CHUNK, shape="(B, ceil(T / 512), 1)",
                        labels=["speech"])
    return TeacherBundle(
        spec=spec, model=model, frontend=SileroChunks(), output=output, student=student_spec(),
        num_parameters=sum(p.numel() for p in model.parameters()),
        fingerprint=fingerprint_files([weights_path()], salt=f"{spec.name}:{CHUNK}"),
        extras={"stream": lambda waveform: stream(model, waveform), "context": CONTEXT,
                "stft_basis_size": model.stft_basis.numel()})
