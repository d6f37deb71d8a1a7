"""Speech enhancement with NSNet2 and its distilled mask students.

- :func:`enhance_file` / :func:`enhance_folder` apply a gain-mask model (a trained
  :class:`~kdcore.teachers.nsnet2.MaskStudent`, a student checkpoint file, or a registered
  teacher such as ``"nsnet2"``) to WAV files at any sample rate: the audio is resampled to
  16 kHz with :class:`kdcore.Resample`, enhanced (NSNet2's log-power feature, the model's mask,
  :func:`~kdcore.teachers.nsnet2.apply_mask`) and resampled back. ``kdcore enhance --model M
  IN OUT`` calls them.
- Training data: :class:`SpeechClips` (fixed-length 16 kHz clean speech from a manifest),
  :func:`ideal_ratio_mask` and :class:`MaskPairs` ((noisy waveform, IRM) items from a
  :class:`kdcore.data.NoisyMixtures`, the batch layout of the engine's ``regression`` task).
- Streaming: :func:`stream_masks` runs a student one frame at a time with its GRU state.
- Export: :class:`ExportedEnhancer` (waveform -> mask and enhanced waveform in plain ops) and
  :func:`export_enhancer_onnx`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import soundfile
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kdcore.resample import Resample
from kdcore.teachers import nsnet2 as ns

SAMPLE_RATE = ns.SAMPLE_RATE
WAV_EXTENSIONS = (".wav", ".flac")

__all__ = ["ExportedEnhancer", "MaskPairs", "SpeechClips", "enhance_file", "enhance_folder",
           "enhance_path", "enhance_waveform", "export_enhancer_onnx", "ideal_ratio_mask",
           "load_enhancer", "save_student", "stream_masks"]


# ---------------------------------------------------------------------------------------------
# Models


class _Enhancer:
    """A mask model behind NSNet2's frontend: ``masks(x)`` (B, frames, 161) and ``__call__(x)``
    the enhanced waveform, x (B, T) float at 16 kHz."""

    def __init__(self, mask_model: Any, name: str) -> None:
        self.mask_model, self.name = mask_model, name
        self.frontend = ns.NSNet2Features()

    def masks(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.mask_model(self.frontend(waveform))

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        return ns.apply_mask(waveform, self.masks(waveform))


def save_student(path: str | os.PathLike, student: ns.MaskStudent, **meta: Any) -> Path:
    """Write ``student`` to ``path`` as ``{"kind": "mask_student", "model": name, "kwargs":
    student.config(), "state_dict": ..., "meta": meta}`` (read back by :func:`load_enhancer`)."""
    if not isinstance(student, ns.MaskStudent):
        raise TypeError(f"student must be a MaskStudent, got {type(student).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "mask_student", "model": student.model_name,
                "kwargs": student.config(), "state_dict": student.state_dict(),
                "meta": meta}, path)
    return path


def _student_from_file(path: Path) -> ns.MaskStudent:
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"model file {str(path)!r} is not a readable torch checkpoint: "
                         f"{error}") from error
    if isinstance(data, dict) and data.get("kind") == "mask_student":
        state = data["state_dict"]
    elif isinstance(data, dict):  # an engine checkpoint: weights under "student" or "model"
        state = next((data[k] for k in ("student", "model", "state_dict")
                      if isinstance(data.get(k), dict)), None)
    else:
        state = None
    if not isinstance(state, dict) or "encode.weight" not in state:
        raise ValueError(f"model file {str(path)!r} holds no MaskStudent weights (expected a "
                         "file from kdcore.enhance.save_student or a Trainer/Distiller "
                         "checkpoint of a MaskStudent)")
    student = ns.MaskStudent(hidden=int(state["encode.weight"].shape[0]))
    student.load_state_dict(state)
    return student.eval()


def load_enhancer(model: Any) -> _Enhancer:
    """An enhancer from ``model``: a :class:`~kdcore.teachers.nsnet2.MaskStudent` (or any
    module mapping NSNet2 features (B, frames, 161) to gains), a registered teacher name
    (``"nsnet2"``), a :class:`kdcore.teachers.TeacherBundle` with a mask output, or the path of
    a student file (:func:`save_student`, or a Trainer/Distiller ``.pt`` checkpoint)."""
    if isinstance(model, _Enhancer):
        return model
    if isinstance(model, nn.Module):
        return _Enhancer(model.eval(), type(model).__name__)
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix in (".pt", ".pth") or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"model file {str(path)!r} does not exist")
            return _Enhancer(_student_from_file(path), str(path))
        from kdcore import teachers

        model = teachers.load(str(model))  # ValueError naming an unknown teacher
    output = getattr(model, "output", None)
    if output is not None and hasattr(model, "model"):
        if output.kind != "mask" or output.size != ns.BINS or output.hop != ns.HOP:
            raise ValueError(f"model {model.spec.name!r} gives {output.kind!r} outputs, not "
                             f"NSNet2-domain gain masks")
        return _Enhancer(model.model, model.spec.name)
    raise TypeError(f"model must be a MaskStudent, a teacher name, a TeacherBundle or a file "
                    f"path, got {type(model).__name__}")


def enhance_waveform(model: Any, waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE
                     ) -> torch.Tensor:
    """Enhanced ``waveform`` ((T,) or (B, T) float at ``sample_rate``, default 16000), same
    shape and dtype: resampled to 16 kHz with :class:`kdcore.Resample` when needed, masked
    (:func:`~kdcore.teachers.nsnet2.apply_mask`) and resampled back to its length."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    enhancer = load_enhancer(model)
    if not isinstance(waveform, torch.Tensor) or waveform.dim() not in (1, 2) \
            or not waveform.is_floating_point() or waveform.shape[-1] < 1:
        raise ValueError("waveform must be a non-empty (T,) or (B, T) float tensor")
    signal = waveform.to(torch.float32)
    if sample_rate != SAMPLE_RATE:
        signal = Resample(sample_rate, SAMPLE_RATE)(signal)
    out = enhancer(signal)
    if sample_rate != SAMPLE_RATE:
        out = Resample(SAMPLE_RATE, sample_rate)(out)[..., : waveform.shape[-1]]
        out = F.pad(out, (0, waveform.shape[-1] - out.shape[-1]))
    return out.to(waveform.dtype)


