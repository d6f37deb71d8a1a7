"""The loader contract and the resumable, shardable training loader.

A batch is one of:

- a dict with ``"input"`` (or ``"waveform"``): the model input, or the waveform (B, T) the
  frontend turns into features; optional ``"label"`` (multiclass: (B,) int; multilabel: (B, C)
  multi-hot; frame: (B, T') int per output frame), ``"index"`` ((B,) int dataset item ids,
  required by ``teacher_mode="cached"``), ``"view"`` ((B,) int augmentation-view ids, default 0),
  ``"mask"`` (bool, the logits' leading shape: (B,) or (B, T')) or ``"lengths"`` ((B,) valid
  output frames per item, the (B, T, ...) tasks), ``"target_lengths"`` ((B,) transcript
  lengths, ctc);
- a tuple/list ``(input, label)``, ``(input, label, index)`` or ``(input, label, index, mask)``;
- a bare tensor (input only: pure distillation, no labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

INPUT_KEYS = ("input", "waveform")


@dataclass
class Batch:
    inputs: torch.Tensor
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None  # stays on the host (teacher-cache rows)
    view: torch.Tensor | None = None  # stays on the host
    mask: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None  # stays on the host (ctc)
    host_lengths: torch.Tensor | None = None  # a host copy of ``lengths`` (ctc: no sync)
    # Known on the host: every row has a class label (no UNLABELLED row); None: unknown.
    all_labelled: bool | None = None
    lam: torch.Tensor | None = None  # (B,) a view's mixup weight (ViewSet)
    partner_labels: torch.Tensor | None = None  # the view's partner labels (ViewSet)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


def _as_tensor(name: str, value: object) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"batch[{name!r}] must be a tensor, got {type(value).__name__}") from error


def parse_batch(raw: object) -> Batch:
    """Read one loader item following the contract above; wrong layouts raise a clear error.
    An object with an ``as_dict()`` method (e.g. :class:`kdcore.data.AudioBatch`) is read as
    that dict."""
    as_dict = getattr(raw, "as_dict", None)
    if callable(as_dict):
        raw = as_dict()
    if isinstance(raw, torch.Tensor):
        return Batch(inputs=raw)
    if isinstance(raw, dict):
        present = [key for key in INPUT_KEYS if key in raw]
        if not present:
            raise ValueError(
                f"a batch dict needs an 'input' or 'waveform' entry, got keys {sorted(raw)}")
        inputs = raw[present[0]]
        fields = {name: _as_tensor(name, raw.get(name))
                  for name in ("label", "index", "view", "mask", "lengths",
                               "target_lengths", "lam", "partner_label")}
        batch = Batch(inputs=_as_tensor(present[0], inputs), labels=fields["label"],
                      index=fields["index"], view=fields["view"], mask=fields["mask"],
                      lengths=fields["lengths"], target_lengths=fields["target_lengths"],
                      lam=fields["lam"], partner_labels=fields["partner_label"])
        if (batch.lam is None) != (batch.partner_labels is None):
            raise ValueError("a batch dict needs both 'lam' and 'partner_label' (a mixed "
                             "view) or neither")
    elif isinstance(raw, (tuple, list)):
        if not 1 <= len(raw) <= 4:
            raise ValueError("a batch tuple must be (input, label[, index[, mask]]), got "
                             f"{len(raw)} items")
        items = list(raw) + [None] * (4 - len(raw))
        batch = Batch(inputs=_as_tensor("input", items[0]), labels=_as_tensor("label", items[1]),
                      index=_as_tensor("index", items[2]), mask=_as_tensor("mask", items[3]))
    else:
        raise TypeError(f"a batch must be a dict, a tuple or a tensor, got {type(raw).__name__}")
    if batch.mask is not None and batch.mask.dtype != torch.bool:
        raise TypeError(f"batch['mask'] must be a bool tensor, got dtype {batch.mask.dtype}")
    return batch


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy the device-side fields with ``non_blocking`` (async from pinned memory)."""

    def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(device, non_blocking=True)

    lengths = batch.lengths
    host = None if lengths is None or lengths.device.type != "cpu" else lengths
    targets = batch.target_lengths
    if targets is not None and targets.device.type != "cpu":
        targets = None  # on the device already: recomputed from the labels
    return Batch(inputs=move(batch.inputs), labels=move(batch.labels), index=batch.index,
                 view=batch.view, mask=move(batch.mask), lengths=move(lengths),
                 target_lengths=targets, host_lengths=host, all_labelled=batch.all_labelled,
                 lam=move(batch.lam), partner_labels=move(batch.partner_labels))


