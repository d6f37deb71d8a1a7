"""Speaker-embedding distillation from the Resemblyzer encoder (registry entry ``resemblyzer``).

- Data: :func:`read_speaker_manifest` (``path`` and ``speaker`` columns of a CSV, optional
  ``split``), :func:`load_clips` (16 kHz, RMS-normalised, fixed-length waveforms) and
  :class:`SpeakerClips`, the training set: each clip plus ``copies`` seeded augmented versions
  (speed perturbation, a leading shift, additive white/pink/brown noise), no labels needed.
- Student: :class:`SpeakerStudentTDNN`, a small time-delay network (dilated 1-D convolutions)
  on kdcore's :class:`~kdcore.frontend.LogMel`, statistics pooling, a linear layer and L2
  normalisation: waveform (B, T) -> unit-norm embedding (B, 256), about 1/6 of the teacher's
  parameters.
- Training: :func:`distill_speaker` runs ``kdcore.Distiller(task="regression",
  distance="cosine", teacher_mode="cached")``: the loss per clip is ``1 - cos(student,
  teacher)`` on the teacher's utterance embedding (one 1.6 s partial per clip).
- Metrics: :func:`embed` (embeddings of many clips), :func:`verification_eer` (equal error
  rate over all trial pairs of held-out speakers), :func:`evaluate_speaker` (EER of a model and
  its mean cosine to the teacher).
- Files: :func:`save_speaker_student` / :func:`load_speaker_model`; ``kdcore eval --model
  student.pt --data manifest.csv`` calls :func:`eval_command` for such a file.

Every waveform goes through one preprocessing, for the teacher and the student alike: mono,
resampled to 16 kHz with :class:`kdcore.Resample`, scaled to an RMS of -30 dBFS (the level the
resemblyzer package normalises to), then cut or zero-padded at the end to ``clip_samples``
(default 16000, 1 s). The teacher pads each clip to its 1.6 s partial itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcore.data.noise import make_noise, mix_at_snr
from kdcore.data.sources import read_rows
from kdcore.frontend import LogMel
from kdcore.resample import Resample

SAMPLE_RATE = 16000
EMBEDDING = 256
CLIP_SAMPLES = 16000
TARGET_RMS_DB = -30.0
STUDENT_FILE_KIND = "speaker_student"
NOISE_KINDS = ("white", "pink", "brown")
SPEED_RATES = (14000, 15000, 17000, 18000)  # resampled to this rate, played at 16 kHz

__all__ = ["CLIP_SAMPLES", "EMBEDDING", "ResemblyzerTeacher", "SpeakerClips",
           "SpeakerStudentTDNN", "distill_speaker", "embed", "eval_command", "evaluate_speaker",
           "is_speaker_model", "load_clips", "load_speaker_model", "read_speaker_manifest",
           "save_speaker_student", "speaker_macs", "verification_eer"]


# ---------------------------------------------------------------------------------------------
# Data


def read_speaker_manifest(manifest: str | os.PathLike, *, split: str | None = None,
                          speakers: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """Audio paths (relative to the CSV resolved) and their speakers from a manifest with
    ``path`` and ``speaker`` columns (names and values stripped of spaces). ``split`` (default
    None: every row) keeps rows whose ``split`` column equals it; ``speakers`` (default None:
    all) keeps those speakers. Rows are kept in file order. A missing column or an empty
    selection raises ``ValueError``, a missing manifest or audio file ``FileNotFoundError``."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {str(manifest)!r} does not exist")
    columns, rows = read_rows(manifest)
    missing = [c for c in ("path", "speaker") if c not in columns]
    if missing:
        raise ValueError(f"manifest {str(manifest)!r} has no {missing} column(s); speaker "
                         f"evaluation needs 'path' and 'speaker' (columns: {columns})")
    if split is not None and "split" not in columns:
        raise ValueError(f"manifest {str(manifest)!r} has no 'split' column for "
                         f"split={split!r}")
    wanted = None if speakers is None else {str(s) for s in speakers}
    paths, names = [], []
    for line, row in enumerate(rows, start=2):
        if split is not None and row["split"] != split:
            continue
        if wanted is not None and row["speaker"] not in wanted:
            continue
        if not row["speaker"]:
            raise ValueError(f"manifest {str(manifest)!r} line {line}: empty 'speaker'")
        path = manifest.parent / row["path"]
        if not path.is_file():
            raise FileNotFoundError(f"manifest {str(manifest)!r} line {line}: audio file "
                                    f"{str(path)!r} does not exist")
        paths.append(path)
        names.append(row["speaker"])
    if not paths:
        raise ValueError(f"manifest {str(manifest)!r}: no rows for split={split!r}, "
                         f"speakers={None if wanted is None else sorted(wanted)}")
    if wanted is not None and set(names) != wanted:
        raise ValueError(f"manifest {str(manifest)!r}: speakers {sorted(wanted - set(names))} "
                         "not found")
    return paths, names


