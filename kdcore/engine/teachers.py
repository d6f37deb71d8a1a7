"""Teacher sources, the teacher-cache key and the frame alignment rule.

Teacher outputs come from one of:

- :class:`OnlineTeacher`: an ``nn.Module`` run on every step (``torch.inference_mode``, the
  loop's autocast), with forward hooks on the tapped modules for feature pairs;
- :class:`CallableTeacher`: any callable (an onnxruntime session wrapped in a function, a
  remote model, ...) mapping the teacher's features to outputs. It carries the fingerprint
  it declares and always runs in cached mode: each (item, view) is computed once;
- the cache (:mod:`kdcore.engine.cache`) in front of either, keyed by :func:`cache_key`.

Frame alignment (:func:`align_frames`): teacher frame rates may differ from the student's;
student frame ``j`` takes the teacher frame whose span holds its centre time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcore.engine import checkpoint as ckpt
from kdcore.engine.hooks import FeatureTap, first_tensor


class OnlineTeacher:
    """A frozen ``nn.Module`` teacher; ``taps`` capture its tapped features."""

    def __init__(self, module: nn.Module, taps: list[FeatureTap]) -> None:
        self.module = module.eval().requires_grad_(False)
        self.call: Callable = self.module
        self.taps = taps
        self.fingerprint = ckpt.fingerprint(module)

    def to(self, device: torch.device) -> None:
        self.module.to(device)

    def __call__(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = {"logits": first_tensor(self.call(features))}
        for position, tap in enumerate(self.taps):
            outputs[f"feature{position}"] = tap.take()
        return outputs


class CallableTeacher:
    """Any callable ``fn(features) -> outputs`` (a tensor, numpy array, or a tuple/dict
    holding one) as a teacher. ``fingerprint``: a string that changes whenever the function's
    outputs would (e.g. a hash of the ONNX file); it keys the cache."""

    taps: list = []

    def __init__(self, fn: Callable, fingerprint: str) -> None:
        if not callable(fn):
            raise TypeError(f"teacher must be an nn.Module or a callable, got {type(fn).__name__}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise TypeError(f"teacher must be a torch.nn.Module, or a callable with "
                            f"teacher_fingerprint= (a non-empty string that changes with its "
                            f"outputs; it runs in cached mode), got {type(fn).__name__} without "
                            "one")
        self.fn, self.fingerprint = fn, fingerprint
        self.module = None

    def to(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.fn(features)
        if isinstance(output, (tuple, list)):
            output = output[0]
        if isinstance(output, dict):
            output = output["logits"]
        logits = torch.as_tensor(np.asarray(output) if not isinstance(output, torch.Tensor)
                                 else output)
        return {"logits": logits.to(features.device, torch.float32)}


def _plain(value: object, depth: int = 0) -> object:
    """A JSON-able image of a setting (plain values, sequences, dataclasses, objects with
    ``__slots__``); None when it is not a plain setting."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and depth < 3:
        return {f.name: _plain(getattr(value, f.name), depth + 1)
                for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)) and depth < 3:
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (nn.Module, torch.Tensor)) or depth >= 3:
        return None
    slots = getattr(type(value), "__slots__", None)
    if slots:  # a settings object such as LogMelConfig
        return {"class": type(value).__qualname__,
                **{name: _plain(getattr(value, name, None), depth + 1) for name in slots}}
    return None


def module_config(module: nn.Module | None) -> dict:
    """Every plain setting of ``module`` and its submodules (numbers, strings, flags, config
    dataclasses), by submodule name: what ``state_dict`` misses, e.g. ``LogMel``'s mel count
    and hop, whose filterbank is computed, not stored."""
    if module is None:
        return {}
    out = {}
    for name, sub in module.named_modules():
        settings = {"class": f"{type(sub).__module__}.{type(sub).__qualname__}",
                    "training": None}
        for key, value in sorted(vars(sub).items()):
            if key.startswith("_") or key == "training":
                continue
            plain = _plain(value)
            if plain is not None or value is None:
                settings[key] = plain
        out[name or "."] = settings
    return out


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(dataset: object) -> str | None:
    """A hash of a dataset's content: its own ``fingerprint()`` when it has one; else every
    file it lists (path, size, mtime), every tensor/array it holds (bytes) and its plain
    settings, found through its attributes (nested datasets included). None for an object
    that shows none of these (the key then covers only the item count)."""
    fingerprint = getattr(dataset, "fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    digest = hashlib.sha256()
    found = _walk(dataset, digest, depth=0, seen=set())
    return digest.hexdigest() if found else None


def _walk(value: object, digest: hashlib._Hash, depth: int, seen: set[int]) -> bool:
    if depth > 4 or id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        data = value.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.numpy().tobytes())
        return True
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
        return True
    if isinstance(value, (Path, os.PathLike)):
        path = Path(value)
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"{path}|missing".encode())
        return True
    if isinstance(value, (list, tuple)):
        found = False
        for item in value:
            found |= _walk(item, digest, depth + 1, seen)
            if not isinstance(item, (torch.Tensor, np.ndarray, Path, os.PathLike, list, tuple,
                                     torch.utils.data.Dataset)):
                digest.update(repr(item).encode())
                found = True
        return found
    if isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
        return False
    if isinstance(value, (nn.Module, torch.Generator)) or callable(value) and not hasattr(
            value, "__dict__"):
        return False
    attributes = getattr(value, "__dict__", None)
    if attributes is None:
        return False
    found = False
    for key in sorted(attributes):
        if key.startswith("_"):
            continue
        digest.update(key.encode())
        found |= _walk(attributes[key], digest, depth + 1, seen)
    return found


