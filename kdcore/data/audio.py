"""Reading audio (soundfile), mono mixdown, soxr resampling, crops and batching.

Training takes a random fixed-length crop (zero-padded when the clip is shorter); evaluation
takes the centre crop. With ``clip_samples=None`` items keep their length and
:func:`collate_audio` pads the batch and returns ``lengths``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import soxr
import torch
from torch.utils.data import Dataset

from kdcore.errors import UserInputError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# The label of a clip without one: kdcore.Distiller trains on it with the distillation term
# alone (an unlabelled transfer set, see Unlabelled).
UNLABELLED = -1


class AudioReadError(UserInputError):
    """A file could not be read as audio (unreadable, corrupt or empty). Names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class AudioExample(NamedTuple):
    """One item: ``waveform`` float32 (T,), ``label`` int (or a float32 (C,) multi-hot tensor
    for multilabel data), ``index`` int (position in the set)."""

    waveform: torch.Tensor
    label: int | torch.Tensor
    index: int


class AudioBatch(NamedTuple):
    """A padded batch: ``waveforms`` float32 (B, T_max), ``labels`` int64 (B,), ``indices``
    int64 (B,) dataset positions, ``lengths`` int64 (B,) valid samples per row.

    The first three fields follow the engine's ``(input, label, index)`` tuple order; a 4-tuple
    means ``(..., mask)`` to ``kdcore.engine``, so pass :meth:`as_dict` (or ``batch[:3]``)."""

    waveforms: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    lengths: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{"waveform", "label", "index"}``: the engine's dict batch."""
        return {"waveform": self.waveforms, "label": self.labels, "index": self.indices}


def wav_declared_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(declared, present)`` frames of a RIFF/WAVE file: the ``data`` chunk's size from the
    header over the ``fmt `` block alignment, and what the bytes on disk hold. None when the
    file is not a RIFF/WAVE file or its header leaves the size open (0 or 0xFFFFFFFF, as
    streaming writers do)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = handle.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if name == b"fmt ":
                    fmt = handle.read(size)
                    block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else 0
                    handle.seek(size % 2, os.SEEK_CUR)
                    continue
                if name == b"data":
                    if block_align <= 0 or size in (0, 0xFFFFFFFF):
                        return None
                    present = max(0, os.fstat(handle.fileno()).st_size - handle.tell())
                    return size // block_align, present // block_align
                handle.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


def _check_not_truncated(path: str | os.PathLike) -> None:
    frames = wav_declared_frames(path)
    if frames is not None and frames[1] < frames[0]:
        raise AudioReadError(path, f"truncated file: the header declares {frames[0]} frames, "
                                   f"{frames[1]} are present")


def _reason(error: Exception, path: str | os.PathLike) -> str:
    """soundfile's message without its ``Error opening '<path>': `` prefix (the file is named
    once, by :class:`AudioReadError`)."""
    text = " ".join(str(error).split())
    for quoted in (repr(str(path)), f"'{path}'", str(path)):
        text = text.replace(f"Error opening {quoted}: ", "").replace(quoted, "the file")
    return text