def _normalise_level(waveform: torch.Tensor) -> torch.Tensor:
    rms = waveform.double().square().mean().sqrt()
    if rms == 0:
        return waveform
    return (waveform.double() * (10.0 ** (TARGET_RMS_DB / 20.0) / rms)).to(waveform.dtype)


def _fit(waveform: torch.Tensor, clip_samples: int) -> torch.Tensor:
    waveform = waveform[:clip_samples]
    return F.pad(waveform, (0, clip_samples - waveform.shape[-1]))


def load_clips(sources: Sequence[str | os.PathLike | torch.Tensor | np.ndarray], *,
               sample_rate: int = SAMPLE_RATE, clip_samples: int | None = CLIP_SAMPLES,
               ) -> list[torch.Tensor]:
    """Waveforms ready for the teacher and the student: float32 (clip_samples,) at 16 kHz.

    ``sources``: audio file paths (any rate: resampled with :class:`kdcore.Resample`; channels
    averaged) or waveforms (T,) at ``sample_rate`` (default 16000). Each is scaled to an RMS of
    -30 dBFS (silent clips are left as they are), then cut or zero-padded at the end to
    ``clip_samples`` (default 16000; None keeps every length)."""
    resamplers: dict[int, Resample] = {}
    clips = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            try:
                audio, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
            except Exception as error:  # noqa: BLE001 - any unreadable file is reported alike
                raise ValueError(f"cannot read audio file {str(source)!r}: {error}") from error
            waveform, rate = torch.from_numpy(audio.mean(axis=1)), int(rate)
        else:
            waveform, rate = torch.as_tensor(source, dtype=torch.float32), sample_rate
            if waveform.dim() != 1:
                raise ValueError(f"a waveform in sources must be 1-D (T,), got shape "
                                 f"{tuple(waveform.shape)}")
        if waveform.numel() == 0:
            raise ValueError(f"empty audio: {source if isinstance(source, (str, Path)) else ''}")
        if rate != SAMPLE_RATE:
            resamplers.setdefault(rate, Resample(rate, SAMPLE_RATE))
            waveform = resamplers[rate](waveform)
        waveform = _normalise_level(waveform.float())
        clips.append(waveform if clip_samples is None else _fit(waveform, clip_samples))
    return clips