class SkippingBatchSampler(Sampler[list[int]]):
    """Batches of ``sampler`` with the first ``skip`` batches left out (resume mid-epoch)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        for position, batch in enumerate(self.batches):
            if position >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world, ...`` in order: an exact evaluation shard, no padding."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def rebuildable(loader: object) -> bool:
    """A DataLoader over a map-style dataset with a plain batch size can be re-sampled."""
    return (isinstance(loader, DataLoader) and loader.batch_size is not None
            and not isinstance(loader.dataset, IterableDataset))


def _clone_loader(loader: DataLoader, *, batch_sampler: Sampler, pin_memory: bool,
                  generator: torch.Generator | None) -> DataLoader:
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_sampler=batch_sampler, num_workers=workers,
        collate_fn=loader.collate_fn, pin_memory=pin_memory or loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=generator,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        persistent_workers=loader.persistent_workers if workers > 0 else False)


class TrainLoader:
    """Deterministic per-epoch order that can resume mid-epoch.

    A DataLoader over a map-style dataset is rebuilt around a ``DistributedSampler`` (also with
    one process) seeded with ``seed``: its order depends only on ``(seed, epoch)``, its worker
    seeds come from a generator seeded the same way (the global RNG is not touched), and
    already-done batches are skipped without being loaded. Any other iterable is used as is;
    resuming then consumes the done batches, and the order is only as deterministic as the
    iterable itself (DDP needs the DataLoader form). Either way the loader must be
    re-iterable: one batch is drawn once up front to size the projectors and the cache.
    """

    def __init__(self, loader: Iterable, *, seed: int, rank: int, world_size: int,
                 pin_memory: bool) -> None:
        self.seed = seed
        self.source = loader
        self.skip = 0
        if rebuildable(loader):
            if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
                raise ValueError(
                    "train_loader uses a custom sampler; kdcore replaces it with a seeded "
                    "DistributedSampler to resume mid-epoch. Pass shuffle=True/False instead")
            shuffle = isinstance(loader.sampler, RandomSampler)
            self.sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                              shuffle=shuffle, seed=seed,
                                              drop_last=loader.drop_last)
            self.batch_sampler = SkippingBatchSampler(self.sampler, loader.batch_size,
                                                      loader.drop_last)
            self.generator = torch.Generator()
            self.loader: Iterable = _clone_loader(loader, batch_sampler=self.batch_sampler,
                                                  pin_memory=pin_memory,
                                                  generator=self.generator)
            self.num_items: int | None = len(loader.dataset)
        else:
            if world_size > 1:
                raise ValueError(
                    "under torchrun, train_loader must be a torch DataLoader over a map-style "
                    "dataset with a batch_size, so kdcore can shard it with DistributedSampler")
            self.sampler = None
            self.loader = loader
            dataset = getattr(loader, "dataset", None)
            self.num_items = len(dataset) if hasattr(dataset, "__len__") else None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.skip = skip_batches
        set_dataset_epoch = getattr(getattr(self.source, "dataset", None), "set_epoch", None)
        if callable(set_dataset_epoch):  # e.g. a ViewSet picks each clip's view per epoch
            set_dataset_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.batch_sampler.skip = skip_batches
            self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def batches_per_epoch(self) -> int | None:
        if self.sampler is not None:
            return len(self.batch_sampler.batches)
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __iter__(self) -> Iterator[object]:
        iterator = iter(self.loader)
        if self.sampler is None:
            for _ in range(self.skip):
                next(iterator, None)
        return iterator


def eval_loader(loader: Iterable, rank: int, world_size: int, pin_memory: bool) -> Iterable:
    """The rank's exact shard of an evaluation DataLoader (the loader itself in one process)."""
    if world_size == 1:
        return loader
    if not rebuildable(loader):
        raise ValueError("under torchrun, evaluation loaders must be torch DataLoaders over a "
                         "map-style dataset with a batch_size")
    shard = ShardSampler(len(loader.dataset), rank, world_size)
    return _clone_loader(loader, batch_sampler=BatchSampler(shard, loader.batch_size, False),
                         pin_memory=pin_memory, generator=None)
