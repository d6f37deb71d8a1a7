"""Seeded mixtures of speech and kdcore's procedural noises: (noisy, clean) pairs for
enhancement (:class:`NoisyMixtures`) and multi-label clips for tagging (:class:`TaggedMixtures`)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset

from kdcore.data.noise import NOISE_KINDS, make_noise, scale_to_snr

__all__ = ["EVENT_TAGS", "NoisyMixtures", "TaggedMixtures", "item_seed", "split_item",
           "write_tagged_mixtures", "write_tagging_dataset"]


def item_seed(seed: int, index: int, salt: int = 0) -> int:
    """A 63-bit seed for item ``index`` of a dataset seeded with ``seed`` (numpy
    ``SeedSequence([seed, index, salt])``): items are independent and each is reproducible."""
    state = np.random.SeedSequence([int(seed), int(index), int(salt)]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def split_item(item: object, where: str) -> tuple[torch.Tensor, str | None]:
    """The 1-D waveform and the speaker (or None) of a dataset item: a tensor or array, a dict
    with ``waveform`` (or ``audio``) and optional ``speaker``, or a tuple / named tuple whose
    first field is the waveform (an ``AudioExample``; a ``speaker`` attribute is used)."""
    speaker = None
    if isinstance(item, dict):
        key = "waveform" if "waveform" in item else "audio" if "audio" in item else None
        if key is None:
            raise ValueError(f"{where}: a dict item needs a 'waveform' or 'audio' key, "
                             f"got keys {sorted(item)}")
        wave, speaker = item[key], item.get("speaker")
    elif isinstance(item, (tuple, list)):
        if len(item) == 0:
            raise ValueError(f"{where}: empty tuple item")
        wave, speaker = item[0], getattr(item, "speaker", None)
    else:
        wave = item
    wave = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave)
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1 or wave.numel() == 0 or not wave.is_floating_point():
        raise ValueError(f"{where}: the waveform must be a non-empty 1-D float array, got "
                         f"shape {tuple(wave.shape)} dtype {wave.dtype}")
    return wave, (None if speaker is None or speaker == "" else str(speaker))


def _snr_range(snr_db: float | tuple[float, float], name: str = "snr_db") -> tuple[float, float]:
    if isinstance(snr_db, (int, float)) and not isinstance(snr_db, bool):
        low = high = float(snr_db)
    else:
        try:
            low, high = (float(v) for v in snr_db)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {snr_db!r}") \
                from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise ValueError(f"{name} must be finite with low <= high, got {snr_db!r}")
    return low, high


class NoisyMixtures(Dataset):
    """Noisy speech made on the fly: item ``i`` is ``speech[i]`` plus one procedural noise at an
    SNR drawn for that item, the same on every call and every run.

    Args:
        speech: any sized dataset of clean speech whose items are waveforms (see
            :func:`split_item`: tensors, dicts with ``waveform``/``speaker``, or tuples such as
            ``AudioExample``), all at ``sample_rate``.
        snr_db: a fixed SNR in dB or a ``(low, high)`` range drawn uniformly. Default (0, 10).
        noises: the noise kinds to draw from uniformly (subset of
            :data:`kdcore.data.noise.NOISE_KINDS`). Default all six.
        seed: base seed; item ``i`` uses :func:`item_seed` ``(seed, i)``. Default 0.
        sample_rate: Hz; default None takes ``speech.sample_rate``.
        speakers: speaker per item of ``speech``; default None reads ``speech.speakers`` if it
            exists, else each item's own ``speaker`` field, else unknown.
        babble_talkers: talkers in babble (default 3). Babble uses other items of ``speech``;
            when the item's speaker is known, only items of other speakers.
        dtype: dtype of the returned waveforms. Default float32 (the SNR is computed in float64;
            float32 storage keeps it to about 1e-4 dB).

    Items are dicts: ``noisy`` and ``clean`` (T,), ``noise`` (T,) the scaled noise
    (``noisy = clean + noise``), ``snr_db`` (float), ``noise_kind`` (str), ``index`` (int) and
    ``speaker`` (str, "" when unknown).
    """

    def __init__(self, speech: Dataset, snr_db: float | tuple[float, float] = (0.0, 10.0),
                 noises: Sequence[str] = NOISE_KINDS, *, seed: int = 0,
                 sample_rate: int | None = None, speakers: Sequence[str] | None = None,
                 babble_talkers: int = 3, dtype: torch.dtype = torch.float32) -> None:
        if not hasattr(speech, "__len__") or len(speech) == 0:
            raise ValueError("speech must be a non-empty sized dataset of waveforms")
        self.speech = speech
        self.snr_range = _snr_range(snr_db)
        if isinstance(noises, str):
            noises = [noises]
        self.noises = tuple(noises)
        unknown = [k for k in self.noises if k not in NOISE_KINDS]
        if not self.noises or unknown:
            raise ValueError(f"noises must be a non-empty subset of {list(NOISE_KINDS)}, "
                             f"got {list(noises)}")
        if "babble" in self.noises and len(speech) < 2:
            raise ValueError("noises includes 'babble', which needs at least 2 speech items")
        rate = sample_rate if sample_rate is not None else getattr(speech, "sample_rate", None)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise ValueError("sample_rate must be a positive int (or the speech dataset must "
                             f"have a sample_rate attribute), got {rate!r}")
        self.sample_rate = rate
        if speakers is None:
            speakers = getattr(speech, "speakers", None)
            if speakers is not None and len(speakers) != len(speech):
                speakers = None
        elif len(speakers) != len(speech):
            raise ValueError(f"speakers has {len(speakers)} entries for {len(speech)} items")
        self.speakers = None if speakers is None else [str(s) for s in speakers]
        if isinstance(babble_talkers, bool) or not isinstance(babble_talkers, int) \
                or babble_talkers < 1:
            raise ValueError(f"babble_talkers must be a positive int, got {babble_talkers!r}")
        self.seed, self.babble_talkers, self.dtype = int(seed), babble_talkers, dtype

    def __len__(self) -> int:
        return len(self.speech)

    def _load(self, index: int) -> tuple[torch.Tensor, str | None]:
        wave, speaker = split_item(self.speech[index], f"speech[{index}]")
        if self.speakers is not None:
            speaker = self.speakers[index]
        return wave, speaker

    def _babble_clips(self, index: int, speaker: str | None,
                      gen: torch.Generator) -> list[torch.Tensor]:
        clips: list[torch.Tensor] = []
        tries = 0
        while len(clips) < self.babble_talkers and tries < 50 * self.babble_talkers:
            tries += 1
            other = int(torch.randint(len(self) - 1, (), generator=gen))
            other += other >= index  # any item but this one
            if speaker is not None and self.speakers is not None \
                    and self.speakers[other] == speaker:
                continue
            wave, other_speaker = self._load(other)
            if speaker is not None and other_speaker == speaker:
                continue
            clips.append(wave)
        if not clips:
            raise ValueError(f"babble for item {index} (speaker {speaker!r}) found no item of "
                             "another speaker in speech")
        return clips

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        clean, speaker = self._load(index)
        gen = torch.Generator().manual_seed(item_seed(self.seed, index))
        kind = self.noises[int(torch.randint(len(self.noises), (), generator=gen))]
        low, high = self.snr_range
        snr = low + (high - low) * float(torch.rand((), generator=gen, dtype=torch.float64))
        clips = self._babble_clips(index, speaker, gen) if kind == "babble" else None
        noise_seed = int(torch.randint(2 ** 62, (), generator=gen))
        noise = make_noise(kind, clean.numel(), self.sample_rate, noise_seed,
                           babble_clips=clips, dtype=torch.float64)
        clean64 = clean.double()
        noise = scale_to_snr(clean64, noise, snr)
        return {"noisy": (clean64 + noise).to(self.dtype), "clean": clean.to(self.dtype),
                "noise": noise.to(self.dtype), "snr_db": snr, "noise_kind": kind,
                "index": index, "speaker": speaker or ""}

    def fingerprint(self) -> str:
        """sha256 of the mixing settings and the speech dataset's own ``fingerprint()`` (its
        type and length when it has none)."""
        inner = getattr(self.speech, "fingerprint", None)
        config = {"kind": "NoisyMixtures", "snr": self.snr_range, "noises": self.noises,
                  "seed": self.seed, "rate": self.sample_rate, "talkers": self.babble_talkers,
                  "speakers": self.speakers, "dtype": str(self.dtype),
                  "speech": inner() if callable(inner)
                  else f"{type(self.speech).__qualname__}:{len(self.speech)}"}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


EVENT_TAGS = ("speech", "hum", "bursts", "tone", "white", "pink", "brown")


class TaggedMixtures(Dataset):
    """Multi-label clips for audio tagging: each clip sums procedural events (and optionally a
    speech clip), and its targets say which are present. Item ``i`` is the same on every call.

    Args:
        speech: a sized dataset of speech waveforms at ``sample_rate`` (items as in
            :func:`split_item`); required when ``"speech"`` is among ``tags``. Default None.
        num_clips: dataset length. Default 1000.
        tags: the classes, a subset of :data:`EVENT_TAGS` (``speech``, ``hum``, ``bursts``,
            ``tone``, ``white``, ``pink``, ``brown``). Default ``("speech", "hum", "bursts",
            "tone")``.
        probability: chance that each tag is present, independently; a clip with none gets
            one drawn uniformly. Default 0.5.
        level_db: ``(low, high)`` gain in dB drawn per event, applied to the event at unit RMS.
            Default (-10, 0).
        duration_s: clip length in seconds. Default 1.0.
        sample_rate: Hz. Default 16000.
        seed: base seed (clip ``i`` uses ``item_seed(seed, i, 1)``). Default 0.

    Events: ``speech`` is a random clip of ``speech`` (unit RMS) at a random offset, cropped
    to the clip; ``tone`` is a sine of ``U(300, min(3000, 0.4 fs))`` Hz over ``U(0.2, 0.8)`` of
    the clip with 10 ms raised-cosine ramps; ``hum``, ``bursts``, ``white``, ``pink`` and
    ``brown`` are :mod:`kdcore.data.noise` generators over the whole clip.

    Items are dicts: ``waveform`` (T,) float32 (the sum of ``events``); ``events`` (C, T)
    float32, one row per tag (zeros when absent); ``targets`` (C,) float32 multi-hot;
    ``labels`` (str) the present tags joined by ``;`` (a manifest ``labels`` column);
    ``index`` (int).
    """

    def __init__(self, speech: Dataset | None = None, num_clips: int = 1000, *,
                 tags: Sequence[str] = ("speech", "hum", "bursts", "tone"),
                 probability: float = 0.5, level_db: tuple[float, float] = (-10.0, 0.0),
                 duration_s: float = 1.0, sample_rate: int = 16000, seed: int = 0) -> None:
        if isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1:
            raise ValueError(f"num_clips must be a positive int, got {num_clips!r}")
        self.tags = tuple(tags)
        bad = [t for t in self.tags if t not in EVENT_TAGS]
        if not self.tags or bad or len(set(self.tags)) != len(self.tags):
            raise ValueError(f"tags must be distinct names from {list(EVENT_TAGS)}, got "
                             f"{list(tags)}")
        if "speech" in self.tags and (speech is None or len(speech) == 0):
            raise ValueError("tags includes 'speech': pass a non-empty speech dataset")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability!r}")
        self.level_db = _snr_range(level_db, "level_db")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
        self.num_samples = round(duration_s * sample_rate)
        if self.num_samples < 64:
            raise ValueError(f"duration_s must give at least 64 samples, got {duration_s!r}")
        self.speech, self.num_clips, self.probability = speech, num_clips, float(probability)
        self.sample_rate, self.duration_s, self.seed = sample_rate, float(duration_s), int(seed)

    def __len__(self) -> int:
        return self.num_clips

    def _event(self, tag: str, gen: torch.Generator) -> torch.Tensor:
        n, rate = self.num_samples, self.sample_rate
        if tag == "speech":
            pick = int(torch.randint(len(self.speech), (), generator=gen))
            clip, _ = split_item(self.speech[pick], f"speech[{pick}]")
            clip = clip.double()
            rms = clip.square().mean().sqrt()
            if not rms > 0:
                raise ValueError(f"speech[{pick}] is silent")
            clip = clip / rms
            out = torch.zeros(n, dtype=torch.float64)
            if clip.numel() >= n:
                start = int(torch.randint(clip.numel() - n + 1, (), generator=gen))
                return clip[start:start + n]
            start = int(torch.randint(n - clip.numel() + 1, (), generator=gen))
            out[start:start + clip.numel()] = clip
            return out
        if tag == "tone":
            high = min(3000.0, 0.4 * rate)
            freq = 300.0 + (high - 300.0) * float(torch.rand((), generator=gen,
                                                             dtype=torch.float64))
            length = max(8, round(n * (0.2 + 0.6 * float(torch.rand((), generator=gen,
                                                                    dtype=torch.float64)))))
            start = int(torch.randint(n - length + 1, (), generator=gen))
            t = torch.arange(length, dtype=torch.float64) / rate
            tone = torch.sin(2 * np.pi * freq * t) * np.sqrt(2.0)
            ramp = min(length // 2, round(0.01 * rate))
            if ramp > 0:
                edge = 0.5 - 0.5 * torch.cos(torch.linspace(0, np.pi, ramp, dtype=torch.float64))
                tone[:ramp] *= edge
                tone[-ramp:] *= edge.flip(0)
            out = torch.zeros(n, dtype=torch.float64)
            out[start:start + length] = tone
            return out
        noise_seed = int(torch.randint(2 ** 62, (), generator=gen))
        return make_noise(tag, n, rate, noise_seed, dtype=torch.float64)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        gen = torch.Generator().manual_seed(item_seed(self.seed, index, 1))
        present = torch.rand(len(self.tags), generator=gen, dtype=torch.float64) \
            < self.probability
        if not bool(present.any()):
            present[int(torch.randint(len(self.tags), (), generator=gen))] = True
        events = torch.zeros(len(self.tags), self.num_samples, dtype=torch.float64)
        low, high = self.level_db
        for c, tag in enumerate(self.tags):
            if present[c]:
                gain_db = low + (high - low) * float(torch.rand((), generator=gen,
                                                                dtype=torch.float64))
                events[c] = self._event(tag, gen) * 10.0 ** (gain_db / 20.0)
        events = events.to(torch.float32)
        return {"waveform": events.sum(0), "events": events,
                "targets": present.to(torch.float32),
                "labels": ";".join(t for t, p in zip(self.tags, present.tolist(), strict=True)
                                   if p),
                "index": index}

    def fingerprint(self) -> str:
        """sha256 of the settings and the speech dataset's ``fingerprint()`` (else its type and
        length)."""
        inner = getattr(self.speech, "fingerprint", None)
        speech = None if self.speech is None else (
            inner() if callable(inner) else f"{type(self.speech).__qualname__}:{len(self.speech)}")
        config = {"kind": "TaggedMixtures", "n": self.num_clips, "tags": self.tags,
                  "p": self.probability, "level": self.level_db, "duration": self.duration_s,
                  "rate": self.sample_rate, "seed": self.seed, "speech": speech}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_tagged_mixtures(dataset: TaggedMixtures, out_dir: str | os.PathLike, *,
                          indices: Sequence[int] | None = None,
                          split: str | None = None, subtype: str = "FLOAT") -> Path:
    """Write clips of ``dataset`` as ``out_dir/clip_NNNNNN.wav`` and ``out_dir/manifest.csv``
    with columns ``path,labels`` (``;``-separated tags; plus ``split`` when given). ``indices``
    default None (all); ``subtype`` the soundfile WAV subtype, default ``"FLOAT"`` (event sums
    can exceed 1, which PCM would clip). Returns the manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["path", "labels"] + (["split"] if split is not None else [])
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for i in (range(len(dataset)) if indices is None else indices):
            item = dataset[int(i)]
            name = f"clip_{int(item['index']):06d}.wav"
            soundfile.write(str(out / name), item["waveform"].numpy(), dataset.sample_rate,
                            subtype=subtype)
            row = {"path": name, "labels": item["labels"]}
            if split is not None:
                row["split"] = split
            writer.writerow(row)
    return manifest