class SpeakerClips(Dataset):
    """Unlabelled training items for the engine: ``{"waveform": (clip_samples,) float32,
    "index": i}``. Items ``0 .. N-1`` are ``clips`` themselves; item ``N * c + i`` for
    ``c = 1 .. copies`` is an augmented copy of clip ``i``, a function of ``seed``, ``c`` and the
    clip's samples only (not of its position, so the same clip gets the same copies in any
    subset, and the teacher cache stays valid): a speed change by resampling 16 kHz to a rate drawn
    from :data:`SPEED_RATES` (factors 1.14, 1.07, 0.94, 0.89; pitch moves with tempo: new
    voices for the teacher to label), a leading silence of up to
    ``max_shift`` samples, additive white, pink or brown noise (:mod:`kdcore.data.noise`) at an
    SNR uniform in ``snr_db``, then the level and length of :func:`load_clips`.

    Args: ``clips`` 1-D waveforms at 16 kHz (from :func:`load_clips` with ``clip_samples=None``
    or fixed length); ``copies`` default 2; ``clip_samples`` default 16000; ``snr_db`` default
    (5, 30); ``max_shift`` default 2400 (0.15 s); ``seed`` default 0. Items are computed once
    and kept in memory (64 kB each at 1 s)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, clips: Sequence[torch.Tensor], *, copies: int = 2,
                 clip_samples: int = CLIP_SAMPLES, snr_db: tuple[float, float] = (5.0, 30.0),
                 max_shift: int = 2400, seed: int = 0) -> None:
        if not clips:
            raise ValueError("clips is empty")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
            raise ValueError(f"copies must be an int >= 0, got {copies!r}")
        if not snr_db[0] <= snr_db[1]:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db!r}")
        self.clips = [torch.as_tensor(c, dtype=torch.float32) for c in clips]
        self.copies, self.clip_samples, self.snr_db = copies, clip_samples, tuple(snr_db)
        self.max_shift, self.seed = max_shift, seed
        self._speed = {r: Resample(SAMPLE_RATE, r) for r in SPEED_RATES}
        self._items: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.clips) * (1 + self.copies)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(repr((self.copies, self.clip_samples, self.snr_db,
                                      self.max_shift, self.seed, SPEED_RATES)).encode())
        for clip in self.clips:
            digest.update(clip.numpy().tobytes())
        return digest.hexdigest()

    def waveform(self, index: int) -> torch.Tensor:
        """Item ``index`` (see the class docstring), float32 (clip_samples,)."""
        if index in self._items:
            return self._items[index]
        copy, clip = divmod(index, len(self.clips))
        waveform = self.clips[clip]
        if copy:
            digest = hashlib.sha256(f"{self.seed}:{copy}:".encode())
            digest.update(waveform.numpy().tobytes())
            gen = torch.Generator().manual_seed(int(digest.hexdigest()[:15], 16))
            draws = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
            rate = SPEED_RATES[min(int(draws[0] * len(SPEED_RATES)), len(SPEED_RATES) - 1)]
            waveform = self._speed[rate](waveform)
            waveform = F.pad(waveform, (int(draws[1] * self.max_shift), 0))
            kind = NOISE_KINDS[min(int(draws[2] * len(NOISE_KINDS)), len(NOISE_KINDS) - 1)]
            noise = make_noise(kind, waveform.shape[-1], SAMPLE_RATE,
                               seed=int(torch.randint(2**31, (), generator=gen)))
            if waveform.square().sum() > 0:
                snr = self.snr_db[0] + draws[3] * (self.snr_db[1] - self.snr_db[0])
                waveform = mix_at_snr(waveform, noise, snr)
            waveform = _normalise_level(waveform)
        self._items[index] = _fit(waveform, self.clip_samples)
        return self._items[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return {"waveform": self.waveform(index), "index": index}


# ---------------------------------------------------------------------------------------------
# Models


class ResemblyzerTeacher(nn.Module):
    """The ``resemblyzer`` teacher as one module: waveform (B, T) float at 16 kHz -> utterance
    embedding (B, 256), unit norm (its mel partials, encoder and mean of partials).
    ``teacher``: a :class:`kdcore.teachers.TeacherBundle` or a registry name (default
    ``"resemblyzer"``)."""

    def __init__(self, teacher: Any = "resemblyzer") -> None:
        super().__init__()
        if isinstance(teacher, str):
            from kdcore import teachers

            teacher = teachers.load(teacher)
        output = getattr(teacher, "output", None)
        if getattr(output, "kind", None) != "embedding" or output.size != EMBEDDING:
            raise ValueError("teacher must be a speaker-embedding bundle with 256-d outputs, "
                             "e.g. 'resemblyzer'")
        self.name, self.fingerprint = teacher.spec.name, str(teacher.fingerprint)
        self.frontend, self.encoder = teacher.frontend, teacher.model.eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frontend(waveform))


class SpeakerStudentTDNN(nn.Module):
    """A small speaker encoder: waveform (B, T) float at 16 kHz -> unit-norm embeddings
    (B, 256) float32.

    Frontend: kdcore's :class:`~kdcore.frontend.LogMel` (n_fft 400, hop 160, ``n_mels``
    HTK mels, ``ln(x + 1e-6)``). Body (time-delay network): Conv1d(n_mels, ``channels``, 5),
    Conv1d(``channels``, ``channels``, 3, dilation 2), Conv1d(``channels``, ``channels``, 3,
    dilation 3), Conv1d(``channels``, ``pooled``, 1), each followed by ReLU and BatchNorm;
    statistics pooling (mean and standard deviation over frames: 2 * ``pooled``);
    Linear(2 * ``pooled``, 256); L2 normalisation. Defaults ``n_mels`` 40, ``channels`` 128,
    ``pooled`` 192 (248,768 parameters, 0.175 of the teacher's 1,423,616); ``backend`` of the
    log-mel op, default ``"reference"`` (no compiled build at first use)."""

    model_name = "speaker_tdnn"

    def __init__(self, n_mels: int = 40, channels: int = 128, pooled: int = 192, *,
                 backend: str = "reference") -> None:
        super().__init__()
        for name, value in (("n_mels", n_mels), ("channels", channels), ("pooled", pooled)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.n_mels, self.channels, self.pooled = n_mels, channels, pooled
        self.frontend = LogMel(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160,
                               n_mels=n_mels, backend=backend)
        layers: list[nn.Module] = []
        shapes = ((n_mels, channels, 5, 1), (channels, channels, 3, 2),
                  (channels, channels, 3, 3), (channels, pooled, 1, 1))
        for c_in, c_out, kernel, dilation in shapes:
            layers += [nn.Conv1d(c_in, c_out, kernel, dilation=dilation,
                                 padding=dilation * (kernel // 2)),
                       nn.ReLU(), nn.BatchNorm1d(c_out)]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(2 * pooled, EMBEDDING)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, frames) -> unit-norm embeddings (B, 256)."""
        hidden = self.body(features)
        stats = torch.cat([hidden.mean(dim=-1), hidden.std(dim=-1)], dim=-1)
        return F.normalize(self.linear(stats), dim=-1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveform, torch.Tensor) or waveform.dim() != 2:
            raise ValueError(f"waveform must be a (B, T) tensor, got "
                             f"{getattr(waveform, 'shape', type(waveform).__name__)}")
        return self.embed_features(self.frontend(waveform.float()))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "channels": self.channels, "pooled": self.pooled}