def frontend_rate(frontend: nn.Module | None) -> tuple[float | None, int | None]:
    """``(frames per second, sample rate)`` of the first module in ``frontend`` whose
    ``config`` (or itself) has ``sample_rate`` and ``hop_length`` (e.g. ``LogMel``)."""
    if frontend is None:
        return None, None
    for sub in frontend.modules():
        for holder in (getattr(sub, "config", None), sub):
            rate = getattr(holder, "sample_rate", None)
            hop = getattr(holder, "hop_length", None)
            if isinstance(rate, (int, float)) and isinstance(hop, int) and hop > 0:
                return rate / hop, int(rate)
    return None, None


def cache_key(*, teacher_fingerprint: str, teacher_frontend: nn.Module | None,
              taps: list[str], task: str, sample_rate: int | None,
              data: str | None) -> dict:
    """The teacher-cache key: the teacher, its frontend (state *and* every setting), the tapped
    modules, the task, the sample rate and the data's content fingerprint. A cache whose key
    differs is stale."""
    return {"teacher": teacher_fingerprint, "frontend": ckpt.fingerprint(teacher_frontend),
            "frontend_config": _digest(module_config(teacher_frontend)), "taps": list(taps),
            "task": task, "sample_rate": sample_rate, "data": data}


def run_cache_key(*, teacher_fingerprint: str, teacher_frontend: nn.Module | None,
                  taps: list[str], task: str, dataset: object) -> dict:
    """:func:`cache_key` as a run derives it: the sample rate from the teacher frontend (or the
    dataset's ``sample_rate``), the data fingerprint from ``dataset`` (a warning when it shows
    none), and for a :class:`kdcore.engine.views.ViewSet` a ``"views"`` entry (view count,
    view recipe, seed)."""
    data = data_fingerprint(dataset) if dataset is not None else None
    if data is None:
        warnings.warn("kdcore: the training dataset shows no content to fingerprint (no "
                      "fingerprint(), files or tensors); the teacher cache is keyed by its item "
                      "count only", UserWarning, stacklevel=3)
    key = cache_key(teacher_fingerprint=teacher_fingerprint, teacher_frontend=teacher_frontend,
                    taps=taps, task=task,
                    sample_rate=frontend_rate(teacher_frontend)[1]
                    or getattr(dataset, "sample_rate", None), data=data)
    view_key = getattr(dataset, "view_key", None)
    if callable(view_key):  # a ViewSet: its view count, recipe and seed
        key["views"] = view_key()
    return key