def enhance_file(model: Any, in_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Enhance the audio file ``in_path`` (any rate; multi-channel files are enhanced per
    channel) with ``model`` (see :func:`load_enhancer`) and write ``out_path`` at the input's
    rate, channels and length (WAV float32 for float input, else the input's subtype).
    Returns ``out_path``."""
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"in_path {str(in_path)!r} does not exist")
    try:
        data, rate = soundfile.read(str(in_path), dtype="float32", always_2d=True)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"in_path {str(in_path)!r} is not readable audio: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"in_path {str(in_path)!r} has no samples")
    info = soundfile.info(str(in_path))
    enhanced = enhance_waveform(model, torch.from_numpy(data.T.copy()), int(rate))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "FLOAT" if info.subtype in ("FLOAT", "DOUBLE") else info.subtype
    if out_path.suffix.lower() != in_path.suffix.lower():
        subtype = None
    soundfile.write(str(out_path), enhanced.numpy().T, int(rate), subtype=subtype)
    return out_path


def enhance_folder(model: Any, in_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   extensions: tuple[str, ...] = WAV_EXTENSIONS) -> list[Path]:
    """Enhance every file under ``in_dir`` (recursively) whose suffix is in ``extensions``
    (default ``.wav``, ``.flac``) into the same relative path under ``out_dir``; the model is
    loaded once. Returns the written paths, sorted."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"in_dir {str(in_dir)!r} is not a folder")
    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in extensions)
    if not files:
        raise ValueError(f"in_dir {str(in_dir)!r} holds no {'/'.join(extensions)} files")
    enhancer = load_enhancer(model)
    return [enhance_file(enhancer, f, out_dir / f.relative_to(in_dir)) for f in files]


def enhance_path(model: Any, in_path: str | os.PathLike, out_path: str | os.PathLike
                 ) -> list[Path]:
    """``kdcore enhance --model M IN OUT``: :func:`enhance_folder` when ``in_path`` is a folder
    (``out_path`` a folder), else :func:`enhance_file`. Returns the written paths."""
    if Path(in_path).is_dir():
        return enhance_folder(model, in_path, out_path)
    return [enhance_file(model, in_path, out_path)]


# ---------------------------------------------------------------------------------------------
# Training data


def ideal_ratio_mask(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Ideal ratio mask in NSNet2's feature domain, (B, ceil(T / 160), 161) float32 from
    ``clean`` and ``noise`` waveforms (B, T) or (T,) at 16 kHz (``noisy = clean + noise``):
    ``sqrt(|S|^2 / (|S|^2 + |N|^2))`` per bin of :func:`~kdcore.teachers.nsnet2.spectrum`
    (float64), clipped to ``[MIN_GAIN, 1]`` as NSNet2's gains; bins where both are 0 give
    ``MIN_GAIN``."""
    if clean.shape != noise.shape:
        raise ValueError(f"clean and noise must have the same shape, got {tuple(clean.shape)} "
                         f"and {tuple(noise.shape)}")
    speech = ns.spectrum(clean).abs().square()
    total = speech + ns.spectrum(noise).abs().square()
    ratio = torch.where(total > 0, speech / total.clamp(min=1e-300), torch.zeros_like(total))
    return ratio.sqrt().clamp(ns.MIN_GAIN, 1.0).to(torch.float32)


class SpeechClips(Dataset):
    """Clean speech from a manifest CSV (``path`` and ``speaker`` columns, paths relative to
    the manifest), resampled to ``sample_rate`` (default 16000) with :class:`kdcore.Resample`
    and centre-cropped or zero-padded to ``seconds`` (default 1.0). ``speakers``: keep only
    these (default None: all); ``limit``: at most this many clips per speaker, in manifest
    order (default None). Items are dicts ``{"waveform": (T,) float32, "speaker": str}``; clips
    are loaded once, in memory."""

    def __init__(self, manifest: str | os.PathLike, *, speakers: list[str] | None = None,
                 sample_rate: int = SAMPLE_RATE, seconds: float = 1.0,
                 limit: int | None = None) -> None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"manifest {str(manifest)!r} does not exist")
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "path" not in rows[0] or "speaker" not in rows[0]:
            raise ValueError(f"manifest {str(manifest)!r} needs 'path' and 'speaker' columns")
        wanted = None if speakers is None else {str(s) for s in speakers}
        kept: list[dict] = []
        per: dict[str, int] = {}
        for row in rows:
            if wanted is not None and row["speaker"] not in wanted:
                continue
            if limit is not None and per.get(row["speaker"], 0) >= limit:
                continue
            per[row["speaker"]] = per.get(row["speaker"], 0) + 1
            kept.append(row)
        if not kept:
            raise ValueError(f"no clip of speakers {speakers} in {str(manifest)!r}")
        self.sample_rate, self.length = int(sample_rate), int(round(seconds * sample_rate))
        self.paths = [str(manifest.parent / r["path"]) for r in kept]
        self.speakers = [r["speaker"] for r in kept]
        self.clips = [self._load(p) for p in self.paths]

    def _load(self, path: str) -> torch.Tensor:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        wave = torch.from_numpy(data.mean(1))
        if rate != self.sample_rate:
            wave = Resample(int(rate), self.sample_rate)(wave)
        extra = wave.shape[0] - self.length
        if extra > 0:
            wave = wave[extra // 2: extra // 2 + self.length]
        return F.pad(wave, (0, self.length - wave.shape[0])).contiguous()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        return {"waveform": self.clips[index], "speaker": self.speakers[index]}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.sample_rate}:{self.length}".encode())
        for path, speaker in zip(self.paths, self.speakers, strict=True):
            digest.update(f"{path}|{speaker}|{os.path.getsize(path)}".encode())
        return digest.hexdigest()[:16]


class MaskPairs(Dataset):
    """Training items for a mask student from ``mixtures`` (a
    :class:`kdcore.data.NoisyMixtures` of equal-length clips at 16 kHz): ``{"waveform": noisy
    (T,), "label": ideal_ratio_mask(clean, noise) (frames, 161), "index": i}``, the layout of
    the engine's ``regression`` task (``label`` for the IRM term, ``index`` for the teacher
    cache)."""

    def __init__(self, mixtures: Dataset) -> None:
        if getattr(mixtures, "sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ValueError(f"mixtures must be at {SAMPLE_RATE} Hz, got "
                             f"{mixtures.sample_rate}")
        self.mixtures = mixtures

    def __len__(self) -> int:
        return len(self.mixtures)

    def __getitem__(self, index: int) -> dict:
        item = self.mixtures[index]
        return {"waveform": item["noisy"], "index": index,
                "label": ideal_ratio_mask(item["clean"], item["noise"])[0]}

    def fingerprint(self) -> str:
        inner = getattr(self.mixtures, "fingerprint", None)
        return "mask_pairs:" + (inner() if callable(inner) else str(len(self.mixtures)))


# ---------------------------------------------------------------------------------------------
# Streaming and export


def stream_masks(student: ns.MaskStudent, features: torch.Tensor) -> torch.Tensor:
    """Masks of ``student`` computed one frame at a time, carrying the GRU state (1, B,
    hidden) between calls, as a causal real-time loop would: features (B, frames, 161) ->
    (B, frames, 161)."""
    state, out = None, []
    with torch.no_grad():
        for t in range(features.shape[1]):
            hidden, state = student.gru(torch.relu(student.encode(features[:, t: t + 1])), state)
            out.append(torch.sigmoid(student.decode(hidden)))
    return torch.cat(out, 1)


class ExportedEnhancer(nn.Module):
    """``mask_model`` behind NSNet2's frontend and resynthesis in ops ONNX carries: waveform
    (B, T) float32 at 16 kHz -> (mask (B, ceil(T / 160), 161), enhanced (B, T)), both float32.

    Framing is a strided identity convolution over the waveform right-padded with 319 zeros
    (so ``ceil(T / 160)`` frames, each with zeros past ``T``); the DFT and inverse DFT are
    float64 matrix products with the ``sqrt(hann)`` window folded in; overlap-add is a
    transposed identity convolution at hop 160. Equals
    ``apply_mask(x, mask_model(NSNet2Features()(x)))`` up to float rounding."""

    def __init__(self, mask_model: nn.Module) -> None:
        super().__init__()
        self.mask_model = mask_model
        n = torch.arange(ns.N_FFT, dtype=torch.float64)
        k = torch.arange(ns.BINS, dtype=torch.float64)
        angle = 2.0 * torch.pi * n[:, None] * k[None, :] / ns.N_FFT  # (320, 161)
        win = ns.window()
        self.register_buffer("cosine", win[:, None] * torch.cos(angle), persistent=False)
        self.register_buffer("sine", -win[:, None] * torch.sin(angle), persistent=False)
        # inverse real DFT: x[n] = (1/N) sum_k w_k (Re X_k cos - Im X_k sin), w = 1, 2, ..., 2, 1
        weight = torch.full((ns.BINS,), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0
        self.register_buffer("inv_cosine", (weight[:, None] * torch.cos(angle.T)) / ns.N_FFT
                             * win[None, :], persistent=False)
        self.register_buffer("inv_sine", (-weight[:, None] * torch.sin(angle.T)) / ns.N_FFT
                             * win[None, :], persistent=False)
        self.register_buffer("framing", torch.eye(ns.WINDOW)[:, None, :], persistent=False)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = waveform.shape[-1]
        signal = F.pad(waveform.float()[:, None, :], (0, ns.WINDOW - 1))
        frames = F.conv1d(signal, self.framing, stride=ns.HOP).transpose(1, 2).double()
        real, imag = frames @ self.cosine, frames @ self.sine  # (B, frames, 161)
        power = real.square() + imag.square()
        features = torch.log10(power.clamp(min=ns.POWER_FLOOR)).float()
        mask = self.mask_model(features)
        gain = mask.double()
        framed = (real * gain) @ self.inv_cosine + (imag * gain) @ self.inv_sine
        signal = F.conv_transpose1d(framed.float().transpose(1, 2), self.framing,
                                    stride=ns.HOP)[:, 0]
        return mask, signal[:, :samples]


def export_enhancer_onnx(model: Any, out_path: str | os.PathLike, *,
                         example_samples: int = 16000) -> Path:
    """Export a mask student (anything :func:`load_enhancer` accepts that is a torch module:
    a :class:`~kdcore.teachers.nsnet2.MaskStudent` or a student file) with its frontend as
    ONNX (opset 18): input ``waveform`` (B, T) float32 at 16 kHz, outputs ``mask`` (B, frames,
    161) and ``enhanced`` (B, T); batch and T are dynamic. ``example_samples`` (default
    16000) is the traced example's length. Returns ``out_path``."""
    enhancer = load_enhancer(model)
    if not isinstance(enhancer.mask_model, nn.Module):
        raise TypeError(f"model {enhancer.name!r} is not a torch module and cannot be exported "
                        "(the nsnet2 teacher is already an ONNX file)")
    network = ExportedEnhancer(enhancer.mask_model).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, int(example_samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), str(out), input_names=["waveform"],
                          output_names=["mask", "enhanced"],
                          dynamic_axes={"waveform": {0: "batch", 1: "samples"},
                                        "mask": {0: "batch", 1: "frames"},
                                        "enhanced": {0: "batch", 1: "samples"}},
                          opset_version=18, dynamo=False)
    return out