def speaker_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``: :func:`kdcore.models.count_macs`
    (convolutions, matmuls, GRUs) plus every ``nn.LSTM`` counted by hand, which the FLOP
    counter skips: ``4 * H * (I_l + H)`` per layer, step and item (``I_l`` the layer's input
    width). The STFT and mel projection of a frontend are not counted."""
    from kdcore.models import count_macs

    lstm = [0]

    def hook(module: nn.LSTM, inputs: tuple, _: object) -> None:
        x = inputs[0]
        steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        width, hidden = module.input_size, module.hidden_size
        for layer in range(module.num_layers):
            lstm[0] += steps * 4 * hidden * ((width if layer == 0 else hidden) + hidden)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        counted = count_macs(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return counted + lstm[0]


# ---------------------------------------------------------------------------------------------
# Training


def distill_speaker(teacher: Any, clips: Sequence[Any] | SpeakerClips,
                    out_dir: str | os.PathLike, *, student: nn.Module | None = None,
                    copies: int = 2, epochs: int = 10, batch_size: int = 64, lr: float = 3e-3,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None,
                    teacher_embeddings: torch.Tensor | np.ndarray | None = None,
                    **distiller_kwargs: Any) -> tuple[nn.Module, Any]:
    """Distil a speaker encoder into ``student`` by cosine regression on its embeddings.

    Args:
        teacher: ``"resemblyzer"`` (default registry name), its bundle, or a
            :class:`ResemblyzerTeacher`.
        clips: audio paths or 16 kHz waveforms (T,) of the training speakers; no labels (see
            :func:`load_clips`); or a ready :class:`SpeakerClips` (then ``copies`` is its own).
        out_dir: run directory (teacher cache, ``metrics.jsonl``) and ``student.pt``
            (:func:`save_speaker_student`).
        student: default a fresh :class:`SpeakerStudentTDNN`; any module mapping waveforms
            (B, 16000) to (B, 256) embeddings.
        copies: augmented copies per clip (:class:`SpeakerClips`), default 2.
        epochs, batch_size, lr: defaults 10, 64, 3e-3 (one-cycle schedule).
        seed: the training seed and, when ``clips`` is not a :class:`SpeakerClips`, the
            augmentation seed; default 0.
        cache_dir: teacher cache folder (default ``out_dir/teacher_cache``); the same clips,
            copies and seed reuse it across runs.
        teacher_embeddings: optional (items, 256) teacher embeddings of the training items in
            dataset order (e.g. rows of one table computed for several runs), written into the
            cache before training, so the teacher is not run on them again.
        distiller_kwargs: further :class:`kdcore.Distiller` keywords (``device``...).

    The loss is ``mean_b (1 - cos(s_b, t_b))`` (``task="regression"``, ``distance="cosine"``,
    ``alpha=1``: the teacher's embedding is the only target); the teacher runs once per item
    (``teacher_mode="cached"``, filled in the first epoch). Returns ``(student, history)``."""
    from kdcore.engine import Distiller

    teacher = teacher if isinstance(teacher, ResemblyzerTeacher) else ResemblyzerTeacher(teacher)
    student = SpeakerStudentTDNN() if student is None else student
    dataset = (clips if isinstance(clips, SpeakerClips) else
               SpeakerClips(load_clips(clips, clip_samples=None), copies=copies, seed=seed))
    if teacher_embeddings is not None:
        _prefill_cache(Path(out_dir) / "teacher_cache" if cache_dir is None else Path(cache_dir),
                       dataset, teacher_embeddings, teacher.fingerprint)
    options = {"progress": False, "schedule": "onecycle", "checkpoint_every": 0,
               "log_every": 10**9, **distiller_kwargs}
    distiller = Distiller(teacher, student, task="regression", distance="cosine", alpha=1.0,
                          teacher_mode="cached", lr=lr, seed=seed,
                          cache_dir=None if cache_dir is None else Path(cache_dir),
                          teacher_fingerprint=teacher.fingerprint, **options)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    history = distiller.fit(loader, epochs=epochs, out_dir=out_dir, resume=False)
    student.eval()
    if isinstance(student, SpeakerStudentTDNN):
        save_speaker_student(Path(out_dir) / "student.pt", student, teacher=teacher.name,
                             copies=dataset.copies, epochs=epochs, seed=seed)
    return student, history


def _prefill_cache(directory: Path, dataset: SpeakerClips, embeddings: object,
                   fingerprint: str) -> None:
    from kdcore.engine.cache import TeacherCache
    from kdcore.engine.teachers import run_cache_key

    rows = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if rows.shape != (len(dataset), EMBEDDING):
        raise ValueError(f"teacher_embeddings must be ({len(dataset)}, {EMBEDDING}) for the "
                         f"{len(dataset)} training items, got {tuple(rows.shape)}")
    key = run_cache_key(teacher_fingerprint=fingerprint, teacher_frontend=None, taps=[],
                        task="regression", dataset=dataset)
    cache = TeacherCache(directory, key, len(dataset), 1, {"logits": (EMBEDDING,)})
    cache.prepare(explicit=False)
    cache.open()
    cache.store(torch.arange(len(dataset)), None, {"logits": rows})
    cache.flush()


# ---------------------------------------------------------------------------------------------
# Metrics


@torch.no_grad()
def embed(model: nn.Module, clips: Sequence[torch.Tensor] | torch.Tensor, *,
          batch_size: int = 128) -> np.ndarray:
    """Embeddings (N, D) float64 of ``clips`` (N waveforms of one length, e.g. from
    :func:`load_clips`) by ``model`` (waveform (B, T) -> (B, D)) in eval mode, ``batch_size``
    (default 128) at a time."""
    waveforms = torch.stack(list(clips)) if not isinstance(clips, torch.Tensor) else clips
    if waveforms.dim() != 2 or waveforms.shape[0] == 0:
        raise ValueError(f"clips must be N >= 1 waveforms of one length, got "
                         f"{tuple(waveforms.shape)}")
    was_training = model.training
    model.eval()
    try:
        out = [model(waveforms[i: i + batch_size]).double()
               for i in range(0, waveforms.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def verification_eer(embeddings: object, speakers: Sequence[object], *,
                     max_trials: int | None = None, seed: int = 0) -> dict[str, float | int]:
    """Speaker-verification equal error rate: trials are item pairs
    (:func:`kdcore.eval.metrics.verification_trials`, all pairs by default; ``max_trials``,
    ``seed`` as there), scored by cosine similarity, ``same speaker`` the target.
    ``embeddings`` (N, D); ``speakers`` N names. Returns ``{"eer", "threshold", "trials",
    "target_trials"}``."""
    from kdcore.eval.metrics import cosine_scores, equal_error_rate, verification_trials

    first, second, same = verification_trials(speakers, max_trials=max_trials, seed=seed)
    eer, threshold = equal_error_rate(cosine_scores(embeddings, first, second), same)
    return {"eer": eer, "threshold": threshold, "trials": int(same.size),
            "target_trials": int(same.sum())}


def evaluate_speaker(model: nn.Module, clips: Sequence[torch.Tensor], speakers: Sequence[str],
                     *, reference: np.ndarray | None = None, max_trials: int | None = None,
                     batch_size: int = 128) -> dict[str, Any]:
    """EER of ``model`` over ``clips`` of ``speakers`` (:func:`verification_eer`) and, when
    ``reference`` (N, 256) teacher embeddings of the same clips is given, the mean cosine
    similarity to it (:func:`kdcore.eval.metrics.mean_cosine_similarity`). Returns the
    :func:`verification_eer` dict plus ``"mean_cosine"`` (or None) and ``"clips"``."""
    from kdcore.eval.metrics import mean_cosine_similarity

    if len(clips) != len(speakers):
        raise ValueError(f"clips and speakers differ in length: {len(clips)} vs {len(speakers)}")
    embeddings = embed(model, clips, batch_size=batch_size)
    result: dict[str, Any] = verification_eer(embeddings, speakers, max_trials=max_trials)
    result["mean_cosine"] = (None if reference is None
                             else mean_cosine_similarity(embeddings, reference))
    result["clips"] = len(clips)
    return result


# ---------------------------------------------------------------------------------------------
# Files and the CLI


def save_speaker_student(path: str | os.PathLike, student: SpeakerStudentTDNN,
                         **meta: Any) -> Path:
    """Write ``{"kind": "speaker_student", "model": "speaker_tdnn", "kwargs":
    student.config(), "state_dict", "clip_samples", "meta": meta}`` to ``path``."""
    if not isinstance(student, SpeakerStudentTDNN):
        raise TypeError(f"student must be a SpeakerStudentTDNN, got {type(student).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": STUDENT_FILE_KIND, "model": student.model_name,
                "kwargs": student.config(), "state_dict": student.state_dict(),
                "clip_samples": CLIP_SAMPLES, "meta": meta}, path)
    return path


def is_speaker_model(model: str | os.PathLike) -> bool:
    """True for a file written by :func:`save_speaker_student` (read with ``weights_only=True``:
    a pickle payload is never run)."""
    path = Path(model)
    if not path.is_file():
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain torch file (or a pickle payload): not ours
        return False
    return isinstance(data, dict) and data.get("kind") == STUDENT_FILE_KIND


def load_speaker_model(model: str | os.PathLike | nn.Module) -> tuple[nn.Module, dict]:
    """``(module, meta)``: a :func:`save_speaker_student` file as a
    :class:`SpeakerStudentTDNN` in eval mode, or a registered speaker teacher's name (e.g.
    ``"resemblyzer"``) as a :class:`ResemblyzerTeacher`; a module passes through."""
    if isinstance(model, nn.Module):
        return model.eval(), {}
    path = Path(model)
    if path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"model file {str(path)!r} is not a readable torch checkpoint: "
                             f"{error}") from error
        if not isinstance(data, dict) or data.get("kind") != STUDENT_FILE_KIND:
            raise ValueError(f"model file {str(path)!r} is not a speaker student (expected a "
                             "file from kdcore.speaker.save_speaker_student)")
        student = SpeakerStudentTDNN(**data["kwargs"])
        student.load_state_dict(data["state_dict"])
        return student.eval(), dict(data.get("meta") or {})
    if path.suffix in (".pt", ".pth"):
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    return ResemblyzerTeacher(str(model)).eval(), {"teacher": str(model)}


def eval_command(model: str, data: str, *, split: str | None = "test",
                 out: str | os.PathLike | None = None, teacher: str | None = None,
                 max_trials: int | None = None, batch_size: int = 128) -> dict[str, Any]:
    """What ``kdcore eval --model STUDENT --data MANIFEST`` runs for a speaker student: EER
    over all trial pairs of the ``split`` rows (default ``"test"``; None or ``"all"``: every
    row) of ``data`` (``path`` and ``speaker`` columns) and the mean cosine to ``teacher``
    (default the one named in the student file, else ``"resemblyzer"``), for the student and
    the teacher. Writes ``speaker_report.json`` in ``out`` (default: next to the model,
    ``eval/``) and returns the report. Score held-out speakers (not the student's training
    speakers) for a fair verification number."""
    student, meta = load_speaker_model(model)
    teacher_model = ResemblyzerTeacher(teacher or meta.get("teacher") or "resemblyzer")
    paths, speakers = read_speaker_manifest(data, split=None if split == "all" else split)
    clips = load_clips(paths)
    reference = embed(teacher_model, clips, batch_size=batch_size)
    report = {"model": str(model), "data": str(data), "split": split,
              "speakers": sorted(set(speakers)), "teacher": teacher_model.name,
              "student": evaluate_speaker(student, clips, speakers, reference=reference,
                                          max_trials=max_trials, batch_size=batch_size),
              "teacher_scores": verification_eer(reference, speakers, max_trials=max_trials)}
    target = Path(out) if out is not None else Path(model).parent / "eval"
    target.mkdir(parents=True, exist_ok=True)
    (target / "speaker_report.json").write_text(json.dumps(report, indent=2))
    return report