def probe_audio(path: str | os.PathLike) -> int:
    """Frames in ``path`` from its header; raises :class:`AudioReadError` when the file is
    missing, unreadable, has no samples, or is a WAV whose header declares more frames than
    the file holds (truncated)."""
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several types for bad files
        raise AudioReadError(path, f"cannot read audio header ({_reason(error, path)})") from None
    if info.frames <= 0:
        raise AudioReadError(path, "file has no audio samples")
    _check_not_truncated(path)
    return int(info.frames)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """soxr (high quality) resampling of a mono float32 (T,) array; output length is
    ``ceil(T * target / orig)`` as soxr returns it."""
    if orig_rate == target_rate:
        return waveform
    return soxr.resample(waveform, orig_rate, target_rate, quality="HQ").astype(np.float32)


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """Read WAV/FLAC/OGG as mono float32 (T,), channels averaged, resampled with soxr to
    ``sample_rate`` (kept as is when None). Raises :class:`AudioReadError` naming the file when
    it cannot be decoded, is empty, holds NaN or infinite samples, or is a truncated WAV."""
    _check_not_truncated(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:
        raise AudioReadError(path, f"cannot decode audio ({_reason(error, path)})") from None
    if data.shape[0] == 0:
        raise AudioReadError(path, "file has no audio samples")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioReadError(path, "audio contains NaN or infinite samples")
    if sample_rate is not None:
        mono = resample(np.ascontiguousarray(mono), int(rate), int(sample_rate))
    return np.ascontiguousarray(mono, dtype=np.float32)


def random_crop(waveform: torch.Tensor, length: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A random window of ``length`` samples from (T,); zero-padded at a random offset when
    T < length."""
    total = waveform.shape[-1]
    if total >= length:
        start = int(torch.randint(0, total - length + 1, (1,), generator=generator))
        return waveform[..., start:start + length]
    before = int(torch.randint(0, length - total + 1, (1,), generator=generator))
    return torch.nn.functional.pad(waveform, (before, length - total - before))


def center_crop(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """The centre ``length`` samples of (T,), or the clip zero-padded equally on both sides."""
    total = waveform.shape[-1]
    if total >= length:
        start = (total - length) // 2
        return waveform[..., start:start + length]
    before = (length - total) // 2
    return torch.nn.functional.pad(waveform, (before, length - total - before))


def collate_audio(batch: Sequence[AudioExample]) -> AudioBatch:
    """Stack :class:`AudioExample` items into an :class:`AudioBatch`, zero-padding to the
    longest waveform."""
    if len(batch) == 0:
        raise ValueError("batch must not be empty")
    lengths = torch.tensor([item[0].shape[-1] for item in batch], dtype=torch.long)
    waveforms = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
    for row, item in enumerate(batch):
        waveforms[row, : item[0].shape[-1]] = item[0]
    if isinstance(batch[0][1], torch.Tensor):  # multi-hot targets (B, C) float32
        labels = torch.stack([torch.as_tensor(item[1], dtype=torch.float32) for item in batch])
    else:
        labels = torch.tensor([int(item[1]) for item in batch], dtype=torch.long)
    indices = torch.tensor([int(item[2]) for item in batch], dtype=torch.long)
    return AudioBatch(waveforms, labels, indices, lengths)


class TransferSet(Dataset):
    """``labelled`` followed by ``unlabelled`` (any datasets of :class:`AudioExample`): item
    ``i`` is ``labelled[i]``, then ``unlabelled[i - len(labelled)]`` with label
    :data:`UNLABELLED`; every item's ``index`` is its position here, so a teacher cache keys
    both parts apart. :class:`kdcore.Distiller` trains on the unlabelled clips with the
    distillation term alone (the teacher labels them: a transfer set, Hinton et al. 2015)."""

    def __init__(self, labelled: Dataset, unlabelled: Dataset) -> None:
        for name, part in (("labelled", labelled), ("unlabelled", unlabelled)):
            if not hasattr(part, "__len__") or len(part) == 0:
                raise ValueError(f"{name} must be a non-empty sized dataset")
        self.labelled, self.unlabelled = labelled, unlabelled

    def __len__(self) -> int:
        return len(self.labelled) + len(self.unlabelled)

    def __getitem__(self, index: int) -> AudioExample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if index < len(self.labelled):
            waveform, label, _ = self.labelled[index][:3]
        else:
            waveform, label, _ = self.unlabelled[index - len(self.labelled)][:3]
            label = UNLABELLED
        return AudioExample(waveform, int(label), index)


class AudioFileDataset(Dataset):
    """Audio files with integer labels as a Dataset of :class:`AudioExample`.

    Args:
        paths: audio files (WAV/FLAC/OGG).
        labels: class index per file, or a float32 (C,) multi-hot tensor per file
            (multilabel).
        sample_rate: target rate in Hz (soxr resampling).
        clip_samples: fixed output length; None keeps each clip's length (use
            :func:`collate_audio`).
        train: random crop/pad when True, centre crop when False.
        preload: decode every file once at construction and keep it in memory.
        generator: random source for training crops.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int], *,
                 sample_rate: int = 16000, clip_samples: int | None = None,
                 train: bool = False, preload: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"paths and labels must have the same length, got {len(paths)} "
                             f"and {len(labels)}")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        if clip_samples is not None and (not isinstance(clip_samples, int) or clip_samples < 1):
            raise ValueError(f"clip_samples must be a positive int or None, got {clip_samples!r}")
        self.paths = [Path(p) for p in paths]
        self.labels = [self._label(label) for label in labels]
        self.sample_rate, self.clip_samples, self.train = sample_rate, clip_samples, train
        self.generator = generator
        self._cache: list[torch.Tensor] | None = None
        if preload:
            self._cache = [self._decode(i) for i in range(len(self.paths))]

    @staticmethod
    def _label(label: object) -> object:
        """One stored label: a tensor as it is, anything else as an int class index."""
        return label if isinstance(label, torch.Tensor) else int(label)

    def _decode(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_audio(self.paths[index], self.sample_rate))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> AudioExample:
        waveform = self._cache[index] if self._cache is not None else self._decode(index)
        if self.clip_samples is not None:
            if self.train:
                waveform = random_crop(waveform, self.clip_samples, self.generator)
            else:
                waveform = center_crop(waveform, self.clip_samples)
        return AudioExample(waveform.contiguous(), self.labels[index], index)
