"""Dataset sources: a folder with one subfolder per class, or a CSV manifest.

A CSV manifest has columns ``path,label`` (paths relative to the CSV), optionally ``split``
and ``group`` and any other columns (kept per record, e.g. ``speaker``, usable as the group
column of a group-disjoint split). Bad entries (unreadable, corrupt or empty audio, a missing
file, an empty or unknown label) raise an error naming the file or row; with ``skip_bad=True``
they are skipped and listed in :attr:`AudioSource.skipped`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdcore.data.audio import AUDIO_EXTENSIONS, AudioFileDataset, AudioReadError, probe_audio
from kdcore.data.splits import group_split, split_from_column, stratified_split


class ManifestError(ValueError):
    """A manifest row or column is wrong (names the CSV and the row)."""


@dataclass(frozen=True)
class AudioRecord:
    """One labelled file. ``columns`` holds every manifest column as text (empty for folders)."""

    path: Path
    label: str
    split: str | None = None
    group: str | None = None
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedEntry:
    """A file or manifest row left out by ``skip_bad=True`` and why."""

    where: str
    reason: str


@dataclass
class AudioSource:
    """The records of a dataset, its sorted class names and what was skipped."""

    root: Path
    records: list[AudioRecord]
    classes: list[str]
    skipped: list[SkippedEntry] = field(default_factory=list)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def labels(self) -> list[int]:
        """Class index per record."""
        index = self.class_to_index
        return [index[record.label] for record in self.records]

    def groups(self, column: str = "group") -> list[str]:
        """Per-record value of ``column`` (``"group"`` or any manifest column)."""
        values = []
        for record in self.records:
            value = record.group if column == "group" else record.columns.get(column)
            if value is None or value == "":
                raise ValueError(f"group column {column!r} is missing or empty for {record.path}")
            values.append(value)
        return values

    def summary(self) -> str:
        """One line: files, classes and skipped entries (with the first few reasons)."""
        line = f"{len(self.records)} files in {len(self.classes)} classes from {self.root}"
        if self.skipped:
            shown = "; ".join(f"{s.where}: {s.reason}" for s in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            line += f"; skipped {len(self.skipped)} bad entries: {shown}{more}"
        return line

    def split(self, *, group_column: str | None = None,
              test_groups: Sequence[str] | None = None, test_fraction: float = 0.2,
              val_fraction: float = 0.0, seed: int = 0,
              use_split_column: bool = True) -> dict[str, list[int]]:
        """Record indices per split. With ``group_column`` (e.g. ``"speaker"``): a
        group-disjoint split; otherwise the manifest's ``split`` column when every record has
        one (and ``use_split_column``); otherwise a stratified random split by ``seed``."""
        if group_column is not None:
            return group_split(self.groups(group_column), test_groups=test_groups,
                               test_fraction=test_fraction, val_fraction=val_fraction,
                               seed=seed)
        if use_split_column and all(record.split for record in self.records):
            return split_from_column([record.split for record in self.records])
        return stratified_split(self.labels, test_fraction=test_fraction,
                                val_fraction=val_fraction, seed=seed)

    def dataset(self, indices: Sequence[int] | None = None, **kwargs: object
                ) -> AudioFileDataset:
        """An :class:`AudioFileDataset` over the records at ``indices`` (all when None);
        ``kwargs`` go to its constructor (sample_rate, clip_samples, train, preload, ...)."""
        chosen = range(len(self.records)) if indices is None else indices
        labels = self.labels
        return AudioFileDataset([self.records[i].path for i in chosen],
                                [labels[i] for i in chosen], **kwargs)


def _sort_classes(names: set[str]) -> list[str]:
    """Numeric order when every name is an integer ("2" < "10"), else text order."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _keep_or_raise(skip_bad: bool, skipped: list[SkippedEntry], error: ValueError,
                   where: str) -> None:
    if not skip_bad:
        raise error
    reason = error.reason if isinstance(error, AudioReadError) else str(error)
    skipped.append(SkippedEntry(where, reason))


def _from_folder(root: Path, skip_bad: bool, check_audio: bool) -> AudioSource:
    records: list[AudioRecord] = []
    skipped: list[SkippedEntry] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and
                            not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if (not path.is_file() or path.name.startswith(".")
                    or path.suffix.lower() not in AUDIO_EXTENSIONS):
                continue
            try:
                if check_audio:
                    probe_audio(path)
            except AudioReadError as error:
                _keep_or_raise(skip_bad, skipped, error, str(path))
                continue
            records.append(AudioRecord(path, class_dir.name))
    if not records:
        detail = f" ({len(skipped)} bad files skipped)" if skipped else ""
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in class "
                         f"subfolders of {root}{detail}")
    return AudioSource(root, records, _sort_classes({r.label for r in records}), skipped)


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and rows (column -> stripped text) of a CSV manifest."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                for row in reader]
    return header, rows


