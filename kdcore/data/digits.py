"""Connected-digit utterances made from isolated spoken digits (FSDD style), for CTC training."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from kdcore.data.audio import read_audio
from kdcore.data.mixtures import item_seed, split_item
from kdcore.data.sources import read_rows

__all__ = ["ConnectedDigits", "write_connected_digits", "write_connected_digits_splits"]


def _pair(value: object, name: str, integer: bool) -> tuple:
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    if integer and not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"{name} must be a pair of ints, got {value!r}")
    if not (0 <= low <= high and np.isfinite(high)):
        raise ValueError(f"{name} must satisfy 0 <= low <= high, got {value!r}")
    return low, high


class ConnectedDigits(Dataset):
    """Utterances of ``min_digits``..``max_digits`` digits, each made by concatenating isolated
    clips of **one** speaker with random silent gaps; item ``i`` is the same on every call.

    Args:
        source: a CSV manifest path with columns ``path``, ``label``, ``speaker`` (and
            ``split`` when ``split`` is given; paths relative to the manifest), or a sized
            dataset of clips. A dataset's labels and speakers come from ``clip_labels`` /
            ``clip_speakers``, else its ``labels`` / ``speakers`` attributes, else each item
            (dicts with ``waveform``, ``label``, ``speaker``).
        num_utterances: dataset length. Default 1000.
        digits: ``(min, max)`` digits per utterance, drawn uniformly. Default (2, 7).
        gap_s: ``(low, high)`` seconds of silence between digits, uniform. Default (0.05, 0.3).
        edge_s: ``(low, high)`` seconds of silence before the first and after the last digit,
            uniform. Default (0.0, 0.1).
        sample_rate: Hz of the output; manifest audio is resampled (soxr) on reading. Dataset
            clips must already be at this rate. Default 8000.
        seed: base seed (utterance ``i`` uses ``item_seed(seed, i)``). Default 0.
        speakers: keep only these speakers (e.g. held-out ones). Default None: all.
        split: keep only manifest rows whose ``split`` column equals this. Default None.
        clip_labels, clip_speakers: per-clip label and speaker for a dataset source.
        cache: keep decoded manifest clips in memory. Default True.

    Items are dicts: ``waveform`` (T,) float32; ``transcript`` (str, labels joined by single
    spaces, e.g. ``"3 1 4"``); ``targets`` (N,) int64 (the labels as ints when all are
    integers, else their index in :attr:`vocabulary`); ``segments`` (N, 2) int64 start/end
    samples of each digit; ``clips`` (N,) int64 source clip indices; ``speaker`` (str);
    ``index`` (int).
    """

    def __init__(self, source: str | os.PathLike | Dataset, num_utterances: int = 1000, *,
                 digits: tuple[int, int] = (2, 7), gap_s: tuple[float, float] = (0.05, 0.3),
                 edge_s: tuple[float, float] = (0.0, 0.1), sample_rate: int = 8000,
                 seed: int = 0, speakers: Sequence[str] | None = None,
                 split: str | None = None, clip_labels: Sequence[object] | None = None,
                 clip_speakers: Sequence[object] | None = None, cache: bool = True) -> None:
        if isinstance(num_utterances, bool) or not isinstance(num_utterances, int) \
                or num_utterances < 1:
            raise ValueError(f"num_utterances must be a positive int, got {num_utterances!r}")
        self.digits = _pair(digits, "digits", integer=True)
        if self.digits[0] < 1:
            raise ValueError(f"digits must be at least 1 per utterance, got {digits!r}")
        self.gap_s = tuple(float(v) for v in _pair(gap_s, "gap_s", integer=False))
        self.edge_s = tuple(float(v) for v in _pair(edge_s, "edge_s", integer=False))
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        self.num_utterances, self.sample_rate, self.seed = num_utterances, sample_rate, int(seed)
        self.split, self.cache = split, cache
        self._dataset: Dataset | None = None
        self._paths: list[Path] | None = None
        if isinstance(source, (str, os.PathLike)):
            labels, clip_spk, self._paths = self._read_manifest(Path(source), split)
            self.source = str(Path(source).resolve())
        else:
            if split is not None:
                raise ValueError("split filters a manifest's split column; for a dataset "
                                 "source pass only the clips wanted")
            rate = getattr(source, "sample_rate", None)
            if rate is not None and rate != sample_rate:
                raise ValueError(f"the source dataset is at {rate} Hz but sample_rate is "
                                 f"{sample_rate}: resample the clips or pass sample_rate={rate}")
            self._dataset, self.source = source, None
            labels, clip_spk = self._dataset_meta(source, clip_labels, clip_speakers)
        labels = [str(v) for v in labels]
        bad = sorted({v for v in labels if v == "" or any(c.isspace() for c in v)})
        if bad:
            raise ValueError(f"clip labels must be non-empty words without spaces, got {bad}")
        keep = None if speakers is None else {str(s) for s in speakers}
        self._by_speaker: dict[str, list[int]] = {}
        for i, spk in enumerate(clip_spk):
            if keep is None or str(spk) in keep:
                self._by_speaker.setdefault(str(spk), []).append(i)
        absent = sorted(keep - set(self._by_speaker)) if keep is not None else []
        if absent:
            raise ValueError(f"speakers not found in the source: {absent}")
        if not self._by_speaker:
            raise ValueError("no clips left after the speakers/split filters")
        self.speakers = sorted(self._by_speaker)
        self.clip_labels = labels
        numeric = all(v.isdigit() for v in labels)
        self.vocabulary = (sorted(set(labels), key=int) if numeric else sorted(set(labels)))
        self._token = ({v: int(v) for v in self.vocabulary} if numeric
                       else {v: i for i, v in enumerate(self.vocabulary)})
        self._clips: dict[int, torch.Tensor] = {}

    @staticmethod
    def _read_manifest(path: Path, split: str | None) -> tuple[list, list, list[Path]]:
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        header, rows = read_rows(path)
        need = ["path", "label", "speaker"] + (["split"] if split is not None else [])
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{path}: manifest needs columns {need}, missing {missing}")
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
            if not rows:
                raise ValueError(f"{path}: no rows with split == {split!r}")
        for line, row in enumerate(rows, start=2):
            if not row["path"] or not row["speaker"]:
                raise ValueError(f"{path}: row {line} has an empty path or speaker")
        paths = [(path.parent / r["path"]).resolve() for r in rows]
        return [r["label"] for r in rows], [r["speaker"] for r in rows], paths

    @staticmethod
    def _dataset_meta(data: Dataset, labels: Sequence | None,
                      speakers: Sequence | None) -> tuple[list, list]:
        if not hasattr(data, "__len__") or len(data) == 0:
            raise ValueError("source must be a manifest path or a non-empty sized dataset")
        labels = labels if labels is not None else getattr(data, "labels", None)
        speakers = speakers if speakers is not None else getattr(data, "speakers", None)
        if labels is None or speakers is None:
            items = [data[i] for i in range(len(data))]
            if not all(isinstance(it, dict) and "label" in it and "speaker" in it
                       for it in items):
                raise ValueError("a dataset source needs clip_labels and clip_speakers (or "
                                 "items that are dicts with 'label' and 'speaker')")
            labels = labels if labels is not None else [it["label"] for it in items]
            speakers = speakers if speakers is not None else [it["speaker"] for it in items]
        for name, values in (("clip_labels", labels), ("clip_speakers", speakers)):
            if len(values) != len(data):
                raise ValueError(f"{name} has {len(values)} entries for {len(data)} clips")
        return list(labels), list(speakers)

    def __len__(self) -> int:
        return self.num_utterances

    def clip(self, index: int) -> torch.Tensor:
        """Source clip ``index`` as a float32 (T,) waveform at :attr:`sample_rate`."""
        if index in self._clips:
            return self._clips[index]
        if self._paths is not None:
            wave = torch.from_numpy(read_audio(self._paths[index], self.sample_rate))
        else:
            wave, _ = split_item(self._dataset[index], f"source[{index}]")
            wave = wave.to(torch.float32)
        if self.cache:
            self._clips[index] = wave
        return wave

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        gen = np.random.default_rng(item_seed(self.seed, index))
        speaker = self.speakers[int(gen.integers(len(self.speakers)))]
        pool = self._by_speaker[speaker]
        count = int(gen.integers(self.digits[0], self.digits[1] + 1))
        chosen = [pool[int(gen.integers(len(pool)))] for _ in range(count)]
        silences = [gen.uniform(*self.edge_s)] + [gen.uniform(*self.gap_s)
                                                  for _ in range(count - 1)]
        silences.append(gen.uniform(*self.edge_s))
        pieces, segments, at = [], [], 0
        for k, clip_index in enumerate(chosen):
            gap = round(silences[k] * self.sample_rate)
            pieces.append(torch.zeros(gap))
            clip = self.clip(clip_index)
            pieces.append(clip)
            segments.append((at + gap, at + gap + clip.numel()))
            at += gap + clip.numel()
        pieces.append(torch.zeros(round(silences[-1] * self.sample_rate)))
        words = [self.clip_labels[c] for c in chosen]
        return {"waveform": torch.cat(pieces).to(torch.float32),
                "transcript": " ".join(words),
                "targets": torch.tensor([self._token[w] for w in words], dtype=torch.int64),
                "segments": torch.tensor(segments, dtype=torch.int64),
                "clips": torch.tensor(chosen, dtype=torch.int64),
                "speaker": speaker, "index": index}

    def fingerprint(self) -> str:
        """sha256 of the settings and the source: each manifest clip's path, size and mtime,
        or a dataset's own ``fingerprint()`` (else its type, labels and speakers)."""
        if self._paths is not None:
            content = []
            for p in self._paths:
                stat = p.stat() if p.exists() else None
                content.append([str(p), stat.st_size if stat else -1,
                                stat.st_mtime_ns if stat else -1])
        else:
            inner = getattr(self._dataset, "fingerprint", None)
            content = inner() if callable(inner) else type(self._dataset).__qualname__
        config = {"kind": "ConnectedDigits", "n": self.num_utterances, "digits": self.digits,
                  "gap": self.gap_s, "edge": self.edge_s, "rate": self.sample_rate,
                  "seed": self.seed, "speakers": self.speakers, "split": self.split,
                  "labels": self.clip_labels, "source": content,
                  "by_speaker": self._by_speaker}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_connected_digits(dataset: ConnectedDigits, out_dir: str | os.PathLike, *,
                           indices: Sequence[int] | None = None,
                           split: str | Mapping[str, str] | Callable[[str], str] | None = None,
                           subtype: str = "PCM_16") -> Path:
    """Write utterances of ``dataset`` as ``out_dir/utt_NNNNNN.wav`` and ``out_dir/manifest.csv``
    with columns ``path,transcript,speaker,num_digits`` (plus ``split`` when ``split`` is
    given: one name for all, a speaker -> split mapping, or a function of the speaker).

    Args:
        indices: which items (default None: all). subtype: soundfile WAV subtype (default
            ``"PCM_16"``; ``"FLOAT"`` keeps samples exact).
    Returns the manifest path. Paths in the manifest are relative to ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = range(len(dataset)) if indices is None else indices
    rows = []
    for i in chosen:
        item = dataset[int(i)]
        name = f"utt_{int(item['index']):06d}.wav"
        soundfile.write(str(out / name), item["waveform"].numpy(), dataset.sample_rate,
                        subtype=subtype)
        row = {"path": name, "transcript": item["transcript"], "speaker": item["speaker"],
               "num_digits": str(len(item["targets"]))}
        if split is not None:
            if isinstance(split, str):
                row["split"] = split
            elif isinstance(split, Mapping):
                if item["speaker"] not in split:
                    raise ValueError(f"split mapping has no entry for speaker "
                                     f"{item['speaker']!r}")
                row["split"] = split[item["speaker"]]
            else:
                row["split"] = str(split(item["speaker"]))
        rows.append(row)
    manifest = out / "manifest.csv"
    fields = ["path", "transcript", "speaker", "num_digits"]
    fields += ["split"] if split is not None else []
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_connected_digits_splits(source: str | os.PathLike, out_dir: str | os.PathLike, *,
                                  utterances: Mapping[str, int],
                                  test_speakers: Sequence[str] | None = None,
                                  digits: tuple[int, int] = (2, 7), sample_rate: int = 8000,
                                  seed: int = 0) -> Path:
    """A connected-digit CTC data set on disk, ready for ``kdcore train --task ctc``:
    :class:`ConnectedDigits` utterances of the isolated clips of ``source`` written as
    ``out_dir/<split>/utt_NNNNNN.wav`` and one ``out_dir/manifest.csv`` with columns
    ``path,transcript,speaker,num_digits,split``.

    Args:
        source: a manifest with columns ``path``, ``label``, ``speaker`` (FSDD style).
        utterances: utterances per split, e.g. ``{"train": 400, "val": 40, "test": 120}``
            (splits ``train``, ``val``, ``test``; a 0 count is left out).
        test_speakers: [None: the last speaker in sorted order, when there are two or more]
            speakers whose clips make the ``test`` utterances only; the other splits use the
            other speakers, so test speakers are unseen in training.
        digits: [(2, 7)] digits per utterance; sample_rate: [8000] Hz; seed: [0] split ``k``
            of ``("train", "val", "test")`` draws with ``seed * 1000 + k``.
    Returns the manifest path.
    """
    unknown = sorted(set(utterances) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"utterances has unknown splits {unknown}; use train, val and test")
    everyone = ConnectedDigits(source, 1, sample_rate=sample_rate, digits=digits).speakers
    held = (list(test_speakers) if test_speakers is not None
            else everyone[-1:] if len(everyone) > 1 else [])
    missing = sorted(set(held) - set(everyone))
    if missing:
        raise ValueError(f"test speakers {missing} are not in {source} (speakers: {everyone})")
    training = [s for s in everyone if s not in held] or everyone
    out = Path(out_dir)
    rows: list[dict] = []
    for k, name in enumerate(("train", "val", "test")):
        count = int(utterances.get(name, 0))
        if count <= 0:
            continue
        speakers = held if name == "test" and held else training
        dataset = ConnectedDigits(source, count, speakers=speakers, digits=digits,
                                  sample_rate=sample_rate, seed=seed * 1000 + k)
        part = write_connected_digits(dataset, out / name)
        with open(part, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                rows.append({**row, "path": f"{name}/{row['path']}", "split": name})
        part.unlink()
    if not rows:
        raise ValueError("utterances asks for no utterance at all")
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "transcript", "speaker",
                                                    "num_digits", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