def _speech_by_speaker(manifest: Path, sample_rate: int) -> dict[str, list[torch.Tensor]]:
    """The clips of a ``path,...,speaker`` manifest (paths relative to its folder), read at
    ``sample_rate``, grouped by speaker."""
    from kdcore.data.audio import read_audio

    if not manifest.is_file():
        raise FileNotFoundError(f"speech manifest does not exist: {manifest}")
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "path" not in rows[0] or "speaker" not in rows[0]:
        raise ValueError(f"{manifest} needs 'path' and 'speaker' columns and at least one row")
    clips: dict[str, list[torch.Tensor]] = {}
    for number, row in enumerate(rows, start=2):
        speaker = (row.get("speaker") or "").strip()
        if not speaker:
            raise ValueError(f"{manifest} line {number}: empty 'speaker'")
        wave = read_audio(manifest.parent / row["path"], sample_rate)
        clips.setdefault(speaker, []).append(torch.from_numpy(wave))
    return clips


def write_tagging_dataset(speech_manifest: str | os.PathLike, out_dir: str | os.PathLike, *,
                          test_speakers: Sequence[str], train_clips: int = 800,
                          val_clips: int = 0, test_clips: int = 200,
                          tags: Sequence[str] = EVENT_TAGS, probability: float = 0.4,
                          level_db: tuple[float, float] = (-25.0, 0.0), duration_s: float = 1.0,
                          sample_rate: int = 8000, seed: int = 0) -> Path:
    """Write a multi-label tagging set with held-out speakers: :class:`TaggedMixtures` clips
    whose ``speech`` event is a spoken clip of ``speech_manifest`` (a CSV with ``path`` and
    ``speaker`` columns, paths relative to its folder, e.g. FSDD's spoken digits), mixed with
    procedural events (``hum``, ``bursts``, ``tone``, ``white``, ``pink``, ``brown``).

    Training (and validation) clips use only the speech of speakers not in ``test_speakers``;
    test clips use only the speech of ``test_speakers``. Writes ``out_dir/{train,val,test}/
    clip_NNNNNN.wav`` (float WAV) and ``out_dir/manifest.csv`` with columns
    ``path,labels,split`` (``labels``: present tags joined by ``;``), the format of
    ``kdcore train --task multilabel``. Returns the manifest path.

    Defaults: ``train_clips`` 800, ``val_clips`` 0 (no val split), ``test_clips`` 200,
    ``tags`` all of :data:`EVENT_TAGS`, ``probability`` 0.4 per tag, ``level_db`` (-25, 0) dB
    per event (quiet events under loud ones make the task hard), ``duration_s`` 1.0,
    ``sample_rate`` 8000 Hz, ``seed`` 0 (train, val and test are :class:`TaggedMixtures` with
    seeds ``3 seed``, ``3 seed + 1`` and ``3 seed + 2``)."""
    manifest = Path(speech_manifest)
    held_out = [str(s) for s in ([test_speakers] if isinstance(test_speakers, str)
                                 else test_speakers)]
    if not held_out:
        raise ValueError("test_speakers must name at least one speaker to hold out")
    needs_speech = "speech" in tuple(tags)
    speech = _speech_by_speaker(manifest, sample_rate) if needs_speech else {}
    unknown = [s for s in held_out if needs_speech and s not in speech]
    if unknown:
        raise ValueError(f"test_speakers {unknown} are not in {manifest} (speakers: "
                         f"{sorted(speech)})")
    train_speech = [c for s, clips in sorted(speech.items()) if s not in held_out for c in clips]
    test_speech = [c for s in held_out for c in speech.get(s, [])]
    if needs_speech and not train_speech:
        raise ValueError(f"every speaker of {manifest} is in test_speakers; none is left to "
                         "train on")
    out = Path(out_dir)
    rows = []
    common = {"tags": tags, "probability": probability, "level_db": level_db,
              "duration_s": duration_s, "sample_rate": sample_rate}
    for offset, (split, count, clips) in enumerate((("train", train_clips, train_speech),
                                                    ("val", val_clips, train_speech),
                                                    ("test", test_clips, test_speech))):
        if count == 0 and split == "val":
            continue
        mixtures = TaggedMixtures(clips or None, count, seed=3 * int(seed) + offset, **common)
        part = write_tagged_mixtures(mixtures, out / split)
        with open(part, newline="", encoding="utf-8") as handle:
            rows += [(f"{split}/{row['path']}", row["labels"], split)
                     for row in csv.DictReader(handle)]
        part.unlink()
    path = out / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    return path
