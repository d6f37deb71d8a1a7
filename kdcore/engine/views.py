"""Deterministic augmented views for function matching, and the view cache fill.

A *view* ``(item i, view k)`` of a training clip is fully defined by ``(seed, i, k)`` and the
:class:`~kdcore.engine.config.ViewConfig`. Its parameters are drawn from
``numpy.random.default_rng([seed, i, k, 1])``:

1. a partner clip ``j != i``, uniform over the training set, and a weight
   ``lam ~ Beta(a, a)`` folded to ``max(lam, 1 - lam)`` (``view_mixup = a``; no partner when
   ``a = 0``): ``x = lam * x_i + (1 - lam) * x_j`` (the partner zero-padded or cut to
   ``x_i``'s length);
2. a gain ``g ~ U(gain_db)``: ``x = 10^(g/20) * x``;
3. an integer shift ``s ~ U{-S..S}`` samples, ``S = round(max_shift_s * sample_rate)``
   (positive = later, zero fill);
4. white noise at ``snr ~ U(noise_snr_db)`` dB against the mean power of ``x``, drawn from a
   ``torch.Generator`` seeded from the same stream.

Every step is float32 on the host, so the waveform of a view regenerates bit for bit: the
teacher cache stores the teacher's outputs on it (K x N rows), and the student, each epoch,
trains on one of the K views of every clip, rebuilt from its seed, against those rows. The
teacher always sees the *mixed waveform*; its logits are never mixed. The labels of a view mix
alike (``lam`` of the clip's, ``1 - lam`` of the partner's; an unlabelled partner makes the
view unlabelled, KD term only).

Frame-level tasks can reuse the mechanism (the cache stores any fixed per-item output shape;
a shift moves per-frame targets by ``s / hop`` frames), which this module does not implement:
:class:`ViewSet` is for clip-level labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from kdcore.engine import checkpoint as ckpt
from kdcore.engine.config import ViewConfig, check_int

__all__ = ["ViewParams", "ViewSet", "fill_view_cache", "make_view"]


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """The parameters of one view (see the module docstring)."""

    partner: int | None
    lam: float
    gain_db: float
    shift: int
    snr_db: float | None
    noise_seed: int


def make_view(own: torch.Tensor, partner: torch.Tensor | None, params: ViewParams
              ) -> torch.Tensor:
    """The view's waveform (T,) float32 from the clip ``own`` (T,) and its ``partner`` (any
    length; None when ``params.partner`` is None); see the module docstring for the steps."""
    x = own.detach().to("cpu", torch.float32).reshape(-1)
    length = x.shape[0]
    if params.partner is not None:
        if partner is None:
            raise ValueError("this view mixes a partner clip; pass its waveform")
        other = partner.detach().to("cpu", torch.float32).reshape(-1)[:length]
        other = torch.nn.functional.pad(other, (0, length - other.shape[0]))
        lam = torch.tensor(params.lam, dtype=torch.float32)
        x = lam * x + (1.0 - lam) * other
    x = x * torch.tensor(10.0 ** (params.gain_db / 20.0), dtype=torch.float32)
    shift = params.shift
    if shift:
        moved = torch.zeros_like(x)
        if shift > 0:
            moved[shift:] = x[:length - shift]
        else:
            moved[:length + shift] = x[-shift:]
        x = moved
    if params.snr_db is not None:
        generator = torch.Generator().manual_seed(params.noise_seed)
        noise = torch.randn(length, generator=generator, dtype=torch.float32)
        power = x.square().mean()
        scale = torch.sqrt(power / torch.tensor(10.0 ** (params.snr_db / 10.0),
                                                dtype=torch.float32))
        x = x + scale * noise
    return x


def _example(item: object) -> tuple[torch.Tensor, object]:
    if isinstance(item, dict):
        return torch.as_tensor(item.get("waveform", item.get("input"))), item.get("label")
    return torch.as_tensor(item[0]), item[1]


class ViewSet(Dataset):
    """K deterministic views of every clip of ``dataset`` (clip-level labels).

    Args:
        dataset: items ``(waveform (T,), label, ...)`` or dicts with ``"waveform"`` and
            ``"label"``; each item must be deterministic (centre crops, no random
            augmentation: the views are the augmentation). Labels are class ids
            (``kdcore.data.UNLABELLED`` = -1 for unlabelled clips) or float multi-hot (C,).
        config: [``ViewConfig()``] the view recipe and ``views`` (K).
        sample_rate: Hz of the waveforms (turns ``max_shift_s`` into samples).
        seed: [0] defines every view with ``config``.

    Item ``i`` is the dict ``{"waveform" (T,) float32, "label", "index": i, "view": k,
    "lam" float32, "partner_label"}`` of view ``k = (epoch + o_i) mod K`` (``o_i`` a fixed
    per-clip offset from the seed), so every epoch takes the next of each clip's K views;
    the training loop calls :meth:`set_epoch`. Batch it with the default collate (fixed-length
    clips)."""

    def __init__(self, dataset: Dataset, config: ViewConfig | None = None, *,
                 sample_rate: int, seed: int = 0) -> None:
        if not hasattr(dataset, "__len__") or len(dataset) < 1:
            raise ValueError("dataset must be a non-empty sized dataset")
        self.config = config if config is not None else ViewConfig()
        if not isinstance(self.config, ViewConfig):
            raise TypeError(f"config must be a ViewConfig, got {type(self.config).__name__}")
        self.sample_rate = check_int("sample_rate", sample_rate, 1)
        self.seed = check_int("seed", seed, 0)
        self.dataset = dataset
        self.num_views = self.config.views
        self.max_shift = round(self.config.max_shift_s * sample_rate)
        self.epoch = 0
        _check_deterministic(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select each clip's view for ``epoch`` (called by the training loop)."""
        self.epoch = int(epoch)

    def view_of(self, index: int, epoch: int) -> int:
        """The view id clip ``index`` trains on in ``epoch``."""
        offset = int(np.random.SeedSequence([self.seed, index, 2]).generate_state(1)[0])
        return (epoch + offset) % self.num_views

    def params(self, index: int, view: int) -> ViewParams:
        """The parameters of view ``view`` of clip ``index``."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, index, view, 1])
        size = len(self.dataset)
        partner, lam = None, 1.0
        if cfg.view_mixup > 0 and size > 1:
            partner = int((index + 1 + rng.integers(0, size - 1)) % size)
            draw = float(rng.beta(cfg.view_mixup, cfg.view_mixup))
            lam = max(draw, 1.0 - draw)
        gain = float(rng.uniform(*cfg.gain_db))
        shift = int(rng.integers(-self.max_shift, self.max_shift + 1))
        snr = None if cfg.noise_snr_db is None else float(rng.uniform(*cfg.noise_snr_db))
        return ViewParams(partner, lam, gain, shift, snr, int(rng.integers(0, 2 ** 62)))

    def item(self, index: int, view: int) -> dict:
        """View ``view`` of clip ``index`` as a batch item (see the class docstring)."""
        if not 0 <= view < self.num_views:
            raise IndexError(f"view must be in [0, {self.num_views}), got {view}")
        params = self.params(index, view)
        own, label = _example(self.dataset[index])
        partner, partner_label = None, label
        if params.partner is not None:
            partner, partner_label = _example(self.dataset[params.partner])
        waveform = make_view(own, partner, params)
        return {"waveform": waveform, "label": label, "index": index, "view": view,
                "lam": torch.tensor(params.lam, dtype=torch.float32),
                "partner_label": partner_label}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.item(index, self.view_of(index, self.epoch))

    def view_key(self) -> dict:
        """The cache key's ``"views"`` entry: K, the view recipe, the seed, the rate."""
        return {"num_views": self.num_views, "recipe": self.config.view_recipe(),
                "seed": self.seed, "sample_rate": self.sample_rate}

    def fingerprint(self) -> str:
        """The base dataset's content fingerprint with the view key."""
        from kdcore.engine.teachers import data_fingerprint

        payload = {"data": data_fingerprint(self.dataset), "views": self.view_key()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_deterministic(dataset: Dataset) -> None:
    """Refuse a dataset whose items are random (random crops): a view would not regenerate."""
    parts = [dataset, *(getattr(dataset, name, None) for name in ("labelled", "unlabelled"))]
    for part in parts:
        if part is not None and getattr(part, "train", False) is True:
            raise ValueError("ViewSet needs a deterministic dataset (centre crops): build it "
                             "with train=False; the views are the augmentation")
    rng = ckpt.capture_rng()
    try:
        torch.manual_seed(1)
        first = _example(dataset[0])[0]
        torch.manual_seed(2)
        second = _example(dataset[0])[0]
    finally:
        ckpt.restore_rng(rng)
    if not torch.equal(first, second):
        raise ValueError("ViewSet needs a deterministic dataset: item 0 differed between two "
                         "reads (random crops or augmentation); the views are the augmentation")


def fill_view_cache(teacher: nn.Module | Callable, views: ViewSet, directory: str | Path, *,
                    teacher_frontend: nn.Module | None = None, task: str = "multiclass",
                    teacher_fingerprint: str | None = None,
                    device: str | torch.device = "cpu", batch_size: int = 64,
                    storage: str = "float32", explicit: bool = True,
                    progress: bool = True, feature_modules: Sequence[str] = ()) -> Path:
    """Store the teacher's outputs on the K views of every clip of ``views`` in ``directory``
    (K teacher passes over the set, a progress bar; rows already filled are skipped, so an
    interrupted fill resumes). Keyed exactly as a ``Distiller(teacher, ...,
    teacher_mode="cached", cache_dir=directory, teacher_frontend=...)`` run over a loader of
    ``views`` keys it (the key holds K, the view recipe and the seed), so that run reads it back.

    ``teacher_frontend`` [None] runs in eval mode; ``task`` ["multiclass"];
    ``teacher_fingerprint`` [None: the module's state hash; required for a callable];
    ``device`` ["cpu"]; ``batch_size`` [64]; ``storage`` ["float32"] or ``"float16"`` (each
    value rounded to nearest: relative error <= 2**-11); ``explicit`` [True]: a cache of
    another key raises :class:`~kdcore.engine.cache.CacheMismatchError` (False: rebuilt with a
    warning); ``progress`` [True]; ``feature_modules`` [()]: the teacher module paths of the
    run's ``feature_pairs`` (their outputs are stored too, as ``feature0``, ...). Returns the
    directory."""
    from tqdm.auto import tqdm

    from kdcore.engine.cache import TeacherCache
    from kdcore.engine.hooks import FeatureTap, resolve_module
    from kdcore.engine.teachers import CallableTeacher, OnlineTeacher, run_cache_key

    if not isinstance(views, ViewSet):
        raise TypeError(f"views must be a ViewSet, got {type(views).__name__}")
    check_int("batch_size", batch_size, 1)
    device = torch.device(device)
    taps = list(feature_modules)
    if isinstance(teacher, nn.Module):
        source = OnlineTeacher(teacher, [FeatureTap(resolve_module(teacher, path, "teacher"),
                                                    path) for path in taps])
        if teacher_fingerprint is not None:
            source.fingerprint = teacher_fingerprint
    else:
        if taps:
            raise ValueError("feature_modules need an nn.Module teacher (forward hooks)")
        source = CallableTeacher(teacher, teacher_fingerprint or "")
    source.to(device)
    frontend = teacher_frontend.to(device).eval() if teacher_frontend is not None else None
    key = run_cache_key(teacher_fingerprint=source.fingerprint, teacher_frontend=frontend,
                        taps=taps, task=task, dataset=views)

    def run(items: list[int], view: int) -> dict[str, torch.Tensor]:
        waveforms = torch.stack([views.item(i, view)["waveform"] for i in items]).to(device)
        with torch.inference_mode():
            features = waveforms if frontend is None else frontend(waveforms)
            return source(features)

    shapes = {name: tuple(value.shape[1:]) for name, value in run([0], 0).items()}
    cache = TeacherCache(Path(directory), key, len(views), views.num_views, shapes,
                         storage=storage)
    cache.prepare(explicit=explicit)
    cache.open()
    total = len(views) * views.num_views
    bar = tqdm(total=total, unit="clip", desc=f"teacher on {views.num_views} views",
               disable=not progress, dynamic_ncols=True)
    try:
        for view in range(views.num_views):
            for start in range(0, len(views), batch_size):
                items = list(range(start, min(start + batch_size, len(views))))
                index = torch.tensor(items)
                view_ids = torch.full_like(index, view)
                if cache.missing(index, view_ids, len(items)):
                    cache.store(index, view_ids, run(items, view))
                    cache.flush()
                bar.update(len(items))
    finally:
        bar.close()
        cache.flush()
    return Path(directory)

