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
- Paired noisy,clean data (:func:`read_paired_manifest`): :func:`train_mask_student` (``kdcore
  train --model mask_student`` / ``kdcore distill --teacher nsnet2 --student mask_student``,
  ``--task regression``) and :func:`evaluate_enhancement` (``kdcore eval``: SI-SDRi, PESQ,
  STOI per SNR for the noisy input, the model and the teacher).
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

from kdcore.data.sources import read_rows
from kdcore.resample import Resample
from kdcore.teachers import nsnet2 as ns

SAMPLE_RATE = ns.SAMPLE_RATE
WAV_EXTENSIONS = (".wav", ".flac")

__all__ = ["ExportedEnhancer", "MaskPairs", "PairedClip", "PairedSegments", "SpeechClips",
           "clip_scores", "enhance_file", "enhance_folder", "enhance_path", "enhance_waveform",
           "evaluate_enhancement", "export_enhancer_onnx", "ideal_ratio_mask",
           "is_enhancement_eval", "is_mask_model", "is_paired_data",
           "load_enhancer", "mean_scores",
           "read_paired_manifest", "save_student", "stream_masks", "train_mask_student",
           "write_enhancement_report"]


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
        data = torch.load(path, map_location="cpu", weights_only=True)
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


def _file_key(path: Path) -> str:
    """``path`` with its size and modification time: a rewritten file changes the key."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class PairedSegments(Dataset):
    """Training items from paired clips (:func:`read_paired_manifest` rows): each pair is read
    as mono, resampled to 16 kHz (:class:`kdcore.Resample`) and cut into ``seconds`` (default
    1.0) segments, the last zero-padded; item ``i`` is ``{"waveform": noisy (T,), "label":
    ideal_ratio_mask(clean, noisy - clean) (frames, 161), "index": i}`` (the layout of
    :class:`MaskPairs`). Segments are fixed, so a teacher cache keyed by index stays valid."""

    def __init__(self, pairs: list[PairedClip], seconds: float = 1.0) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds!r}")
        length = int(round(seconds * SAMPLE_RATE))
        self.noisy: list[torch.Tensor] = []
        self.clean: list[torch.Tensor] = []
        self.names: list[str] = []
        for pair in pairs:
            noisy, clean = _read_16k(pair.noisy), _read_16k(pair.clean)
            if noisy.shape != clean.shape:
                raise ValueError(f"row {pair.row}: noisy {str(pair.noisy)!r} and clean "
                                 f"{str(pair.clean)!r} differ in length at 16 kHz "
                                 f"({noisy.shape[0]} and {clean.shape[0]} samples)")
            for start in range(0, noisy.shape[0], length):
                pad = max(0, start + length - noisy.shape[0])
                self.noisy.append(F.pad(noisy[start: start + length], (0, pad)))
                self.clean.append(F.pad(clean[start: start + length], (0, pad)))
                self.names.append(f"{_file_key(pair.noisy)}|{_file_key(pair.clean)}@{start}")
        if not self.noisy:
            raise ValueError("no training segments: the pairs are empty")

    def __len__(self) -> int:
        return len(self.noisy)

    def __getitem__(self, index: int) -> dict:
        noisy, clean = self.noisy[index], self.clean[index]
        return {"waveform": noisy, "index": index,
                "label": ideal_ratio_mask(clean.double(), (noisy.double() - clean.double()))[0]}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(str(self.noisy[0].shape[0]).encode())
        for name in self.names:
            digest.update(name.encode())
        return "paired_segments:" + digest.hexdigest()[:16]


def train_mask_student(data: str | os.PathLike, out: str | os.PathLike, *,
                       teacher: str | None = None, alpha: float = 1.0, hidden: int = 128,
                       epochs: int = 5, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                       seconds: float = 1.0, split: str | None = "train",
                       device: str = "cpu", progress: bool = False,
                       resume: bool = False) -> Path:
    """Train a :class:`~kdcore.teachers.nsnet2.MaskStudent` on paired noisy,clean data
    (:func:`read_paired_manifest`, cut by :class:`PairedSegments`) with the engine's
    ``regression`` task (MSE on NSNet2-domain gain masks) and save it with
    :func:`save_student` as ``out/student.pt`` (returned); the engine's checkpoints and
    history go to ``out`` too.

    - ``teacher`` None (default): alone, on ideal ratio masks (:class:`kdcore.Trainer`).
    - ``teacher="nsnet2"``: :class:`kdcore.Distiller` from the teacher's cached masks, loss
      ``alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, IRM)`` (``alpha`` default
      1.0: KD alone; 0.5 weighs both).

    Other defaults: ``hidden`` 128, ``epochs`` 5, ``batch_size`` 16, ``lr`` 3e-3, ``seed`` 0
    (init and data order), ``seconds`` 1.0 (segment length), ``split`` "train" (the rows of
    that ``split`` when the manifest has the column, else every row; None: every row),
    ``device`` "cpu", ``progress`` False, ``resume`` False (True continues from
    ``out/checkpoints/last.pt`` when it exists; False starts afresh and replaces it)."""
    import kdcore

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    segments = PairedSegments(read_paired_manifest(data, split=split), seconds=seconds)
    out = Path(out)
    torch.manual_seed(seed)
    student = ns.MaskStudent(hidden=hidden)
    loader = torch.utils.data.DataLoader(segments, batch_size=batch_size, shuffle=True)
    common = {"task": "regression", "distance": "mse", "frontend": ns.NSNet2Features(),
              "lr": lr, "progress": progress, "device": device, "seed": seed}
    if teacher is None:
        runner = kdcore.Trainer(student, **common)
    else:
        if teacher != "nsnet2":
            raise ValueError(f"teacher must be None or 'nsnet2', got {teacher!r}")
        from kdcore import teachers

        bundle = teachers.load(teacher)
        runner = kdcore.Distiller(bundle.model, student, alpha=alpha,
                                  teacher_fingerprint=bundle.fingerprint, **common)
    history = runner.fit(loader, epochs=epochs, out_dir=out, resume=resume)
    return save_student(out / "student.pt", student.eval(), teacher=teacher,
                        alpha=alpha if teacher is not None else 0.0, epochs=epochs,
                        segments=len(segments), data=str(data),
                        final_train_loss=history.last.get("train_loss"))


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


# ---------------------------------------------------------------------------------------------
# Evaluation

SCORE_KEYS = ("si_sdr_db", "si_sdri_db", "pesq_wb", "stoi")


def clip_scores(clean: Any, noisy: Any, estimate: Any) -> dict[str, float]:
    """Scores of one enhanced clip, all (T,) float at 16 kHz (:mod:`kdcore.eval.metrics`):
    ``si_sdr_db`` (estimate vs clean), ``si_sdri_db`` (minus the noisy input's SI-SDR),
    ``pesq_wb`` (P.862.2; NaN where the ``pesq`` package finds no utterance in the clip) and
    ``stoi``. Raises :class:`~kdcore.eval.metrics.MetricUnavailableError` without ``pesq`` or
    ``pystoi``."""
    import numpy as np

    from kdcore.eval import metrics

    ref, mix, est = (np.asarray(torch.as_tensor(x).double().cpu(), dtype=np.float64)
                     for x in (clean, noisy, estimate))
    try:
        pesq = float(metrics.pesq_wb(ref, est))
    except metrics.MetricUnavailableError:
        raise
    except Exception as error:  # noqa: BLE001 - the pesq package's error class is private
        if "utterance" not in str(error).lower():
            raise
        pesq = float("nan")
    return {"si_sdr_db": float(metrics.si_sdr(est, ref)),
            "si_sdri_db": float(metrics.si_sdr_improvement(est, mix, ref)),
            "pesq_wb": pesq, "stoi": float(metrics.stoi(ref, est, SAMPLE_RATE))}


def mean_scores(scores: list[dict[str, float]], digits: int = 4) -> dict[str, Any]:
    """Means of :func:`clip_scores` rows: ``clips``, each of ``SCORE_KEYS`` rounded to
    ``digits`` (default 4; ``pesq_wb`` over the clips with a PESQ value, None if none has one)
    and ``pesq_failed_clips`` (clips without one)."""
    import numpy as np

    if not scores:
        raise ValueError("scores is empty: no clip to average")
    out: dict[str, Any] = {"clips": len(scores)}
    for key in SCORE_KEYS:
        values = np.asarray([row[key] for row in scores], dtype=np.float64)
        finite = values[np.isfinite(values)] if key == "pesq_wb" else values
        out[key] = round(float(finite.mean()), digits) if finite.size else None
    out["pesq_failed_clips"] = int(sum(not np.isfinite(row["pesq_wb"]) for row in scores))
    return out


class PairedClip:
    """One row of a paired enhancement manifest: ``noisy`` and ``clean`` paths, ``snr_db``
    (the manifest's value, else None), ``row`` (1-based data row, for messages)."""

    __slots__ = ("clean", "noisy", "row", "snr_db")

    def __init__(self, noisy: Path, clean: Path, snr_db: float | None, row: int) -> None:
        self.noisy, self.clean, self.snr_db, self.row = noisy, clean, snr_db, row


def read_paired_manifest(data: str | os.PathLike, *, split: str | None = None
                         ) -> list[PairedClip]:
    """The (noisy, clean) pairs of ``data``:

    - a CSV manifest with ``noisy`` and ``clean`` columns (paths relative to the manifest's
      folder, or absolute) and optional ``snr_db`` (float) and ``split`` columns;
    - a folder holding such a ``manifest.csv``;
    - a folder with ``noisy/`` and ``clean/`` subfolders holding the same relative WAV/FLAC
      paths.

    ``split`` (default None: every row) keeps the rows whose ``split`` is this value, when the
    manifest has a ``split`` column. Errors name the file, the column and the row: a missing
    column, an empty cell, a missing audio file, a non-numeric ``snr_db``, no rows."""
    path = Path(data)
    if path.is_dir() and not (path / "manifest.csv").is_file():
        return _paired_folders(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"--data {str(data)!r} is neither a paired manifest CSV nor a "
                                "folder (with manifest.csv, or noisy/ and clean/ subfolders)")
    columns, rows = read_rows(path)
    for column in ("noisy", "clean"):
        if column not in columns:
            raise ValueError(f"manifest {str(path)!r} has no {column!r} column (a paired "
                             f"enhancement manifest needs 'noisy' and 'clean' columns; it has "
                             f"{columns})")
    if split is not None and "split" in columns:
        rows_kept = [(i, r) for i, r in enumerate(rows, 1) if r["split"] == split]
        if not rows_kept:
            raise ValueError(f"manifest {str(path)!r} has no row with split {split!r}")
    else:
        rows_kept = list(enumerate(rows, 1))
    if not rows_kept:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    pairs = []
    for number, row in rows_kept:
        files = {}
        for column in ("noisy", "clean"):
            if not row[column]:
                raise ValueError(f"manifest {str(path)!r} row {number}: empty {column!r} cell")
            file = Path(row[column])
            file = file if file.is_absolute() else path.parent / file
            if not file.is_file():
                raise FileNotFoundError(f"manifest {str(path)!r} row {number}: {column} file "
                                        f"{str(file)!r} does not exist")
            files[column] = file
        snr = None
        if row.get("snr_db"):
            try:
                snr = float(row["snr_db"])
            except ValueError:
                raise ValueError(f"manifest {str(path)!r} row {number}: snr_db "
                                 f"{row['snr_db']!r} is not a number") from None
        pairs.append(PairedClip(files["noisy"], files["clean"], snr, number))
    return pairs


def _paired_folders(folder: Path) -> list[PairedClip]:
    for sub in ("noisy", "clean"):
        if not (folder / sub).is_dir():
            raise ValueError(f"--data folder {str(folder)!r} has neither manifest.csv nor a "
                             f"{sub!r} subfolder (paired enhancement data: a manifest with "
                             "'noisy' and 'clean' columns, or noisy/ and clean/ folders)")
    noisy = sorted(p for p in (folder / "noisy").rglob("*")
                   if p.suffix.lower() in WAV_EXTENSIONS)
    if not noisy:
        raise ValueError(f"{str(folder / 'noisy')!r} holds no {'/'.join(WAV_EXTENSIONS)} files")
    pairs = []
    for number, file in enumerate(noisy, 1):
        clean = folder / "clean" / file.relative_to(folder / "noisy")
        if not clean.is_file():
            raise FileNotFoundError(f"clean file {str(clean)!r} for {str(file)!r} does not "
                                    "exist")
        pairs.append(PairedClip(file, clean, None, number))
    return pairs


def _read_16k(path: Path) -> torch.Tensor:
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{str(path)!r} is not readable audio: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"{str(path)!r} has no samples")
    wave = torch.from_numpy(data.mean(1))
    return wave if rate == SAMPLE_RATE else Resample(int(rate), SAMPLE_RATE)(wave)


def _snr_key(value: float) -> str:
    return f"{round(value):d}dB"


def evaluate_enhancement(models: dict[str, Any] | Any, data: str | os.PathLike, *,
                         teacher: str | None = "nsnet2", split: str | None = None,
                         out: str | os.PathLike | None = None,
                         title: str | None = None) -> dict[str, Any]:
    """Score enhancement models on paired data (:func:`read_paired_manifest`).

    Every clip is read as mono, resampled to 16 kHz with :class:`kdcore.Resample` (noisy and
    clean must then have the same length), enhanced by each model (:func:`load_enhancer`:
    a student file, a module, a teacher name) and scored with :func:`clip_scores` (SI-SDR,
    SI-SDR improvement, wide-band PESQ, STOI). The noisy input is scored as the system
    ``noisy``; ``teacher`` (default ``"nsnet2"``; None for none) is added as a system unless a
    model already is it. Clips are grouped by SNR: the manifest's ``snr_db`` column rounded to
    whole dB, else the measured ``10 log10(|clean|^2 / |noisy - clean|^2)`` rounded to whole
    dB; ``all`` holds every clip.

    Args:
        models: one model or ``{name: model}``; a single model is named after itself.
        data: a paired manifest CSV or folder.
        teacher: a registered teacher to compare with (default "nsnet2").
        split: manifest ``split`` value to keep (default None: all rows).
        out: folder to write ``report.json`` and ``report.md`` (default None: no files).
        title: heading of ``report.md`` (default: the data path).

    Returns ``{"data", "split", "clips", "sample_rate", "systems", "results": {group: {"clips":
    n, system: mean_scores(...)}}}`` with groups ``all`` then each SNR, lowest first."""
    if not isinstance(models, dict):
        models = {str(models) if isinstance(models, (str, os.PathLike))
                  else type(models).__name__: models}
    if not models:
        raise ValueError("models is empty: give at least one model to evaluate")
    if "noisy" in models:
        raise ValueError("models: the name 'noisy' is the unprocessed input's; rename the model")
    pairs = read_paired_manifest(data, split=split)  # a bad manifest fails before models load
    systems: dict[str, Any] = {"noisy": None}
    for name, model in models.items():
        systems[str(name)] = load_enhancer(model)
    if teacher is not None and teacher not in systems:
        systems[teacher] = load_enhancer(teacher)
    scores: dict[str, dict[str, list]] = {}
    for pair in pairs:
        noisy, clean = _read_16k(pair.noisy), _read_16k(pair.clean)
        if noisy.shape != clean.shape:
            raise ValueError(f"row {pair.row}: noisy {str(pair.noisy)!r} has {noisy.shape[0]} "
                             f"samples at 16 kHz and clean {str(pair.clean)!r} "
                             f"{clean.shape[0]}: a pair must have the same length")
        if pair.snr_db is not None:
            group = _snr_key(pair.snr_db)
        else:
            noise = float((noisy.double() - clean.double()).square().sum())
            speech = float(clean.double().square().sum())
            group = _snr_key(10.0 * torch.log10(torch.tensor(speech / noise)).item()) \
                if noise > 0 and speech > 0 else "clean" if noise == 0 else "silent"
        for name, enhancer in systems.items():
            estimate = noisy if enhancer is None else enhancer(noisy[None])[0]
            row = clip_scores(clean, noisy, estimate)
            for key in ("all", group):
                scores.setdefault(key, {}).setdefault(name, []).append(row)

    def order(key: str) -> tuple:
        return (0, 0.0) if key == "all" else (1, float(key[:-2])) if key.endswith("dB") \
            else (2, 0.0)

    results = {key: {"clips": len(scores[key]["noisy"]),
                     **{name: mean_scores(rows) for name, rows in scores[key].items()}}
               for key in sorted(scores, key=order)}
    report = {"data": str(data), "split": split, "clips": len(pairs),
              "sample_rate": SAMPLE_RATE, "systems": list(systems),
              "metrics": "means over clips: si_sdr_db, si_sdri_db (improvement over the noisy "
                         "input), pesq_wb (P.862.2, over clips where PESQ finds speech; "
                         "pesq_failed_clips counts the others), stoi",
              "results": results}
    if out is not None:
        write_enhancement_report(report, out, title=title)
    return report


def write_enhancement_report(report: dict[str, Any], out: str | os.PathLike, *,
                             title: str | None = None) -> Path:
    """Write ``report`` (from :func:`evaluate_enhancement`) to ``out/report.json`` and a table
    per SNR group to ``out/report.md``. Returns ``out``."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Enhancement: {title or report['data']}", "",
             f"{report['clips']} clips at {report['sample_rate']} Hz; {report['metrics']}.", "",
             "| SNR | system | clips | SI-SDR (dB) | SI-SDRi (dB) | PESQ (wb) | STOI |",
             "|---|---|---|---|---|---|---|"]

    def cell(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}"

    for group, row in report["results"].items():
        for name in report["systems"]:
            r = row[name]
            lines.append(f"| {group} | `{name}` | {r['clips']} | {cell(r['si_sdr_db'])} | "
                         f"{cell(r['si_sdri_db'])} | {cell(r['pesq_wb'])} | "
                         f"{cell(r['stoi'])} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out


def is_paired_data(data: str | os.PathLike | None, *, folders: bool = True) -> bool:
    """Whether ``data`` looks like paired enhancement data: a CSV (or a folder's
    ``manifest.csv``) whose header has a ``noisy`` column, or a ``clean`` column and no
    ``path`` column (the other one is checked by :func:`read_paired_manifest`); with
    ``folders`` (default True) also a folder with ``noisy/`` and ``clean/`` subfolders (which a
    class-per-folder data set of those two classes looks like too)."""
    if data is None:
        return False
    path = Path(data)
    if folders and path.is_dir() and (path / "noisy").is_dir() and (path / "clean").is_dir():
        return True
    csv_path = path / "manifest.csv" if path.is_dir() else path
    if not (csv_path.is_file() and csv_path.suffix.lower() == ".csv"):
        return False
    with open(csv_path, newline="") as handle:
        header = {c.strip() for c in next(csv.reader(handle), [])}
    return "noisy" in header or ("clean" in header and "path" not in header)


def is_mask_model(model: Any) -> bool:
    """Whether ``model`` names a mask student file (:func:`save_student`, or a Trainer or
    Distiller checkpoint of a :class:`~kdcore.teachers.nsnet2.MaskStudent`) or the registered
    gain-mask teacher ``nsnet2``."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    path = Path(model)
    if path.is_file():
        try:
            _student_from_file(path)
        except ValueError:
            return False
        return True
    from kdcore import teachers

    try:
        spec = teachers.spec(str(model))
    except ValueError:  # not a registered teacher name
        return False
    return spec.module == "nsnet2"


def is_enhancement_eval(model: Any, data: str | os.PathLike | None) -> bool:
    """Whether ``kdcore eval --model M --data D`` is an enhancement evaluation: ``model`` is a
    mask model (:func:`is_mask_model`), or ``data`` is a paired manifest
    (:func:`is_paired_data` without the folder form, which a class-per-folder data set can
    look like)."""
    return is_mask_model(model) or is_paired_data(data, folders=False)
