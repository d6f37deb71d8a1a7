"""Data of the ``ctc``, ``frame``, ``frame_multilabel`` and ``regression`` tasks: manifests
whose targets are transcripts, per-frame label files or target arrays, label-free folders for
teacher-only distillation, and the collate that pads whole utterances into engine batches.

Formats (paths in a manifest are relative to it; ``split``, ``group`` and any other columns
work as for the classification tasks, see :mod:`kdcore.data.sources`):

- ``ctc``, column ``transcript``: words separated by spaces (``"3 1 4"``); the vocabulary is
  every word seen, sorted (numerically when all are integers); class 0 is the CTC blank
  ``<blank>`` and word ``i`` is class ``i + 1``;
- ``frame``, column ``frames``: a ``.npy`` of (T,) integer class ids, one per output frame
  (``-100`` ignores a frame); classes ``"0"`` .. ``"C-1"``, ``C`` = the largest id + 1 (at
  least 2);
- ``frame_multilabel``, column ``frames``: a ``.npy`` of (T, C) values in [0, 1] (multi-hot
  per frame);
- ``regression``, column ``target``: a ``.npy`` of (D,) per clip or (T, D) per output frame,
  finite.

Per-frame targets (``frames``, and (T, D) regression targets) hold one row per **output
frame** of the model at the run's sample rate: ``T = output_frames(1 + samples // hop)`` for
the centred log-mel (``frame_conv`` with stride 1 gives one output per log-mel frame). A file
whose row count differs from that by more than one frame is an error naming it; a difference
of one (rounding of a resampled length) is absorbed: only frames present in both count.

A folder of audio (searched recursively) or a manifest without the task's column is
**unlabelled**: ``kdcore distill`` trains on the teacher's outputs alone (the KD term), and the
classes come from the teacher. ``kdcore train`` and ``kdcore eval`` need the column.

The ``ctc``, ``frame`` and ``frame_multilabel`` tasks and (T, D) regression use whole files
(no crop), padded in a batch with ``lengths`` (valid output frames); (D,) regression uses
fixed-length clips like the classification tasks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kdcore.data.audio import AudioExample, AudioFileDataset, AudioReadError
from kdcore.data.sources import (
    AudioRecord,
    AudioSource,
    ManifestError,
    _check_audio,
    _check_duplicates,
    _check_split_column,
    _keep_or_raise,
    _sort_classes,
    read_rows,
    unlabelled_files,
)
from kdcore.data.splits import normalize_split

__all__ = ["BLANK", "SEQUENCE_TASKS", "TARGET_COLUMNS", "TaskCollate", "TaskDataset",
           "TaskSource", "load_task_source", "task_collate"]

SEQUENCE_TASKS = ("ctc", "frame", "frame_multilabel", "regression")
TARGET_COLUMNS = {"ctc": "transcript", "frame": "frames", "frame_multilabel": "frames",
                  "regression": "target"}
BLANK = "<blank>"
IGNORE_INDEX = -100


@dataclass
class TaskSource(AudioSource):
    """An :class:`AudioSource` whose records carry tensor targets (``None`` when unlabelled):
    ``ctc`` (N,) int64 class ids (word + 1), ``frame`` (T,) int64, ``frame_multilabel``
    (T, C) float32, ``regression`` (D,) or (T, D) float32. ``per_frame``: whether targets are
    per output frame (always for ctc/frame tasks; for regression the targets' rank, or, when
    unlabelled, what the caller said)."""

    target_values: list = field(default_factory=list)
    labelled: bool = True
    per_frame: bool = True

    @property
    def labels(self) -> list[int]:
        """0 per record: a random split of these tasks is not stratified."""
        return [0] * len(self.records)

    def targets(self) -> list:
        return list(self.target_values)

    def dataset(self, indices: Sequence[int] | None = None, *, sample_rate: int,
                clip_samples: int | None = None, train: bool = False,
                preload: bool = True, **_: object) -> TaskDataset:
        """A :class:`TaskDataset` over the records at ``indices`` (all when None): whole files
        when :attr:`per_frame`, else ``clip_samples`` crops (random when ``train``)."""
        chosen = range(len(self.records)) if indices is None else indices
        return TaskDataset([self.records[i].path for i in chosen],
                           [self.target_values[i] for i in chosen], sample_rate=sample_rate,
                           clip_samples=None if self.per_frame else clip_samples, train=train,
                           preload=preload)


class TaskDataset(AudioFileDataset):
    """Audio files with tensor targets (or None) as :class:`kdcore.data.AudioExample` items
    (``waveform`` float32 (T,), ``label`` the target or None, ``index``): an
    :class:`kdcore.data.AudioFileDataset` whose labels are stored as given. ``clip_samples``
    [None: whole files] crops as it does; ``preload`` [True] decodes every file once, here."""

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence, *,
                 sample_rate: int, clip_samples: int | None = None, train: bool = False,
                 preload: bool = True) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"paths and targets must have the same length, got {len(paths)} "
                             f"and {len(targets)}")
        super().__init__(paths, targets, sample_rate=sample_rate, clip_samples=clip_samples,
                         train=train, preload=preload)

    @staticmethod
    def _label(label: object) -> object:
        return label

    @property
    def targets(self) -> list:
        """The per-file targets (tensors or None), in file order."""
        return self.labels


def _load_array(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise ManifestError(f"{where}: target file does not exist: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ManifestError(f"{where}: {path} is not a readable .npy array ({error})") from None


def _frame_target(task: str, cell: str, base: Path, where: str) -> torch.Tensor:
    """The per-frame or regression target named by a manifest cell, checked."""
    path = base / cell
    array = _load_array(path, where)
    if task == "frame":
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ManifestError(f"{where}: {path} must hold (T,) integer class ids per frame "
                                f"for --task frame, got shape {array.shape} dtype {array.dtype}")
        bad = array[(array < 0) & (array != IGNORE_INDEX)]
        if bad.size:
            raise ManifestError(f"{where}: {path} holds class id {int(bad[0])}; ids are >= 0 "
                                f"({IGNORE_INDEX} ignores a frame)")
        return torch.from_numpy(array.astype(np.int64))
    if task == "frame_multilabel":
        if array.ndim != 2:
            raise ManifestError(f"{where}: {path} must hold (T, C) per-frame multi-hot labels "
                                f"for --task frame_multilabel, got shape {array.shape}")
        values = array.astype(np.float32)
        if not np.all((values >= 0) & (values <= 1)):
            raise ManifestError(f"{where}: {path} must hold values in [0, 1] (multi-hot per "
                                "frame)")
        return torch.from_numpy(values)
    if array.ndim not in (1, 2):
        raise ManifestError(f"{where}: {path} must hold a (D,) or (T, D) regression target, "
                            f"got shape {array.shape}")
    values = array.astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ManifestError(f"{where}: {path} holds NaN or infinite values")
    return torch.from_numpy(values)


def load_task_source(path: str | os.PathLike, task: str, *, skip_bad: bool = False,
                     check_audio: bool = True, decode: bool = False,
                     allow_duplicates: bool = False, classes: Sequence[str] | None = None,
                     require_targets: bool = False, per_frame: bool | None = None
                     ) -> TaskSource:
    """Load the data of a ``ctc``/``frame``/``frame_multilabel``/``regression`` run (formats in
    the module docstring).

    Args:
        path: a ``.csv`` manifest (``path`` plus the task's column, optionally ``split``,
            ``group``, ...) or a folder of unlabelled audio.
        task: one of :data:`SEQUENCE_TASKS`.
        skip_bad, check_audio, decode, allow_duplicates: as :func:`kdcore.data.load_source`
            (defaults False, True, False, False); a bad target file is a bad row.
        classes: [None: from the data] the class names, e.g. a teacher's: ctc
            ``["<blank>", word, ...]`` (other words are bad rows); the frame and regression
            tasks check their class count or dimension against it. Unlabelled data needs it.
        require_targets: [False] a folder or a manifest without the task's column is then an
            error naming the column (``train``/``eval``).
        per_frame: [None] for unlabelled ``regression``, whether the model is per frame.

    Raises:
        FileNotFoundError: ``path`` does not exist. ManifestError / AudioReadError: a bad
        row, file, column or target, named.
    """
    if task not in TARGET_COLUMNS:
        raise ValueError(f"task must be one of {', '.join(SEQUENCE_TASKS)}, got {task!r}")
    root = Path(path)
    column = TARGET_COLUMNS[task]
    need = (f"--task {task} needs a CSV manifest with columns 'path' and '{column}' "
            f"({_COLUMN_HELP[task]})")
    if not root.exists():
        raise FileNotFoundError(f"data path does not exist: {root}")
    if root.is_dir() or (root.suffix.lower() == ".csv" and column not in read_rows(root)[0]):
        if require_targets:
            found = "" if root.is_dir() else f", found {read_rows(root)[0]}"
            raise ManifestError(f"{root}: {need}{found}")
        if classes is None:
            raise ManifestError(f"{root} holds no '{column}' column: unlabelled data takes "
                                "its classes from a teacher")
        return _unlabelled(root, task, skip_bad, check_audio, decode, classes,
                           per_frame if task == "regression" else True)
    if root.suffix.lower() != ".csv":
        raise ManifestError(f"data path must be a folder or a .csv manifest, got {root}")
    header, rows = read_rows(root)
    has_split = "split" in header and _check_split_column(root, rows)
    _check_duplicates(root, rows, allow_duplicates, has_split)
    records, targets, skipped = [], [], []
    vocabulary = None if classes is None or task != "ctc" else list(classes)[1:]
    words: list[list[str]] = []
    checked: dict[Path, AudioReadError | None] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{root}:{line}"
        cell = row.get(column, "")
        try:
            if not row.get("path"):
                raise ManifestError(f"{where}: empty path")
            if not cell:
                raise ManifestError(f"{where}: empty '{column}' cell")
            audio = (root.parent / row["path"]).resolve()
            if task == "ctc":
                unknown = [w for w in cell.split() if vocabulary is not None
                           and w not in vocabulary]
                if unknown:
                    raise ManifestError(f"{where}: word {unknown[0]!r} is not in the "
                                        f"vocabulary {vocabulary}")
                target = cell.split()
            else:
                target = _frame_target(task, cell, root.parent, where)
            if check_audio:
                if audio not in checked:
                    try:
                        _check_audio(audio, decode)
                        checked[audio] = None
                    except AudioReadError as error:
                        checked[audio] = error
                if checked[audio] is not None:
                    raise checked[audio]
        except (ManifestError, AudioReadError) as error:
            _keep_or_raise(skip_bad, skipped, error, where,
                           error.reason if isinstance(error, AudioReadError) else str(error))
            continue
        split = normalize_split(row["split"]) if has_split else None
        records.append(AudioRecord(audio, cell, split, row.get("group") or None, row))
        (words if task == "ctc" else targets).append(target)
    if not records:
        raise ManifestError(f"{root}: no usable rows ({len(skipped)} bad rows skipped)")
    if task == "ctc":
        vocabulary = vocabulary or _sort_classes({w for ws in words for w in ws})
        token = {w: i + 1 for i, w in enumerate(vocabulary)}
        targets = [torch.tensor([token[w] for w in ws], dtype=torch.int64) for ws in words]
        names = [BLANK, *vocabulary]
        frame = True
    else:
        names, frame = _target_classes(task, targets, root, classes)
    return TaskSource(root.parent, records, names, skipped, task, targets, True, frame)


_COLUMN_HELP = {"ctc": "words separated by spaces",
                "frame": "a .npy file of per-frame class ids",
                "frame_multilabel": "a .npy file of (T, C) per-frame multi-hot labels",
                "regression": "a .npy file of a (D,) or (T, D) target"}


def _target_classes(task: str, targets: list[torch.Tensor], root: Path,
                    classes: Sequence[str] | None) -> tuple[list[str], bool]:
    """Class names (``"0"`` .. ``"C-1"``, or ``classes``) and whether targets are per frame."""
    if task == "frame":
        size = max(int(t.max()) if t.numel() else -1 for t in targets) + 1
        if classes is not None and size > len(classes):
            raise ManifestError(f"{root}: per-frame class id {size - 1} is out of range for "
                                f"the {len(classes)} classes {list(classes)[:6]}")
        return ([str(c) for c in classes] if classes is not None
                else [str(c) for c in range(max(size, 2))]), True
    ranks = {t.dim() for t in targets}
    if len(ranks) > 1:
        raise ManifestError(f"{root}: regression targets must all be (D,) or all (T, D), got "
                            "both")
    widths = {int(t.shape[-1]) for t in targets}
    if len(widths) > 1:
        kind = "classes" if task == "frame_multilabel" else "dimensions"
        raise ManifestError(f"{root}: the target files disagree on the number of {kind}: "
                            f"{sorted(widths)}")
    width = widths.pop()
    if classes is not None and len(classes) != width:
        raise ManifestError(f"{root}: targets have {width} classes/dimensions but the model "
                            f"has {len(classes)}")
    names = [str(c) for c in classes] if classes is not None else [str(c) for c in range(width)]
    return names, task == "frame_multilabel" or ranks.pop() == 2


def _unlabelled(root: Path, task: str, skip_bad: bool, check_audio: bool, decode: bool,
                classes: Sequence[str], per_frame: bool | None) -> TaskSource:
    if root.is_dir():
        files, skipped = unlabelled_files(root, skip_bad=skip_bad, check_audio=check_audio,
                                          decode=decode)
        records = [AudioRecord(file, "") for file in files]
    else:
        header, rows = read_rows(root)
        has_split = "split" in header and _check_split_column(root, rows)
        files, skipped = unlabelled_files(root, skip_bad=skip_bad, check_audio=check_audio,
                                          decode=decode)
        kept = set(files)
        records = [AudioRecord((root.parent / row["path"]).resolve(), "",
                               normalize_split(row["split"]) if has_split else None,
                               row.get("group") or None, row)
                   for row in rows if row.get("path")
                   and (root.parent / row["path"]).resolve() in kept]
    return TaskSource(root if root.is_dir() else root.parent, records, list(classes),
                      list(skipped), task, [None] * len(records), False, bool(per_frame))


@dataclass
class TaskCollate:
    """Collate :class:`TaskDataset` items into an engine batch dict: ``waveform`` (B, T_max)
    zero padded, ``index`` (B,), and with ``frames`` (per-frame models) ``lengths`` (B,) valid
    output frames, ``min(frames(samples), target rows)``. Labels: ctc ``label`` (B, S) int64
    padded with -1 and ``target_lengths``; frame (B, T') int64 padded with -100;
    frame_multilabel (B, T', C) and per-frame regression (B, T', D) float32 padded with 0;
    clip regression (B, D). ``T' = frames(T_max)``, the model's frame count on the padded
    batch. A batch of unlabelled items has no ``label``.

    ``frames`` maps (B,) int64 sample counts to output frames (None: a clip-level model)."""

    task: str
    frames: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, items: Sequence[AudioExample]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        samples = torch.tensor([int(item[0].shape[-1]) for item in items], dtype=torch.int64)
        waveform = torch.zeros(len(items), int(samples.max()))
        for row, item in enumerate(items):
            waveform[row, :item[0].shape[-1]] = item[0]
        batch = {"waveform": waveform,
                 "index": torch.tensor([int(item[2]) for item in items], dtype=torch.int64)}
        targets = [item[1] for item in items]
        labelled = [t is not None for t in targets]
        if any(labelled) and not all(labelled):
            raise ValueError("a batch mixes labelled and unlabelled items")
        if self.frames is None:
            if all(labelled):
                batch["label"] = torch.stack([torch.as_tensor(t) for t in targets])
            return batch
        frames = torch.as_tensor(self.frames(samples), dtype=torch.int64).reshape(-1)
        total = int(self.frames(samples.max().reshape(1)).reshape(-1)[0])
        if not all(labelled):
            batch["lengths"] = frames
            return batch
        if self.task == "ctc":
            label = torch.full((len(items), max(1, max(t.numel() for t in targets))), -1,
                               dtype=torch.int64)
            for row, t in enumerate(targets):
                label[row, :t.numel()] = t
            batch.update(label=label, lengths=frames,
                         target_lengths=torch.tensor([t.numel() for t in targets]))
            return batch
        rows = torch.tensor([int(t.shape[0]) for t in targets], dtype=torch.int64)
        lengths = torch.minimum(frames, rows)
        first = targets[0]
        fill = IGNORE_INDEX if self.task == "frame" else 0.0
        label = torch.full((len(items), total, *first.shape[1:]), fill, dtype=first.dtype)
        for row, t in enumerate(targets):
            keep = int(lengths[row])
            label[row, :keep] = t[:keep]
        batch.update(label=label, lengths=lengths)
        return batch


def task_collate(task: str, frames: Callable[[torch.Tensor], torch.Tensor] | None,
                 datasets: Sequence[Dataset | None] = (), *, model_name: str = "the model"
                 ) -> TaskCollate:
    """The :class:`TaskCollate` of ``task`` for a model whose output frames are ``frames``
    (None: a clip-level model), after checking every labelled item of ``datasets``
    (:class:`TaskDataset`): per-frame targets need a per-frame model and a row count within
    one frame of ``frames(samples)``; a clip-level target (D,) needs a clip-level model.
    Errors (:class:`ManifestError`) name the file and both counts."""
    for dataset in datasets:
        if dataset is None:
            continue
        for position in range(len(dataset)):
            waveform, target, _ = dataset[position]
            if target is None:
                if frames is None and task != "regression":
                    raise ManifestError(f"--task {task} needs a per-frame model (frame_conv, "
                                        f"ctc_conv); {model_name} gives one output per clip")
                continue
            path = dataset.paths[position]
            per_frame = task != "regression" or target.dim() == 2
            if per_frame and frames is None:
                raise ManifestError(f"{path}: per-frame targets need a per-frame model "
                                    f"(frame_conv, ctc_conv); {model_name} gives one output "
                                    "per clip")
            if not per_frame and frames is not None:
                raise ManifestError(f"{path}: a (D,) regression target is one per clip; "
                                    f"{model_name} gives one output per frame (use a clip "
                                    "model, e.g. student_dscnn, or (T, D) targets)")
            if not per_frame or task == "ctc":
                continue
            expected = int(frames(torch.tensor([waveform.shape[-1]]))[0])
            if abs(int(target.shape[0]) - expected) > 1:
                raise ManifestError(
                    f"{path}: {int(target.shape[0])} per-frame target rows, but its "
                    f"{waveform.shape[-1]} samples give {expected} output frames of "
                    f"{model_name} at this --sample-rate and --hop-length (one row per "
                    "output frame, see docs/cli.md)")
    return TaskCollate(task, frames)



def model_frames(model: torch.nn.Module, log_mel: torch.nn.Module
                 ) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Output frames of a per-frame ``model`` (one with ``output_frames``, e.g. ``frame_conv``,
    ``ctc_conv``) behind ``log_mel`` (a :class:`kdcore.LogMel`) for (B,) int64 sample counts:
    ``model.output_frames(log_mel.frames(samples))``; None for a clip-level model."""
    if not callable(getattr(model, "output_frames", None)):
        return None
    return lambda samples: model.output_frames(log_mel.frames(samples))


def model_frame_rate(model: torch.nn.Module, sample_rate: int, hop_length: int) -> float | None:
    """Output frames per second of a per-frame ``model`` behind a log-mel of ``hop_length``:
    ``sample_rate / hop_length / stride`` (``stride`` [1] the model's); None for a clip-level
    model."""
    if not callable(getattr(model, "output_frames", None)):
        return None
    return sample_rate / hop_length / int(getattr(model, "stride", 1))