def _from_manifest(csv_path: Path, skip_bad: bool, check_audio: bool,
                   classes: Sequence[str] | None) -> AudioSource:
    header, rows = _read_rows(csv_path)
    missing = [name for name in ("path", "label") if name not in header]
    if missing:
        raise ManifestError(f"{csv_path}: manifest needs columns 'path' and 'label', "
                            f"missing {missing} (found {header})")
    known = set(classes) if classes is not None else None
    records: list[AudioRecord] = []
    skipped: list[SkippedEntry] = []
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        if not row.get("path"):
            _keep_or_raise(skip_bad, skipped, ManifestError(f"{where}: empty path"), where)
            continue
        path = (csv_path.parent / row["path"]).resolve()
        label = row.get("label", "")
        if label == "" or (known is not None and label not in known):
            problem = "empty label" if label == "" else f"unknown label {label!r}"
            _keep_or_raise(skip_bad, skipped, ManifestError(f"{where} ({path}): {problem}"),
                           f"{where} ({path})")
            continue
        try:
            if check_audio:
                probe_audio(path)
        except AudioReadError as error:
            _keep_or_raise(skip_bad, skipped, error, str(path))
            continue
        records.append(AudioRecord(path, label, row.get("split") or None,
                                   row.get("group") or None, row))
    if not records:
        raise ValueError(f"{csv_path}: no usable rows ({len(skipped)} bad rows skipped)")
    names = list(classes) if classes is not None else _sort_classes({r.label for r in records})
    return AudioSource(csv_path.parent, records, names, skipped)


def load_source(path: str | os.PathLike, *, skip_bad: bool = False, check_audio: bool = True,
                classes: Sequence[str] | None = None) -> AudioSource:
    """Load a class-per-subfolder directory or a CSV manifest (``path,label[,split][,group]``).

    Args:
        path: a directory or a ``.csv`` file.
        skip_bad: skip bad files/rows (listed in ``skipped``) instead of raising.
        check_audio: read each file's header now, so bad files surface before training.
        classes: the allowed labels in index order (manifest only); other labels are bad rows.
            Default: every label seen, sorted (numerically when all are integers).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AudioReadError / ManifestError (ValueError): a bad file or row, naming it.
        ValueError: no audio found.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data path does not exist: {root}")
    if root.is_dir():
        return _from_folder(root, skip_bad, check_audio)
    if root.suffix.lower() != ".csv":
        raise ValueError(f"data path must be a folder or a .csv manifest, got {root}")
    return _from_manifest(root, skip_bad, check_audio, classes)


def unlabelled_files(path: str | os.PathLike, *, skip_bad: bool = False,
                     check_audio: bool = True) -> tuple[list[Path], list[SkippedEntry]]:
    """Audio files to use without labels (a transfer set): every WAV/FLAC/OGG file under a
    folder (searched recursively, any class subfolders ignored), or the ``path`` column of a
    CSV manifest (other columns ignored). Returns the sorted files and the skipped entries.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AudioReadError / ManifestError (ValueError): a bad file or row, naming it (unless
            ``skip_bad``).
        ValueError: no audio found.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"unlabelled data path does not exist: {root}")
    skipped: list[SkippedEntry] = []
    if root.is_dir():
        candidates = [(p, str(p)) for p in sorted(root.rglob("*"))
                      if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in AUDIO_EXTENSIONS]
    elif root.suffix.lower() == ".csv":
        header, rows = _read_rows(root)
        if "path" not in header:
            raise ManifestError(f"{root}: an unlabelled manifest needs a 'path' column "
                                f"(found {header})")
        candidates = []
        for line, row in enumerate(rows, start=2):
            where = f"{root}:{line}"
            if not row.get("path"):
                _keep_or_raise(skip_bad, skipped, ManifestError(f"{where}: empty path"), where)
                continue
            candidates.append(((root.parent / row["path"]).resolve(), where))
    else:
        raise ValueError(f"unlabelled data path must be a folder or a .csv manifest, got {root}")
    files = []
    for file, where in candidates:
        try:
            if check_audio:
                probe_audio(file)
        except AudioReadError as error:
            _keep_or_raise(skip_bad, skipped, error, where)
            continue
        files.append(file)
    if not files:
        detail = f" ({len(skipped)} bad entries skipped)" if skipped else ""
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in "
                         f"{root}{detail}")
    return files, skipped
