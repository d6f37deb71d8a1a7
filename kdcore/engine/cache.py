"""The teacher cache: teacher outputs per (item, view), memory-mapped on disk.

Layout of a cache directory:

- ``meta.json``: the key (:func:`kdcore.engine.teachers.cache_key`: teacher, teacher frontend
  state and settings, tapped teacher modules, task, sample rate, data fingerprint),
  ``num_items``, ``num_views`` and the per-item shape of every stored output;
- ``<name>.f32`` (or ``.f16`` with ``storage="float16"``): one ``numpy.memmap`` per output,
  shaped (num_items, num_views, *shape) (``logits`` and ``feature0``, ``feature1``, ... for the
  tapped teacher features);
- ``filled.u8``: (num_items, num_views) flags, set after the row's outputs are written.

Rows are filled the first time their (item, view) passes through the training step and read
back from then on. Under DDP rank 0 creates the files and every rank writes its own rows into
the same mapping (one machine, or a shared file system).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from kdcore.errors import UserInputError

META = "meta.json"
FLAGS = "filled.u8"
FORMAT_VERSION = 1
STORAGES = {"float32": (np.float32, "f32"), "float16": (np.float16, "f16")}
# float16 storage rounds each value to nearest: relative error <= 2**-11 for |x| in
# [6.1e-5, 65504]; larger values overflow to inf and are refused at write time.
FLOAT16_RELATIVE_ERROR = 2.0 ** -11


class CacheMismatchError(UserInputError):
    """A cache directory the user named was built for another key (teacher, frontend, task,
    sample rate or data)."""


class TeacherCache:
    def __init__(self, directory: Path, key: dict, num_items: int, num_views: int,
                 shapes: dict[str, tuple[int, ...]], storage: str = "float32") -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        self.storage = storage
        self.dtype, self.suffix = STORAGES[storage]
        self.directory = Path(directory)
        self.key = dict(key, format=FORMAT_VERSION)
        self.num_items = num_items
        self.num_views = num_views
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.arrays: dict[str, np.memmap] = {}
        self.flags: np.memmap | None = None

    def _meta(self) -> dict:
        return {"key": self.key, "num_items": self.num_items, "num_views": self.num_views,
                "storage": self.storage,
                "shapes": {name: list(shape) for name, shape in self.shapes.items()}}

    def prepare(self, *, explicit: bool) -> None:
        """Create the files, or check existing ones (call on rank 0 only).

        A cache of another teacher/frontend raises :class:`CacheMismatchError` when the user
        named the directory (``explicit``); otherwise it, or any cache whose layout no longer
        fits (items, views, shapes), is stale and rebuilt with a warning."""
        meta_path = self.directory / META
        if meta_path.exists():
            try:
                found = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                found = None
            stored = found.get("key", {}) if isinstance(found, dict) else {}
            same_key = stored == self.key
            if found is not None and not same_key and explicit:
                differ = sorted(k for k in set(stored) | set(self.key)
                                if stored.get(k) != self.key.get(k))
                raise CacheMismatchError(
                    f"the teacher cache in {self.directory} was built for another teacher or "
                    f"key (differs in {differ}: teacher {str(stored.get('teacher'))[:12]} vs this "
                    f"{str(self.key.get('teacher'))[:12]}); delete it or point cache_dir "
                    "somewhere else")
            if (same_key and found.get("num_items") == self.num_items
                    and found.get("num_views") == self.num_views
                    and found.get("shapes") == self._meta()["shapes"]
                    and found.get("storage", "float32") == self.storage
                    and self._files_complete()):
                return
            reason = ("another teacher, frontend, task or dataset" if not same_key
                      else "another dataset layout")
            warnings.warn(f"kdcore: the teacher cache in {self.directory} is stale (built for "
                          f"{reason}); rebuilding it", RuntimeWarning, stacklevel=3)
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, shape in self.shapes.items():
            np.memmap(self._path(name), dtype=self.dtype, mode="w+",
                      shape=(self.num_items, self.num_views, *shape)).flush()
        np.memmap(self.directory / FLAGS, dtype=np.uint8, mode="w+",
                  shape=(self.num_items, self.num_views)).flush()
        temporary = meta_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._meta(), indent=1))
        temporary.replace(meta_path)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.{self.suffix}"

    def _files_complete(self) -> bool:
        return (self.directory / FLAGS).exists() and all(
            self._path(name).exists() for name in self.shapes)

    def open(self) -> None:
        """Map the prepared files (every rank, after :meth:`prepare`)."""
        for name, shape in self.shapes.items():
            self.arrays[name] = np.memmap(self._path(name), dtype=self.dtype, mode="r+",
                                          shape=(self.num_items, self.num_views, *shape))
        self.flags = np.memmap(self.directory / FLAGS, dtype=np.uint8, mode="r+",
                               shape=(self.num_items, self.num_views))

    def _rows(self, index: torch.Tensor | None, view: torch.Tensor | None,
              size: int) -> tuple[np.ndarray, np.ndarray]:
        if index is None:
            raise ValueError("teacher_mode='cached' needs item ids: batches must carry an "
                             "'index' entry (dict) or a third tuple element")
        items = index.reshape(-1).to("cpu", torch.int64).numpy()
        views = (np.zeros_like(items) if view is None
                 else view.reshape(-1).to("cpu", torch.int64).numpy())
        if items.shape[0] != size or views.shape[0] != size:
            raise ValueError(f"batch 'index'/'view' must hold one id per item ({size}), got "
                             f"{items.shape[0]} and {views.shape[0]}")
        if items.size and (items.min() < 0 or items.max() >= self.num_items):
            raise ValueError(f"batch 'index' must lie in [0, {self.num_items}), got ids in "
                             f"[{items.min()}, {items.max()}]")
        if views.size and (views.min() < 0 or views.max() >= self.num_views):
            raise ValueError(f"batch 'view' must lie in [0, {self.num_views}) (cache_views), "
                             f"got ids in [{views.min()}, {views.max()}]")
        return items, views

    def lookup(self, index: torch.Tensor | None, view: torch.Tensor | None,
               size: int) -> dict[str, torch.Tensor] | None:
        """The stored rows of a batch as host tensors, or None when any row is missing."""
        items, views = self._rows(index, view, size)
        if not self.flags[items, views].all():
            return None
        return {name: torch.from_numpy(np.ascontiguousarray(array[items, views],
                                                           dtype=np.float32))
                for name, array in self.arrays.items()}

    def missing(self, index: torch.Tensor | None, view: torch.Tensor | None,
                size: int) -> bool:
        """Whether any (item, view) row of a batch is not filled yet."""
        items, views = self._rows(index, view, size)
        return not bool(self.flags[items, views].all())

    def store(self, index: torch.Tensor | None, view: torch.Tensor | None,
              outputs: dict[str, torch.Tensor]) -> None:
        """Write a batch's teacher outputs (one host copy), then mark the rows filled."""
        size = next(iter(outputs.values())).shape[0]
        items, views = self._rows(index, view, size)
        for name, value in outputs.items():
            expected = self.shapes[name]
            if tuple(value.shape[1:]) != expected:
                raise ValueError(
                    f"teacher_mode='cached' needs a fixed per-item output shape: {name} was "
                    f"{expected} per item and is now {tuple(value.shape[1:])} (pad inputs to "
                    "a fixed length and pass a mask)")
            host = value.detach().float().cpu().numpy()
            if self.storage == "float16" and np.isfinite(host).all() and (
                    np.abs(host) > np.finfo(np.float16).max).any():
                raise ValueError(f"{name} holds values beyond float16's range (|x| > 65504); "
                                 "use storage='float32'")
            self.arrays[name][items, views] = host
        self.flags[items, views] = 1

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()
        if self.flags is not None:
            self.flags.flush()

    def filled_fraction(self) -> float:
        return float(np.asarray(self.flags).mean()) if self.flags is not None else 0.0
