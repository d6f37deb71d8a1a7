"""Dataset sources: a folder with one subfolder per class, or a CSV manifest.

A CSV manifest has columns ``path,label`` (paths relative to the CSV; for multilabel data
``path,labels`` with ``;``-separated tags, an empty cell meaning no tag), optionally ``split``
and ``group`` and any other columns (kept per record, e.g. ``speaker``, usable as the group
column of a group-disjoint split). Bad entries (unreadable, corrupt, empty or truncated audio,
non-finite samples when decoded, a missing file, an empty or unknown label) raise an error
naming the file or row; with ``skip_bad=True`` they are skipped and listed in
:attr:`AudioSource.skipped`.

The manifest is checked like a schema, whatever ``skip_bad`` says: ``split`` values are
``train``, ``val`` and ``test`` (``validation``, ``valid`` and ``dev`` are aliases of ``val``),
and the column is filled on every row or absent; a file listed twice is an error naming both
lines unless ``allow_duplicates``, which keeps every copy of a file in one split.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdcore.data.audio import (
    AUDIO_EXTENSIONS,
    AudioFileDataset,
    AudioReadError,
    probe_audio,
    read_audio,
)
from kdcore.data.splits import (
    SPLIT_ALIASES,
    group_split,
    normalize_split,
    split_from_column,
    stratified_split,
)
from kdcore.errors import UserInputError


class ManifestError(UserInputError):
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
    task: str = "multiclass"

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def labels(self) -> list[int]:
        """Class index per record (multilabel: 0 for every record, which makes the random
        split unstratified)."""
        if self.task == "multilabel":
            return [0] * len(self.records)
        index = self.class_to_index
        return [index[record.label] for record in self.records]

    def targets(self) -> list:
        """Per record: the class index (multiclass), or a float32 (C,) multi-hot tensor of its
        ``;``-separated tags (multilabel)."""
        if self.task != "multilabel":
            return self.labels
        import torch

        index = self.class_to_index
        out = []
        for record in self.records:
            hot = torch.zeros(len(self.classes), dtype=torch.float32)
            for tag in split_tags(record.label):
                hot[index[tag]] = 1.0
            out.append(hot)
        return out

    def groups(self, column: str = "group") -> list[str]:
        """Per-record value of ``column`` (``"group"`` or any manifest column)."""
        values = []
        for record in self.records:
            value = record.group if column == "group" else record.columns.get(column)
            if value is None or value == "":
                raise ManifestError(f"group column {column!r} is missing or empty for "
                                    f"{record.path}")
            values.append(value)
        return values

    def summary(self) -> str:
        """One line: files, classes and skipped entries (with the first few, each named once)."""
        line = f"{len(self.records)} files in {len(self.classes)} classes from {self.root}"
        if self.skipped:
            shown = "; ".join(f"{s.where}: {s.reason}" for s in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            line += f"; skipped {len(self.skipped)} bad entries: {shown}{more}"
        return line

    def has_split_column(self) -> bool:
        """True when every record carries a ``split`` value (a manifest with the column)."""
        return bool(self.records) and all(record.split for record in self.records)

    def split(self, *, group_column: str | None = None,
              test_groups: Sequence[str] | None = None, test_fraction: float = 0.2,
              val_fraction: float = 0.0, seed: int = 0,
              use_split_column: bool = True) -> dict[str, list[int]]:
        """Record indices per split (``train``, ``val``, ``test``). With ``group_column``
        (e.g. ``"speaker"``): a group-disjoint split; otherwise the manifest's ``split`` column
        when it has one (and ``use_split_column``); otherwise a stratified random split by
        ``seed``. Copies of one file always land in one split."""
        if group_column is None and use_split_column and self.has_split_column():
            return split_from_column([record.split for record in self.records])
        # Copies of one file (allow_duplicates) follow their first occurrence into one split.
        first: dict[Path, int] = {}
        owner = [first.setdefault(record.path, i) for i, record in enumerate(self.records)]
        unique = sorted(first.values())
        if group_column is not None:
            groups = self.groups(group_column)
            parts = group_split([groups[i] for i in unique], test_groups=test_groups,
                                test_fraction=test_fraction, val_fraction=val_fraction,
                                seed=seed)
        else:
            labels = self.labels
            parts = stratified_split([labels[i] for i in unique], test_fraction=test_fraction,
                                     val_fraction=val_fraction, seed=seed)
        where = {unique[position]: name for name, positions in parts.items()
                 for position in positions}
        result: dict[str, list[int]] = {name: [] for name in parts}
        for index, representative in enumerate(owner):
            result[where[representative]].append(index)
        return result

    def dataset(self, indices: Sequence[int] | None = None, **kwargs: object
                ) -> AudioFileDataset:
        """An :class:`AudioFileDataset` over the records at ``indices`` (all when None);
        ``kwargs`` go to its constructor (sample_rate, clip_samples, train, preload, ...)."""
        chosen = range(len(self.records)) if indices is None else indices
        labels = self.targets()
        return AudioFileDataset([self.records[i].path for i in chosen],
                                [labels[i] for i in chosen], **kwargs)


TASK_COLUMNS = {"multiclass": "label", "multilabel": "labels"}


def split_tags(text: str) -> list[str]:
    """The tags of a multilabel manifest cell: ``"dog; rain"`` -> ``["dog", "rain"]``."""
    return [tag.strip() for tag in text.split(";") if tag.strip()]


def _sort_classes(names: set[str]) -> list[str]:
    """Numeric order when every name is an integer ("2" < "10"), else text order."""
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _keep_or_raise(skip_bad: bool, skipped: list[SkippedEntry], error: ValueError,
                   where: str, reason: str | None = None) -> None:
    """Raise ``error`` unless ``skip_bad``; then record ``where`` and the reason (``reason``,
    or the error's text without its location)."""
    if not skip_bad:
        raise error
    if reason is None:
        reason = error.reason if isinstance(error, AudioReadError) else str(error)
    skipped.append(SkippedEntry(where, reason))


def _check_audio(path: Path, decode: bool) -> None:
    """Header check (:func:`probe_audio`); with ``decode`` also read the samples (non-finite
    audio surfaces only then)."""
    probe_audio(path)
    if decode:
        read_audio(path)


def _from_folder(root: Path, skip_bad: bool, check_audio: bool, decode: bool) -> AudioSource:
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
                    _check_audio(path, decode)
            except AudioReadError as error:
                _keep_or_raise(skip_bad, skipped, error, str(path))
                continue
            records.append(AudioRecord(path, class_dir.name))
    if not records:
        detail = f" ({len(skipped)} bad files skipped)" if skipped else ""
        raise ManifestError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in class "
                         f"subfolders of {root}{detail}")
    return AudioSource(root, records, _sort_classes({r.label for r in records}), skipped)


