"""Connected-digit CTC recognition: batching of :class:`kdcore.data.ConnectedDigits` items for
``task="ctc"``, a log-mel frontend for 8 kHz digits, and greedy WER/CER evaluation.

Token ids: class 0 is the CTC blank and token ``v`` of an item's ``targets`` is class
``v + token_offset`` (default 1), so the digits 0..9 are classes 1..10 and a model has 11
outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from kdcore.data.audio import read_audio
from kdcore.data.sources import read_rows
from kdcore.eval.metrics import (
    character_error_rate,
    ctc_greedy_decode,
    tokens_to_text,
    word_error_rate,
)
from kdcore.frontend import LogMel

__all__ = ["DIGITS", "CTCCollate", "TranscriptManifest", "ctc_text_metrics", "digits_frontend",
           "evaluate_ctc", "transcribe"]

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


def digits_frontend(sample_rate: int = 8000, *, n_mels: int = 40, backend: str = "auto"
                    ) -> LogMel:
    """Log-mel frontend for spoken digits: 32 ms Hann windows every 16 ms (``n_fft`` and
    ``hop_length`` scale with ``sample_rate``; 256 and 128 at the default 8000 Hz), ``n_mels``
    (default 40) HTK mels up to Nyquist, ``ln(x + 1e-6)``. ``backend`` [``"auto"``] as in
    :class:`kdcore.LogMel`."""
    hop = max(1, round(0.016 * sample_rate))
    return LogMel(sample_rate=sample_rate, n_fft=2 * hop, hop_length=hop, n_mels=n_mels,
                  log="ln", log_eps=1e-6, backend=backend)


class TranscriptManifest(Dataset):
    """Utterances listed in a CSV manifest with columns ``path`` and ``transcript`` (words
    joined by spaces; optional ``speaker`` and ``split``), such as the folder written by
    :func:`kdcore.data.write_connected_digits`. Paths are relative to the manifest.

    Args:
        manifest: the CSV path.
        vocabulary: the words, token ``i`` being ``vocabulary[i]``. Default the digits.
        sample_rate: Hz the audio is resampled to (soxr). Default 8000.
        split: keep only rows whose ``split`` equals it. Default None: all rows.
        speakers: keep only these speakers (needs a ``speaker`` column). Default None.

    Items match :class:`kdcore.data.ConnectedDigits` for :class:`CTCCollate`: ``waveform``
    (T,) float32, ``transcript`` (str), ``targets`` (N,) int64 word indices, ``speaker``
    (str, "" without the column), ``index`` (int). An unknown word raises ValueError naming
    the file and row.
    """

    def __init__(self, manifest: str | os.PathLike, *, vocabulary: Sequence[str] = DIGITS,
                 sample_rate: int = 8000, split: str | None = None,
                 speakers: Sequence[str] | None = None) -> None:
        path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        header, rows = read_rows(path)
        need = ["path", "transcript"] + (["split"] if split is not None else []) + (
            ["speaker"] if speakers is not None else [])
        missing = [c for c in need if c not in header]
        if missing:
            raise ValueError(f"{path}: manifest needs columns {need}, missing {missing}")
        token = {word: i for i, word in enumerate(vocabulary)}
        self.items: list[tuple[Path, str, list[int], str]] = []
        keep = None if speakers is None else {str(s) for s in speakers}
        for line, row in enumerate(rows, start=2):
            if split is not None and row["split"] != split:
                continue
            if keep is not None and row["speaker"] not in keep:
                continue
            words = row["transcript"].split()
            unknown = [w for w in words if w not in token]
            if not row["path"] or not words or unknown:
                raise ValueError(f"{path}: row {line} needs a path and a transcript of words "
                                 f"in the vocabulary (unknown: {unknown})")
            self.items.append((path.parent / row["path"], " ".join(words),
                               [token[w] for w in words], row.get("speaker", "")))
        if not self.items:
            raise ValueError(f"{path}: no rows left after the split/speakers filters")
        self.sample_rate, self.vocabulary = sample_rate, tuple(vocabulary)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        audio, transcript, tokens, speaker = self.items[index]
        return {"waveform": torch.from_numpy(read_audio(audio, self.sample_rate)),
                "transcript": transcript, "targets": torch.tensor(tokens, dtype=torch.int64),
                "speaker": speaker, "index": index}


class CTCCollate:
    """Collate ``ConnectedDigits`` items (dicts with ``waveform`` (T,) and ``targets`` (N,))
    into a ``task="ctc"`` batch dict:

    - ``waveform`` (B, T_max) float32, zero padded;
    - ``label`` (B, N_max) int64: ``targets + token_offset``, padded with -1;
    - ``target_lengths`` (B,) int64;
    - ``lengths`` (B,) int64 valid **output** frames, ``frames(sample_lengths)``;
    - ``index`` (B,) int64 when every item has one.

    Args:
        frames: maps (B,) int64 sample counts to the model's (B,) output frame counts, e.g.
            ``lambda n: model.output_frames(frontend.frames(n))``.
        token_offset: added to every target (default 1: class 0 is the blank).
    """

    def __init__(self, frames: Callable[[torch.Tensor], torch.Tensor], *,
                 token_offset: int = 1) -> None:
        if not callable(frames):
            raise TypeError("frames must be a callable mapping sample counts to output frames")
        if isinstance(token_offset, bool) or not isinstance(token_offset, int) \
                or token_offset < 0:
            raise ValueError(f"token_offset must be an int >= 0, got {token_offset!r}")
        self.frames, self.token_offset = frames, token_offset

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "waveform" not in item or "targets" not in item:
                raise ValueError(f"item {i} must be a dict with 'waveform' and 'targets' (a "
                                 "ConnectedDigits item)")
        waves = [torch.as_tensor(it["waveform"], dtype=torch.float32).reshape(-1)
                 for it in items]
        targets = [torch.as_tensor(it["targets"], dtype=torch.int64).reshape(-1)
                   for it in items]
        samples = torch.tensor([w.numel() for w in waves], dtype=torch.int64)
        waveform = torch.zeros(len(items), int(samples.max()))
        label = torch.full((len(items), max(1, max(t.numel() for t in targets))), -1,
                           dtype=torch.int64)
        for b, (w, t) in enumerate(zip(waves, targets, strict=True)):
            waveform[b, :w.numel()] = w
            label[b, :t.numel()] = t + self.token_offset
        lengths = torch.as_tensor(self.frames(samples), dtype=torch.int64).reshape(-1)
        if lengths.shape != samples.shape:
            raise ValueError(f"frames returned shape {tuple(lengths.shape)} for "
                             f"{len(items)} items")
        batch = {"waveform": waveform, "label": label, "lengths": lengths,
                 "target_lengths": torch.tensor([t.numel() for t in targets])}
        if all("index" in it for it in items):
            batch["index"] = torch.tensor([int(it["index"]) for it in items])
        return batch


def _texts(tokens: Iterable[Sequence[int]], vocabulary: Sequence[str],
           token_offset: int) -> list[str]:
    return [tokens_to_text([int(t) - token_offset for t in row], vocabulary) for row in tokens]


def ctc_text_metrics(vocabulary: Sequence[str] = DIGITS, *, token_offset: int = 1
                     ) -> dict[str, Callable]:
    """``{"wer": fn, "cer": fn}`` for ``Trainer``/``Distiller(metrics=...)`` with
    ``task="ctc"``: each maps the engine's greedy token-id lists to words of ``vocabulary``
    (default the digits; class ``token_offset + i`` is ``vocabulary[i]``) and scores corpus
    WER/CER with jiwer."""

    def wer(references: list[list[int]], hypotheses: list[list[int]]) -> float:
        return word_error_rate(_texts(references, vocabulary, token_offset),
                               _texts(hypotheses, vocabulary, token_offset))

    def cer(references: list[list[int]], hypotheses: list[list[int]]) -> float:
        return character_error_rate(_texts(references, vocabulary, token_offset),
                                    _texts(hypotheses, vocabulary, token_offset))

    return {"wer": wer, "cer": cer}


@torch.no_grad()
def transcribe(model: nn.Module, loader: Iterable[dict], *, frontend: nn.Module | None = None,
               vocabulary: Sequence[str] = DIGITS, token_offset: int = 1, blank: int = 0
               ) -> tuple[list[str], list[str]]:
    """Greedy CTC transcripts of every batch of ``loader`` (:class:`CTCCollate` dicts).

    The model (eval mode, on its parameters' device) maps ``frontend(waveform)`` (or
    ``input``) to (B, T, C) scores; :func:`kdcore.eval.metrics.ctc_greedy_decode` decodes the
    first ``lengths`` frames of each. Returns (references, hypotheses) as space-joined words
    of ``vocabulary`` (references from ``label``; empty string for an empty hypothesis)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    references: list[str] = []
    hypotheses: list[str] = []
    try:
        for batch in loader:
            inputs = batch["waveform"] if "waveform" in batch else batch["input"]
            inputs = inputs.to(device).float()
            if frontend is not None:
                inputs = frontend.to(device)(inputs)
            scores = model(inputs)
            if scores.dim() != 3:
                raise ValueError(f"the model must return (B, T, C) scores, got shape "
                                 f"{tuple(scores.shape)}")
            decoded = ctc_greedy_decode(scores.float().cpu(), batch["lengths"], blank=blank)
            labels = batch["label"]
            references += _texts([[v for v in row.tolist() if v >= 0] for row in labels],
                                 vocabulary, token_offset)
            hypotheses += _texts(decoded, vocabulary, token_offset)
    finally:
        model.train(was_training)
    return references, hypotheses


def evaluate_ctc(model: nn.Module, loader: Iterable[dict], *, frontend: nn.Module | None = None,
                 vocabulary: Sequence[str] = DIGITS, token_offset: int = 1, blank: int = 0
                 ) -> dict[str, float]:
    """Greedy corpus ``wer`` and ``cer`` (jiwer) and ``utterances`` over ``loader``; arguments
    as :func:`transcribe`."""
    refs, hyps = transcribe(model, loader, frontend=frontend, vocabulary=vocabulary,
                            token_offset=token_offset, blank=blank)
    return {"wer": word_error_rate(refs, hyps), "cer": character_error_rate(refs, hyps),
            "utterances": float(len(refs))}