def fill_teacher_cache(teacher: nn.Module | Callable, loader: Iterable, directory: str | Path,
                       *, teacher_frontend: nn.Module | None = None, task: str = "multiclass",
                       teacher_fingerprint: str | None = None,
                       device: str | torch.device = "cpu", progress: bool = False,
                       description: str = "teacher cache") -> Path:
    """Fill a teacher cache in ``directory`` ahead of training, keyed exactly as
    ``Distiller(teacher, ..., teacher_mode="cached", cache_dir=directory)`` keys it, so that
    run reads it back without running the teacher.

    ``loader``: batches of the training set in the engine's loader contract, each with
    ``"index"``; its ``dataset`` gives the item count and the data fingerprint.
    ``teacher_frontend`` [None], ``task`` ["multiclass"], ``teacher_fingerprint`` [None: the
    module's state hash; required for a callable], ``device`` ["cpu"], ``progress`` [False]:
    one progress bar over the loader's batches, labelled ``description`` ["teacher cache"].
    One view per item (the frontend must be deterministic: it runs in eval mode). A cache
    already in ``directory`` with the same key and layout is kept, and only its missing rows
    are computed (the first batch always runs: it gives the output shapes), so an interrupted
    fill continues where it stopped. Returns the directory."""
    from kdcore.engine import batches as batching
    from kdcore.engine.cache import TeacherCache

    device = torch.device(device)
    if isinstance(teacher, nn.Module):
        source = OnlineTeacher(teacher, [])
        if teacher_fingerprint is not None:
            source.fingerprint = teacher_fingerprint
    else:
        source = CallableTeacher(teacher, teacher_fingerprint or "")
    source.to(device)
    frontend = teacher_frontend.to(device).eval() if teacher_frontend is not None else None
    dataset = getattr(loader, "dataset", None)
    if dataset is None or not hasattr(dataset, "__len__"):
        raise ValueError("fill_teacher_cache needs a loader whose dataset has a len()")
    key = run_cache_key(teacher_fingerprint=source.fingerprint, teacher_frontend=frontend,
                        taps=[], task=task, dataset=dataset)
    cache = None
    from tqdm.auto import tqdm

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    bar = tqdm(total=total, desc=description, unit="batch", disable=not progress, leave=False,
               dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for raw in loader:
                batch = batching.parse_batch(raw)
                if cache is not None and cache.lookup(batch.index, batch.view,
                                                      batch.size) is not None:
                    bar.update(1)
                    continue
                batch = batching.to_device(batch, device)
                features = batch.inputs if frontend is None else frontend(batch.inputs.float())
                outputs = source(features)
                if cache is None:
                    shapes = {name: tuple(value.shape[1:]) for name, value in outputs.items()}
                    cache = TeacherCache(Path(directory), key, len(dataset), 1, shapes)
                    cache.prepare(explicit=True)
                    cache.open()
                cache.store(batch.index, batch.view, outputs)
                bar.update(1)
    finally:
        bar.close()
    if cache is None:
        raise ValueError("fill_teacher_cache: the loader yielded no batch")
    cache.flush()
    return Path(directory)


def check_deterministic(frontend: nn.Module | None, inputs: torch.Tensor) -> None:
    """Refuse a teacher frontend that augments at random in cached mode (the cache would
    freeze one random view) unless it declares ``deterministic_views = True``: it is run twice
    in training mode on the probe batch with different seeds (the global RNG is restored)."""
    if frontend is None or getattr(frontend, "deterministic_views", False):
        return
    rng = ckpt.capture_rng()
    mode = frontend.training
    try:
        frontend.train()
        with torch.no_grad():
            torch.manual_seed(1)
            first = frontend(inputs.float())
            torch.manual_seed(2)
            second = frontend(inputs.float())
    finally:
        frontend.train(mode)
        ckpt.restore_rng(rng)
    if not torch.equal(first, second):
        raise ValueError(
            "teacher_mode='cached' with a teacher frontend that augments at random: the cache "
            "would keep one random view per item. Give the teacher a deterministic frontend "
            "(teacher_frontend=...), use teacher_mode='online', or set "
            "deterministic_views = True on a frontend whose views depend only on the batch's "
            "'view' ids")


def align_frames(teacher: torch.Tensor, student_frames: int, teacher_rate: float | None,
                 student_rate: float | None) -> torch.Tensor:
    """Teacher outputs (B, Tt, ...) resampled to ``student_frames`` frames by frame centres.

    Rule: output frame ``i`` of a stream at ``r`` frames per second spans ``[i/r, (i+1)/r)``
    and its centre is ``(i + 0.5)/r``; student frame ``j`` takes teacher frame
    ``min(floor((j + 0.5) * rt / rs), Tt - 1)``. Equal frame counts with no rates given pass
    through. A teacher frame count off ``Ts * rt / rs`` by more than ``max(1, seconds)``
    frames (one frame per second of audio) raises a ValueError naming both rates.
    """
    frames = teacher.shape[1]
    if teacher_rate is None or student_rate is None:
        if frames == student_frames:
            return teacher
        raise ValueError(
            f"teacher and student give {frames} and {student_frames} frames; set "
            "teacher_frame_rate and student_frame_rate (frames per second) so they can be "
            "aligned by frame centre times")
    seconds = student_frames / student_rate
    expected = student_frames * teacher_rate / student_rate
    if abs(frames - expected) > max(1.0, seconds):
        raise ValueError(
            f"teacher frame rate {teacher_rate:g}/s and student frame rate {student_rate:g}/s "
            f"disagree with the frame counts: {student_frames} student frames "
            f"({seconds:.3f} s) need about {expected:.1f} teacher frames, got {frames}")
    if frames == student_frames and math.isclose(teacher_rate, student_rate):
        return teacher
    centres = (torch.arange(student_frames, dtype=torch.float64) + 0.5) * (
        teacher_rate / student_rate)
    index = centres.floor().long().clamp(max=frames - 1).to(teacher.device)
    return teacher.index_select(1, index)