def read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and rows (column -> stripped text) of a CSV manifest."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                for row in reader]
    return header, rows


def _check_split_column(csv_path: Path, rows: list[dict[str, str]]) -> bool:
    """Validate the ``split`` column (filled on every row, known values); returns whether the
    manifest has one (an all-empty column counts as absent)."""
    values = [(line, row.get("split", "")) for line, row in enumerate(rows, start=2)]
    empty = [line for line, value in values if not value]
    if len(empty) == len(values):
        return False
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
        raise ManifestError(f"{csv_path}: the 'split' column must be filled on every row or "
                            f"absent; it is empty on {len(empty)} of {len(values)} rows "
                            f"(line {shown})")
    unknown: dict[str, list[int]] = {}
    for line, value in values:
        if normalize_split(value) is None:
            unknown.setdefault(value, []).append(line)
    if unknown:
        found = "; ".join(f"{value!r} on line {', '.join(map(str, lines[:5]))}"
                          f"{' ...' if len(lines) > 5 else ''}"
                          for value, lines in unknown.items())
        raise ManifestError(f"{csv_path}: unknown split value(s): {found}; split values are "
                            f"train, val and test (aliases of val: {', '.join(SPLIT_ALIASES)})")
    return True


def _check_duplicates(csv_path: Path, rows: list[dict[str, str]], allow_duplicates: bool,
                      has_split: bool) -> None:
    """A path on two lines is an error naming both, unless ``allow_duplicates``; even then
    every copy must carry the same split value."""
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            continue
        path = (csv_path.parent / row["path"]).resolve()
        if path not in seen:
            seen[path] = line
            continue
        before = seen[path]
        if not allow_duplicates:
            raise ManifestError(f"{csv_path}: {row['path']} is listed twice, on lines {before} "
                                f"and {line}; remove the copy or pass --allow-duplicates "
                                "(copies stay in one split)")
        first, again = rows[before - 2].get("split", ""), row.get("split", "")
        if has_split and normalize_split(first) != normalize_split(again):
            raise ManifestError(f"{csv_path}: {row['path']} is listed on lines {before} "
                                f"(split {first!r}) and {line} (split {again!r}); copies of a "
                                "file must share one split")


