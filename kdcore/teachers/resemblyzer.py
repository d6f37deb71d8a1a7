"""Resemblyzer speaker-encoder teacher (the GE2E encoder of Wan et al. 2018, "Generalized
End-to-End Loss for Speaker Verification") with the weights shipped in the resemblyzer wheel
(``resemblyzer/pretrained.pt``, key ``model_state``). The package is never imported (it imports
webrtcvad and librosa); the file is located with ``importlib.util.find_spec`` and loaded into
:class:`SpeakerEncoder`, kdcore's own module.

Frontend (:class:`ResemblyzerMels`), the package's documented mel settings: 16 kHz waveform,
400-sample (25 ms) periodic Hann frames every 160 samples (10 ms), centred with zero padding of
200 samples on both sides, power spectrum, 40 Slaney-scale mel filters with Slaney (area)
normalisation from 0 Hz to 8 kHz, no log; computed in float64, cast to float32.

Partials: a clip of ``T`` samples has ``n = ceil((T + 1) / 160)`` frames; partials of 160
frames (1.6 s) start every ``step = round(16000 / rate / 160)`` frames (``rate`` 1.3 per second:
step 77) at ``0, step, ...`` below ``max(1, n - 160 + step + 1)``; the last is dropped when it
covers less than ``min_coverage`` (0.75) of its 25,600 samples and is not the only one. The
waveform is zero-padded to the last partial's end before the mel frames are taken.

Model (:class:`SpeakerEncoder`): a 3-layer LSTM(40 -> 256), the last layer's final hidden state,
Linear(256, 256), ReLU and L2 normalisation: one 256-d embedding per partial (1,423,616
parameters). The utterance embedding is the mean of its partial embeddings, L2-normalised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.ops.log_mel import mel_filterbank

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 40
PARTIAL_FRAMES = 160
HIDDEN = 256
EMBEDDING = 256
LAYERS = 3
RATE = 1.3
MIN_COVERAGE = 0.75
WEIGHTS_FILE = "pretrained.pt"
PACKAGE = "resemblyzer==0.1.4"


def partial_starts(samples: int, rate: float = RATE, min_coverage: float = MIN_COVERAGE
                   ) -> list[int]:
    """First mel frame of each 160-frame partial of a clip of ``samples`` samples (see the
    module docstring). ``rate``: partials per second (default 1.3, at least 0.625);
    ``min_coverage`` in (0, 1] (default 0.75). Partial ``i`` spans samples
    ``[160 s_i, 160 (s_i + 160))``."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    frames = -(-(samples + 1) // HOP)
    step = int(np.round(SAMPLE_RATE / rate / HOP))
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"rate must be between {SAMPLE_RATE / HOP / PARTIAL_FRAMES} and "
                         f"{2 * SAMPLE_RATE / HOP} partials per second, got {rate!r}")
    starts = list(range(0, max(1, frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


class ResemblyzerMels(nn.Module):
    """Waveform (B, T) or (T,) float at 16 kHz -> mel partials (B, P, 160, 40) float32, P from
    :func:`partial_starts` (T); ``rate`` (default 1.3) and ``min_coverage`` (default 0.75) as
    there. :meth:`mel` gives the whole mel power spectrogram (B, 1 + T // 160, 40). The buffer
    ``filterbank`` (201, 40) float64 holds the mel matrix."""

    sample_rate = SAMPLE_RATE
    hop = HOP

    def __init__(self, rate: float = RATE, min_coverage: float = MIN_COVERAGE) -> None:
        super().__init__()
        partial_starts(1, rate, min_coverage)  # validates both
        self.rate, self.min_coverage = rate, min_coverage
        self.register_buffer("filterbank", mel_filterbank(
            N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=N_MELS,
            sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney", n_fft=N_FFT,
            dtype=torch.float64), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True,
                                                         dtype=torch.float64), persistent=False)

    @staticmethod
    def _check(waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or waveform.dim() not in (1, 2):
            raise ValueError("waveform must be a (B, T) or (T,) tensor")
        if not waveform.is_floating_point():
            raise TypeError(f"waveform must be a floating tensor, got {waveform.dtype}")
        if waveform.shape[-1] < 1:
            raise ValueError("waveform must have at least one sample")
        return waveform[None] if waveform.dim() == 1 else waveform

    def mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mel power (B, 1 + T // 160, 40) float32 of a waveform (B, T) or (T,)."""
        waveform = self._check(waveform).to(torch.float64)
        padded = F.pad(waveform, (N_FFT // 2, N_FFT // 2))
        frames = padded.unfold(-1, N_FFT, HOP) * self.window
        power = torch.fft.rfft(frames, n=N_FFT).abs().square()
        return (power @ self.filterbank).to(torch.float32)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = self._check(waveform)
        starts = partial_starts(waveform.shape[-1], self.rate, self.min_coverage)
        end = (starts[-1] + PARTIAL_FRAMES) * HOP
        mel = self.mel(F.pad(waveform, (0, max(0, end - waveform.shape[-1]))))
        return torch.stack([mel[:, s: s + PARTIAL_FRAMES] for s in starts], dim=1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class SpeakerEncoder(nn.Module):
    """GE2E speaker encoder. ``forward``: mel partials (B, P, frames, 40) -> utterance
    embeddings (B, 256) float32, the L2-normalised mean of :meth:`embed_partials`; a 3-D input
    (N, frames, 40) is one partial per item and gives (N, 256). Embeddings are non-negative
    and have unit norm."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, EMBEDDING)

    def embed_partials(self, mels: torch.Tensor) -> torch.Tensor:
        """Mel partials (..., frames, 40) -> unit-norm embeddings (..., 256):
        ``normalise(relu(linear(h_last)))`` with ``h_last`` the final hidden state of the
        third LSTM layer."""
        if mels.dim() < 3 or mels.shape[-1] != N_MELS:
            raise ValueError(f"mels must be (..., frames, {N_MELS}), got {tuple(mels.shape)}")
        flat = mels.reshape(-1, *mels.shape[-2:]).to(self.linear.weight.dtype)
        _, (hidden, _) = self.lstm(flat)
        embeds = _normalise(torch.relu(self.linear(hidden[-1])))
        return embeds.reshape(*mels.shape[:-2], EMBEDDING)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        if mels.dim() == 3:
            return self.embed_partials(mels)
        if mels.dim() != 4:
            raise ValueError(f"mels must be (B, P, frames, {N_MELS}) or (N, frames, {N_MELS}), "
                             f"got {tuple(mels.shape)}")
        return _normalise(self.embed_partials(mels).mean(dim=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def load_package_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load resemblyzer's ``model_state``: ``lstm.*`` and ``linear.*`` must all be present
        with matching shapes; the GE2E training scalars (``similarity_weight``,
        ``similarity_bias``) are ignored. Any other key is an error."""
        own = set(self.state_dict())
        extra = set(state) - own - {"similarity_weight", "similarity_bias"}
        if extra:
            raise ValueError(f"unexpected keys in the resemblyzer state dict: {sorted(extra)}")
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)


def weights_path() -> str:
    """Path of ``resemblyzer/pretrained.pt`` in the installed package (not imported)."""
    from kdcore.teachers import package_file

    return str(package_file("resemblyzer", WEIGHTS_FILE))


def load_model(path: str | None = None) -> SpeakerEncoder:
    """:class:`SpeakerEncoder` with the installed (or ``path``'s) weights, in eval mode."""
    checkpoint = torch.load(weights_path() if path is None else path, map_location="cpu",
                            weights_only=True)
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ValueError(f"{path or WEIGHTS_FILE}: expected a dict with a 'model_state' key")
    model = SpeakerEncoder()
    model.load_package_state(checkpoint["model_state"])
    return model.eval()


class SpeakerStudent(nn.Module):
    """A small speaker encoder on the same mel partials: LSTM(40 -> ``hidden``, 1 layer), the
    final hidden state, Linear(hidden, 256), ReLU, L2 norm; inputs and outputs as
    :class:`SpeakerEncoder`. ``hidden`` default 128 (120,064 parameters, about 1/12)."""

    model_name = "resemblyzer_student"

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {hidden!r}")
        self.hidden = hidden
        self.lstm = nn.LSTM(N_MELS, hidden, 1, batch_first=True)
        self.linear = nn.Linear(hidden, EMBEDDING)

    embed_partials = SpeakerEncoder.embed_partials
    forward = SpeakerEncoder.forward

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden}


def student_spec() -> Any:
    """A :class:`SpeakerStudent` (hidden 128) on the teacher's own mel partials."""
    from kdcore.teachers import StudentSpec

    kwargs = {"hidden": 128}
    frontend = {"kind": "resemblyzer_mel_partials", "sample_rate": SAMPLE_RATE, "n_fft": N_FFT,
                "win_length": N_FFT, "hop_length": HOP, "n_mels": N_MELS, "center": True,
                "pad_mode": "constant", "mel_scale": "slaney", "norm": "slaney", "log": None,
                "partial_frames": PARTIAL_FRAMES, "rate": RATE, "min_coverage": MIN_COVERAGE}
    return StudentSpec(config={"model": SpeakerStudent.model_name, "num_outputs": EMBEDDING,
                               "kwargs": kwargs, "frontend": frontend},
                       build=lambda: SpeakerStudent(**kwargs),
                       make_frontend=ResemblyzerMels)


def bundle(spec: Any) -> Any:
    """The registry factory for ``resemblyzer``: ``model`` :class:`SpeakerEncoder` (utterance
    embeddings (B, 256)), ``frontend`` :class:`ResemblyzerMels`; ``extras["embed_partials"]``
    gives the per-partial embeddings (B, P, 256) from the frontend's output."""
    from kdcore.teachers import OutputSpec, TeacherBundle, fingerprint_files

    path = weights_path()
    model = load_model(path)
    output = OutputSpec(kind="embedding", size=EMBEDDING, hop=None, shape="(B, 256)")
    return TeacherBundle(
        spec=spec, model=model, frontend=ResemblyzerMels(), output=output,
        student=student_spec(), num_parameters=model.num_parameters(),
        fingerprint=fingerprint_files([path], salt=f"{spec.name}:{RATE}:{MIN_COVERAGE}"),
        extras={"embed_partials": model.embed_partials})


__all__ = ["EMBEDDING", "HOP", "N_MELS", "PARTIAL_FRAMES", "ResemblyzerMels", "SAMPLE_RATE",
           "SpeakerEncoder", "SpeakerStudent", "bundle", "load_model", "partial_starts",
           "weights_path"]
