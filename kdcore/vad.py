"""Voice activity detection: distil Silero VAD (``kdcore.teachers.load("silero-vad")``) into a
small student through :class:`kdcore.Distiller`, and score a student against the teacher.

What ``kdcore distill --teacher silero-vad`` and ``kdcore demo`` run; see docs/teachers.md
("Distilling Silero VAD").

- **Student** (:class:`VadStudent`): :class:`VadFrontend` (32 log-mels, 1024-sample window,
  512-sample hop, one frame centred on each of the teacher's 32 ms chunks) and a
  :class:`kdcore.teachers.students.FrameStudent` with one output, a speech logit per chunk.
  Not recurrent: its receptive field is ``1 + depth (kernel - 1)`` chunks, centred.
- **Training windows** (:func:`vad_windows`): every clip (16 kHz) is cut into windows of
  ``window_s`` seconds that overlap by ``overlap_s``; a clip shorter than a window (or a
  clip's last window) is zero-padded and the padded chunks are masked. The teacher runs on
  each window by chunked streaming **from a reset state** (as at the start of a stream);
  in every window but a clip's first, the first ``overlap`` chunks repeat the end of the
  previous window, where the teacher had streamed longer, so they are masked: each chunk of a
  clip is a target once, with at least ``overlap_s`` of streamed history or the true start of
  the clip behind it.
- **Distillation**: task ``frame_multilabel`` (one output), ``kd_bce_loss`` at temperature 1
  against the teacher's logit ``log(p / (1 - p))`` (``p`` clamped to [1e-4, 1 - 1e-4]), i.e.
  binary cross-entropy against its speech probability; the teacher cache is filled first, in
  its own phase (:func:`kdcore.engine.fill_teacher_cache`), then read by the Distiller
  (``teacher_mode="cached"``).
- **Evaluation** (:func:`evaluate_vad`): both models on whole clips (the teacher streamed
  from a reset state per clip), decisions ``p >= 0.5``; frame F1 with the teacher's speech
  chunks as positives, and agreement (share of chunks decided alike).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcore.frontend import LogMel
from kdcore.teachers.students import FrameStudent

RATE = 16000
HOP = 512
FORMAT = "kdcore-vad-student"
TEACHER = "silero-vad"
LOGIT_CLAMP = 1e-4


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------

class VadFrontend(nn.Module):
    """Waveform (B, T) float at 16 kHz -> log-mel (B, n_mels, ceil(T / 512)), frame ``n``
    centred on Silero's chunk ``n`` (samples ``[512 n, 512 n + 512)``).

    Log-mel (``n_mels`` [32] mels, 1024-sample Hann window, 512 hop, centred, natural log,
    ``backend`` ["reference"]) of the waveform shifted left by 256 samples (zeros at the end),
    cropped to the teacher's chunk count."""

    def __init__(self, n_mels: int = 32, backend: str = "reference") -> None:
        super().__init__()
        self.config = {"sample_rate": RATE, "n_fft": 1024, "win_length": 1024,
                       "hop_length": HOP, "n_mels": n_mels, "center": True, "log": "ln"}
        self.mel = LogMel(backend=backend, **self.config)
        self.sample_rate, self.hop_length = RATE, HOP

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2 or waveform.shape[-1] < HOP:
            raise ValueError(f"waveform must be (B, T) with T >= {HOP}, got "
                             f"{tuple(waveform.shape)}")
        frames = -(-waveform.shape[-1] // HOP)
        shifted = nn.functional.pad(waveform[:, HOP // 2:], (0, HOP // 2))
        return self.mel(shifted)[..., :frames]


class VadStudent(nn.Module):
    """Waveform (B, T) float at 16 kHz -> speech logits (B, ceil(T / 512), 1), one per
    Silero chunk: :class:`VadFrontend` (no gradient) then a :class:`FrameStudent`.

    Args: ``n_mels`` [32], ``width`` [48], ``depth`` [3], ``kernel`` [5] (receptive field
    ``1 + depth (kernel - 1)`` chunks, centred: 13, about 0.4 s), ``backend`` ["reference"]
    of the log-mel."""

    model_name = "vad_student"

    def __init__(self, *, n_mels: int = 32, width: int = 48, depth: int = 3, kernel: int = 5,
                 backend: str = "reference") -> None:
        super().__init__()
        self.kwargs = {"n_mels": n_mels, "width": width, "depth": depth, "kernel": kernel}
        self.frontend = VadFrontend(n_mels, backend)
        self.frontend_config = self.frontend.config
        self.net = FrameStudent(1, n_mels=n_mels, width=width, depth=depth, kernel=kernel)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.frontend(waveform)
        return self.net(features)

    def config(self) -> dict[str, int]:
        return dict(self.kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class SileroLogits(nn.Module):
    """Silero's probabilities (B, N, 1) as logits ``log(p / (1 - p))``, ``p`` clamped to
    ``[1e-4, 1 - 1e-4]``: the teacher the Distiller sees (the KD target at temperature 1 is
    then ``p`` itself, up to the clamp)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        p = self.model(windows).clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP)
        return torch.log(p) - torch.log1p(-p)


# ------------------------------------------------------------------------------------------
# Training windows
# ------------------------------------------------------------------------------------------

class VadWindows(Dataset):
    """Fixed-length training windows: item ``i`` is ``{"waveform": (L,) float32, "mask":
    (L / 512,) bool (the chunks that are targets), "index": i}``. ``origin[i]`` is
    ``(clip, first sample)``."""

    def __init__(self, waveforms: torch.Tensor, mask: torch.Tensor,
                 origin: list[tuple[int, int]]) -> None:
        self.waveforms, self.mask, self.origin = waveforms, mask, origin
        self.sample_rate = RATE

    def __len__(self) -> int:
        return self.waveforms.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"waveform": self.waveforms[index], "mask": self.mask[index], "index": index}

    def fingerprint(self) -> str:
        """SHA-256 of the windows and masks (the teacher cache's data key)."""
        digest = hashlib.sha256()
        digest.update(f"{tuple(self.waveforms.shape)}".encode())
        digest.update(self.waveforms.contiguous().numpy().tobytes())
        digest.update(self.mask.contiguous().numpy().tobytes())
        return digest.hexdigest()


def vad_windows(clips: Sequence[torch.Tensor], *, window_s: float = 4.096,
                overlap_s: float = 1.024) -> VadWindows:
    """Cut 16 kHz clips ((T,) float each) into training windows (see the module docstring).

    The window is ``window_s`` [4.096] seconds rounded to whole 512-sample chunks, or the
    longest clip's whole chunks when that is shorter; windows start every ``window -
    overlap`` samples (``overlap_s`` [1.024] seconds, whole chunks, less than the window).
    Masked: padded chunks, and the first ``overlap`` chunks of every window but a clip's
    first."""
    if not clips:
        raise ValueError("clips is empty")
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
    full = max(1, round(window_s * RATE / HOP))
    overlap = round(overlap_s * RATE / HOP) if isinstance(overlap_s, (int, float)) else -1
    if overlap_s < 0 or overlap < 0 or overlap >= full:
        raise ValueError(f"overlap_s must be >= 0 and shorter than window_s, got "
                         f"{overlap_s!r} with window_s {window_s!r}")
    chunks = min(full, max(-(-clip.numel() // HOP) for clip in clips))
    overlap = min(overlap, chunks - 1)
    length, step = chunks * HOP, (chunks - overlap) * HOP
    waves, masks, origin = [], [], []
    for position, clip in enumerate(clips):
        clip_chunks = -(-clip.numel() // HOP)
        start = 0
        while True:
            piece = clip[start:start + length]
            waves.append(nn.functional.pad(piece.float(), (0, length - piece.numel())))
            first = start // HOP
            valid = torch.arange(chunks) < clip_chunks - first
            if start > 0:
                valid[:overlap] = False
            masks.append(valid)
            origin.append((position, start))
            if start + length >= clip.numel():
                break
            start += step
    return VadWindows(torch.stack(waves), torch.stack(masks), origin)


# ------------------------------------------------------------------------------------------
# Distillation
# ------------------------------------------------------------------------------------------

def _teacher_bundle(teacher: Any) -> Any:
    if isinstance(teacher, str):
        from kdcore import teachers

        teacher = teachers.load(teacher)
    output = getattr(teacher, "output", None)
    if (getattr(teacher, "sample_rate", None) != RATE or getattr(output, "hop", None) != HOP
            or getattr(output, "size", None) != 1):
        raise ValueError("teacher must be a Silero-style VAD bundle (one speech probability "
                         f"per {HOP}-sample chunk at {RATE} Hz), e.g. 'silero-vad'")
    return teacher


def _device(kwargs: dict) -> torch.device:
    device = kwargs.get("device")
    return torch.device(device if device is not None else
                        ("cuda" if torch.cuda.is_available() else "cpu"))


def teacher_fingerprint(teacher: Any) -> str:
    """The fingerprint of :class:`SileroLogits` around ``teacher`` (a bundle): the teacher
    cache's and the checkpoints' teacher identity in :func:`distill_vad`."""
    return f"{_teacher_bundle(teacher).fingerprint}:logits"


def distill_vad(teacher: Any, clips: Sequence[Any], out_dir: str | os.PathLike, *,
                student: VadStudent | None = None, window_s: float = 4.096,
                overlap_s: float = 1.024, epochs: int = 10, batch_size: int = 16,
                lr: float = 3e-3, sample_rate: int = RATE, seed: int = 0,
                backend: str = "reference", progress: bool = True, resume: bool = True,
                on_epoch: Callable[[dict], dict | None] | None = None,
                **distiller_kwargs: Any) -> tuple[VadStudent, Any]:
    """Distil a Silero VAD teacher into ``student`` on unlabelled clips, with the engine.

    Args:
        teacher: the bundle of ``kdcore.teachers.load("silero-vad")``, or its name.
        clips: waveforms (T,) at ``sample_rate`` [16000] or audio file paths (any rate);
            everything not at 16 kHz is resampled with :class:`kdcore.Resample`.
        out_dir: the run folder: ``teacher_cache/``, ``checkpoints/``, ``metrics.jsonl`` and
            ``student.pt`` (:func:`save_vad_student`).
        student: a :class:`VadStudent` [None: a fresh ``VadStudent(backend=backend)``, built
            after ``torch.manual_seed(seed)``].
        window_s, overlap_s: training windows [4.096 s, overlapping by 1.024 s], see
            :func:`vad_windows`.
        epochs, batch_size, lr: [10], [16 windows], peak one-cycle AdamW rate [3e-3].
        seed: [0] the student's initialisation and the Distiller's ``seed`` (data order).
        backend: ["reference"] of the student's log-mel and of the loss.
        progress: [True] one progress bar for the teacher-cache fill, one per epoch.
        resume: [True] continue from ``out_dir/checkpoints/last.pt`` when there is one.
        on_epoch: [None] per-epoch callback of :meth:`kdcore.Distiller.fit`.
        distiller_kwargs: further :class:`kdcore.Distiller` keywords (``device``,
            ``log_every``, ...).

    Returns ``(student, history)``; the student is in eval mode, on the CPU."""
    from kdcore.engine import Distiller, fill_teacher_cache
    from kdcore.eval.pitch import load_clips

    bundle = _teacher_bundle(teacher)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    waves = load_clips(clips, sample_rate=sample_rate)
    data = vad_windows(waves, window_s=window_s, overlap_s=overlap_s)
    if student is None:
        torch.manual_seed(seed)
        student = VadStudent(backend=backend)
    elif not isinstance(student, VadStudent):
        raise TypeError(f"student must be a kdcore.vad.VadStudent, got "
                        f"{type(student).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_module = SileroLogits(bundle.model)
    fingerprint = teacher_fingerprint(bundle)
    cache = out / "teacher_cache"
    fill_teacher_cache(teacher_module, DataLoader(data, batch_size=32, shuffle=False), cache,
                       teacher_frontend=bundle.frontend, task="frame_multilabel",
                       teacher_fingerprint=fingerprint, device=_device(distiller_kwargs),
                       progress=progress, description=f"teacher ({bundle.name})")
    options = {"loss_backend": backend, **distiller_kwargs}
    distiller = Distiller(teacher_module, student.net, teacher_frontend=bundle.frontend,
                          student_frontend=student.frontend, task="frame_multilabel",
                          temperature=1.0, alpha=1.0, lr=lr, teacher_mode="cached",
                          cache_dir=cache, teacher_fingerprint=fingerprint, seed=seed,
                          teacher_frame_rate=RATE / HOP, student_frame_rate=RATE / HOP,
                          progress=progress, **options)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    history = distiller.fit(loader, epochs=epochs, out_dir=out, resume=resume,
                            on_epoch=on_epoch)
    student.eval().cpu()
    save_vad_student(out / "student.pt", student, teacher=bundle)
    return student, history


def save_vad_student(path: str | os.PathLike, student: VadStudent, *,
                     teacher: Any = None) -> Path:
    """Write ``student`` to ``path``: ``{"format": "kdcore-vad-student", "teacher" (name),
    "teacher_fingerprint", "model_kwargs", "frontend", "state_dict"}``."""
    path = Path(path)
    torch.save({"format": FORMAT, "teacher": getattr(teacher, "name", TEACHER),
                "teacher_fingerprint": getattr(teacher, "fingerprint", None),
                "model_kwargs": student.config(), "frontend": dict(student.frontend_config),
                "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()}},
               path)
    return path


def is_vad_student(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file written by :func:`save_vad_student`."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or another pickle: not ours
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def load_vad_student(path: str | os.PathLike, *, backend: str = "reference") -> VadStudent:
    """The :class:`VadStudent` saved at ``path`` (eval mode); a clear error for another
    file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAD student file does not exist: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a VAD student written by kdcore (format {FORMAT!r})")
    student = VadStudent(backend=backend, **state["model_kwargs"])
    student.load_state_dict(state["state_dict"])
    return student.eval()


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------

def teacher_probabilities(teacher: Any, clips: Sequence[torch.Tensor], *,
                          batch_size: int = 32) -> list[torch.Tensor]:
    """Silero's speech probability per chunk of each whole 16 kHz clip, streamed from a reset
    state per clip: a list of (ceil(T / 512),) float32. Clips are batched by length and
    zero-padded; the teacher is causal, so padding leaves the clip's own chunks unchanged."""
    bundle = _teacher_bundle(teacher)
    order = sorted(range(len(clips)), key=lambda i: clips[i].numel())
    out: list[torch.Tensor | None] = [None] * len(clips)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            longest = max(clips[i].numel() for i in rows)
            batch = torch.stack([nn.functional.pad(clips[i].float(),
                                                   (0, longest - clips[i].numel()))
                                 for i in rows])
            p = bundle.model(bundle.frontend(batch))[..., 0]
            for row, i in enumerate(rows):
                out[i] = p[row, :-(-clips[i].numel() // HOP)]
    return out  # type: ignore[return-value]


def student_probabilities(student: nn.Module, clips: Sequence[torch.Tensor], *,
                          batch_size: int = 32) -> list[torch.Tensor]:
    """The student's speech probability per chunk of each whole clip (clips of one length are
    batched; eval mode, no gradients): a list of (ceil(T / 512),) float32."""
    was_training = student.training
    student.eval()
    out: list[torch.Tensor | None] = [None] * len(clips)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(clip.numel(), []).append(i)
    with torch.no_grad():
        for rows in by_length.values():
            for start in range(0, len(rows), batch_size):
                part = rows[start:start + batch_size]
                p = torch.sigmoid(student(torch.stack([clips[i].float() for i in part])))
                for row, i in enumerate(part):
                    out[i] = p[row, :, 0]
    student.train(was_training)
    return out  # type: ignore[return-value]


def agreement_metrics(teacher_p: torch.Tensor, student_p: torch.Tensor,
                      threshold: float = 0.5) -> dict[str, float]:
    """Decisions ``p >= threshold`` [0.5] of both (same shape): ``f1`` = 2TP / (2TP + FP + FN)
    with the teacher's speech frames as positives (1.0 when neither finds speech),
    ``agreement`` = share of frames decided alike, and ``speech_share`` (teacher)."""
    if teacher_p.shape != student_p.shape:
        raise ValueError(f"teacher_p and student_p must have the same shape, got "
                         f"{tuple(teacher_p.shape)} and {tuple(student_p.shape)}")
    t = teacher_p >= threshold
    s = student_p >= threshold
    tp = int((t & s).sum())
    fp = int((~t & s).sum())
    fn = int((t & ~s).sum())
    denominator = 2 * tp + fp + fn
    return {"f1": 2 * tp / denominator if denominator else 1.0,
            "agreement": float((t == s).float().mean()),
            "speech_share": float(t.float().mean())}


def evaluate_vad(student: nn.Module, clips: Sequence[Any], *, teacher: Any = TEACHER,
                 sample_rate: int = RATE, threshold: float = 0.5,
                 teacher_p: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Frame F1 and agreement of ``student`` against ``teacher`` [``"silero-vad"``] over every
    chunk of whole ``clips`` (waveforms at ``sample_rate`` [16000] or paths, resampled to
    16 kHz), decisions at ``threshold`` [0.5] (:func:`agreement_metrics`, pooled over clips);
    also those of the trivial all-speech and all-silence predictors. ``teacher_p``: the
    teacher's probabilities when already computed (:func:`teacher_probabilities`)."""
    from kdcore.eval.pitch import load_clips

    waves = load_clips(clips, sample_rate=sample_rate)
    if teacher_p is None:
        teacher_p = teacher_probabilities(teacher, waves)
    t = torch.cat(list(teacher_p))
    s = torch.cat(student_probabilities(student, waves))
    return {"student": agreement_metrics(t, s, threshold),
            "all_speech": agreement_metrics(t, torch.ones_like(t), threshold),
            "all_silence": agreement_metrics(t, torch.zeros_like(t), threshold),
            "clips": len(waves), "frames": int(t.numel()),
            "seconds": sum(w.numel() for w in waves) / RATE, "threshold": threshold}


# ------------------------------------------------------------------------------------------
# Costs
# ------------------------------------------------------------------------------------------

def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``example`` counted by
    ``torch.utils.flop_counter`` (matmuls and convolutions; FFTs and custom ops such as
    kdcore's log-mel are not seen): flops / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def _seconds_per_second(run: Callable[[torch.Tensor], Any], audio: torch.Tensor,
                        repeats: int = 2) -> float:
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            run(audio)
            best = min(best, time.perf_counter() - started)
    return best / (audio.numel() / RATE)


def compare_costs(student: VadStudent, teacher: Any, audio: torch.Tensor) -> dict[str, Any]:
    """Parameters, MACs per second of audio and real-time factor (seconds of compute per
    second of audio on this machine, best of 2 runs over ``audio`` (B, T) at 16 kHz) of the
    teacher (streamed) and the student. MACs: ``torch.utils.flop_counter`` on one second of
    ``audio`` (the teacher's STFT is a convolution and counted) plus the student's mel
    projection (frames x 513 bins x mels); the student's FFT is not counted."""
    bundle = _teacher_bundle(teacher)
    one_second = audio[:1, :RATE].float()
    if one_second.shape[-1] < RATE:
        raise ValueError("audio must hold at least one second (16000 samples)")
    was_training = student.training
    student.eval()
    mel_macs = (1 + RATE // HOP) * (1024 // 2 + 1) * student.frontend_config["n_mels"]
    stream = bundle.extras["stream"]
    costs = {
        "teacher": {"name": bundle.name, "parameters": bundle.num_parameters,
                    "macs_per_second_of_audio": count_macs(
                        nn.Sequential(bundle.frontend, bundle.model), one_second),
                    "real_time_factor": _seconds_per_second(stream, audio)},
        "student": {"name": "VadStudent (FrameStudent on 32 log-mels)"
                    if student.frontend_config["n_mels"] == 32 else "VadStudent",
                    "parameters": student.num_parameters(), "config": student.config(),
                    "macs_per_second_of_audio": count_macs(student, one_second) + mel_macs,
                    "real_time_factor": _seconds_per_second(student, audio)},
    }
    student.train(was_training)
    costs["compression"] = costs["teacher"]["parameters"] / costs["student"]["parameters"]
    return costs


def cost_table(costs: dict[str, Any]) -> str:
    """Teacher and student side by side: parameters, MMACs per second of audio, real-time
    factor (plain text)."""
    teacher, student = costs["teacher"], costs["student"]
    return "\n".join([
        f"{'':<28}{'teacher (Silero VAD)':>22}{'student':>12}",
        f"{'parameters':<28}{teacher['parameters']:>22,}{student['parameters']:>12,}",
        f"{'MMACs per second of audio':<28}{teacher['macs_per_second_of_audio'] / 1e6:>22.1f}"
        f"{student['macs_per_second_of_audio'] / 1e6:>12.2f}",
        f"{'real-time factor (CPU)':<28}{teacher['real_time_factor']:>22.5f}"
        f"{student['real_time_factor']:>12.5f}"])


# ------------------------------------------------------------------------------------------
# Synthetic speech streams (demo and benchmark)
# ------------------------------------------------------------------------------------------

def utterance(clips: Sequence[torch.Tensor], length: int, sample_rate: int,
              generator: torch.Generator) -> torch.Tensor:
    """A (length,) stream of ``clips`` (one speaker's, at ``sample_rate``) in random order,
    each scaled to RMS 0.1 times a random gain within +-6 dB, separated by 0.15-0.8 s of
    silence after a 0-0.5 s silent start; clips that would not fit are left out."""
    out = torch.zeros(length)
    position = int(torch.randint(0, sample_rate // 2, (), generator=generator))
    order = torch.randperm(len(clips), generator=generator).tolist()
    for index in order:
        clip = clips[index]
        clip = clip / clip.square().mean().sqrt().clamp(min=1e-8) * 0.1
        gain = 10 ** (float(torch.empty(()).uniform_(-6, 6, generator=generator)) / 20)
        if position + clip.numel() > length:
            break
        out[position:position + clip.numel()] = clip * gain
        gap = float(torch.empty(()).uniform_(0.15, 0.8, generator=generator))
        position += clip.numel() + int(gap * sample_rate)
    return out


def add_noise(speech: torch.Tensor, kind: str, snr_db: float, seed: int, sample_rate: int,
              babble: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``speech`` plus kdcore's seeded noise ``kind`` (:func:`kdcore.data.noise.make_noise`;
    ``babble`` made of the given clips) at ``snr_db`` over the whole stream."""
    from kdcore.data.noise import make_noise, mix_at_snr

    noise = make_noise(kind, speech.numel(), sample_rate, seed,
                       babble_clips=list(babble) if kind == "babble" else None)
    return mix_at_snr(speech, noise, snr_db)


def machine() -> dict[str, Any]:
    """Platform, CPU count, torch version and the 1-minute load average."""
    import platform

    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


__all__ = ["HOP", "RATE", "SileroLogits", "VadFrontend", "VadStudent", "VadWindows",
           "agreement_metrics", "compare_costs", "cost_table", "count_macs", "distill_vad",
           "evaluate_vad", "is_vad_student", "load_vad_student", "save_vad_student",
           "student_probabilities", "teacher_probabilities", "vad_windows"]