def _from_manifest(csv_path: Path, skip_bad: bool, check_audio: bool,
                   classes: Sequence[str] | None, allow_duplicates: bool,
                   decode: bool, task: str = "multiclass") -> AudioSource:
    header, rows = read_rows(csv_path)
    column = TASK_COLUMNS[task]
    missing = [name for name in ("path", column) if name not in header]
    if missing:
        hint = ("; a multilabel manifest has a 'labels' column of ';'-separated tags"
                if task == "multilabel" else "")
        raise ManifestError(f"{csv_path}: manifest needs columns 'path' and '{column}', "
                            f"missing {missing} (found {header}){hint}")
    has_split = "split" in header and _check_split_column(csv_path, rows)
    _check_duplicates(csv_path, rows, allow_duplicates, has_split)
    known = set(classes) if classes is not None else None
    records: list[AudioRecord] = []
    skipped: list[SkippedEntry] = []
    checked: dict[Path, AudioReadError | None] = {}
    for line, row in enumerate(rows, start=2):
        where = f"{csv_path}:{line}"
        if not row.get("path"):
            _keep_or_raise(skip_bad, skipped, ManifestError(f"{where}: empty path"), where,
                           "empty path")
            continue
        path = (csv_path.parent / row["path"]).resolve()
        label = row.get(column, "")
        tags = split_tags(label) if task == "multilabel" else [label]
        unknown = [tag for tag in tags if known is not None and tag not in known]
        if (label == "" and task != "multilabel") or unknown:
            problem = "empty label" if label == "" else f"unknown label {unknown[0]!r}"
            _keep_or_raise(skip_bad, skipped, ManifestError(f"{where} ({path}): {problem}"),
                           f"{where} ({path})", problem)
            continue
        if check_audio:
            if path not in checked:
                try:
                    _check_audio(path, decode)
                    checked[path] = None
                except AudioReadError as error:
                    checked[path] = error
            if checked[path] is not None:
                _keep_or_raise(skip_bad, skipped, checked[path], f"{where} ({path})")
                continue
        split = normalize_split(row["split"]) if has_split else None
        records.append(AudioRecord(path, label, split, row.get("group") or None, row))
    if not records:
        raise ManifestError(f"{csv_path}: no usable rows ({len(skipped)} bad rows skipped)")
    seen = ({tag for r in records for tag in split_tags(r.label)} if task == "multilabel"
            else {r.label for r in records})
    if not seen:
        raise ManifestError(f"{csv_path}: no row carries a tag in its '{column}' column")
    names = list(classes) if classes is not None else _sort_classes(seen)
    return AudioSource(csv_path.parent, records, names, skipped, task)


def load_source(path: str | os.PathLike, *, skip_bad: bool = False, check_audio: bool = True,
                classes: Sequence[str] | None = None, allow_duplicates: bool = False,
                decode: bool = False, task: str = "multiclass") -> AudioSource:
    """Load a class-per-subfolder directory or a CSV manifest (``path,label[,split][,group]``).

    Args:
        path: a directory or a ``.csv`` file.
        skip_bad: skip bad files/rows (listed in ``skipped``) instead of raising. Default False.
        check_audio: read each file's header now (and check a WAV is not truncated), so bad
            files surface before training. Default True.
        classes: the allowed labels in index order (manifest only); other labels are bad rows.
            Default: every label seen, sorted (numerically when all are integers).
        allow_duplicates: a manifest may list a file more than once (each copy is a record;
            all copies land in one split). Default False: a duplicate is an error.
        decode: with ``check_audio``, also decode every file, so non-finite audio is found
            now. Default False.
        task: ``"multiclass"`` (default: one ``label`` per file) or ``"multilabel"`` (a
            manifest ``labels`` column of ``;``-separated tags; the classes are the tags,
            sorted; an empty cell is a file with no tag; folders cannot express it).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AudioReadError / ManifestError (ValueError): a bad file or row, naming it; a bad
            ``split`` value or column, or a duplicate path (always, whatever ``skip_bad``);
            no audio found.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data path does not exist: {root}")
    if task not in TASK_COLUMNS:
        raise ValueError(f"task must be one of {', '.join(TASK_COLUMNS)}, got {task!r}")
    if root.is_dir():
        if task != "multiclass":
            raise ManifestError(f"{root}: a class-per-folder directory holds one label per "
                                f"file; task {task!r} needs a CSV manifest with a "
                                f"'{TASK_COLUMNS[task]}' column")
        return _from_folder(root, skip_bad, check_audio, decode)
    if root.suffix.lower() != ".csv":
        raise ManifestError(f"data path must be a folder or a .csv manifest, got {root}")
    return _from_manifest(root, skip_bad, check_audio, classes, allow_duplicates, decode,
                          task)


def unlabelled_files(path: str | os.PathLike, *, skip_bad: bool = False,
                     check_audio: bool = True, decode: bool = False
                     ) -> tuple[list[Path], list[SkippedEntry]]:
    """Audio files to use without labels (a transfer set): every WAV/FLAC/OGG file under a
    folder (searched recursively, any class subfolders ignored), or the ``path`` column of a
    CSV manifest (other columns ignored). Returns the sorted files and the skipped entries.
    ``check_audio`` (default True) reads each header; ``decode`` (default False) also decodes
    each file, so non-finite audio is found now.

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
        header, rows = read_rows(root)
        if "path" not in header:
            raise ManifestError(f"{root}: an unlabelled manifest needs a 'path' column "
                                f"(found {header})")
        candidates = []
        for line, row in enumerate(rows, start=2):
            where = f"{root}:{line}"
            if not row.get("path"):
                _keep_or_raise(skip_bad, skipped, ManifestError(f"{where}: empty path"), where,
                               "empty path")
                continue
            candidates.append(((root.parent / row["path"]).resolve(), where))
    else:
        raise ManifestError(f"unlabelled data path must be a folder or a .csv manifest, got {root}")
    files = []
    for file, where in candidates:
        try:
            if check_audio:
                _check_audio(file, decode)
        except AudioReadError as error:
            _keep_or_raise(skip_bad, skipped, error, where)
            continue
        files.append(file)
    if not files:
        detail = f" ({len(skipped)} bad entries skipped)" if skipped else ""
        raise ManifestError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in "
                         f"{root}{detail}")
    return files, skipped
