"""Objectives: what the loss is, one class per task.

An objective maps the student's output, the teacher's output (None for plain supervised
training) and the batch to :class:`Terms`: the training loss as a *sum* over the counted units,
the count, and the named unweighted sums that evaluation reports. Training and evaluation call
the same code; the loop divides by the global count of the optimizer window.

==================  ================  ===================  =====================  ============
task                outputs           KD term (weight a)   label term (1 - a)     unit counted
==================  ================  ===================  =====================  ============
multiclass          (B, C)            ``kd_loss``          cross-entropy          valid row
multilabel          (B, C)            ``kd_bce_loss``      BCE                    valid element
frame               (B, T, C), mask   ``kd_loss``/frame    cross-entropy/frame    valid frame
frame_multilabel    (B, T, C), mask   ``kd_bce_loss``      BCE per frame          valid element
ctc                 (B, T, C), mask   ``kd_loss``/frame    CTC per utterance      valid frame
regression          (B, ..., D)       ``feature_loss``     same distance          valid element
==================  ================  ===================  =====================  ============

``a = alpha``; a batch (or a row labelled ``UNLABELLED`` = -1, softmax tasks) without labels
uses the KD term alone with weight 1; without a teacher the label term has weight 1. A softmax
training step (grad enabled, no mixup) whose rows all have labels, known on the host
(``Batch.all_labelled``, set by the learner), computes ``a*KD + (1-a)*CE`` in one fused
``kd_loss(labels=..., alpha=...)`` call and leaves ``Terms.sums`` empty; evaluation (no grad)
computes the terms apart and reports both sums. Rows
labelled ``IGNORE_INDEX`` = -100 (softmax tasks) and masked rows/frames drop out of every term.
For ``ctc`` the summed utterance NLLs are divided by the window's valid frames, i.e. the loss is
the CTC negative log-likelihood per frame. For ``regression`` with ``distance="cosine"`` the
unit is a valid row (the cosine distance is per row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdcore.data.audio import UNLABELLED
from kdcore.data.augment import mix_targets
from kdcore.engine.batches import Batch
from kdcore.engine.config import ObjectiveConfig
from kdcore.engine.metrics import Meter
from kdcore.ops.feature_loss import feature_loss
from kdcore.ops.kd_bce_loss import kd_bce_loss
from kdcore.ops.kd_loss import kd_loss

IGNORE_INDEX = -100


@dataclasses.dataclass
class Mix:
    """One mixup draw: row ``b`` is ``lam[b]`` of itself and ``1-lam[b]`` of row ``perm[b]``
    of the batch, or, for a view of :class:`kdcore.engine.views.ViewSet` (``perm`` None), of a
    partner clip whose labels are ``partner`` (B, ...)."""

    lam: torch.Tensor  # (B,) float32 in [0.5, 1]
    perm: torch.Tensor | None  # (B,) int64, or None with ``partner``
    partner: torch.Tensor | None = None  # (B, ...) the partner clips' labels

    def partner_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The partner rows' labels: ``partner`` when given, else ``labels[perm]``."""
        return self.partner.to(labels.dtype) if self.partner is not None else labels[self.perm]


@dataclasses.dataclass
class Terms:
    """``loss``: fp32 scalar, the weighted training loss summed over the counted units;
    ``count``: fp32 scalar, the number of units; ``sums``: unweighted named sums over the same
    units (``kd_loss``, ``ce_loss``, ...); ``mask``: the valid mask of the output's leading
    dims (None: all valid)."""

    loss: torch.Tensor
    count: torch.Tensor
    sums: dict[str, torch.Tensor]
    mask: torch.Tensor | None


def _full(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((), float(value), device=like.device)


class Objective:
    """Base: mask handling and the shape contract. ``dims``: the outputs' dims (None: any)."""

    dims: int | None = 2
    sequence = False  # a (B, T, ...) output whose mask may come from ``lengths``

    def __init__(self, config: ObjectiveConfig,
                 metrics: dict[str, Callable] | None = None) -> None:
        self.config = config
        self.task = config.task
        self.metrics = dict(metrics or {})

    def valid_mask(self, batch: Batch, output: torch.Tensor) -> torch.Tensor | None:
        """The batch's ``mask`` and ``lengths`` combined over the output's leading dims."""
        mask = batch.mask
        if batch.lengths is not None:
            if not self.sequence or output.dim() < 3:
                raise ValueError(f"batch 'lengths' is for (B, T, ...) outputs of the frame, ctc "
                                 f"or regression tasks (task={self.task!r}); use 'mask'")
            frames = torch.arange(output.shape[1], device=output.device)
            by_length = frames[None, :] < batch.lengths.reshape(-1, 1)
            mask = by_length if mask is None else mask & by_length
        lead = output.shape[:-1]
        if mask is not None and mask.shape != lead:
            raise ValueError(f"batch 'mask' must have the outputs' leading shape "
                             f"{tuple(lead)}, got {tuple(mask.shape)}")
        return mask

    def check_outputs(self, student: torch.Tensor, teacher: torch.Tensor | None) -> None:
        """Shape checks on the probe batch (teacher outputs already aligned)."""
        if self.dims is not None and student.dim() != self.dims:
            layout = "(B, C)" if self.dims == 2 else "(B, T, C)"
            raise ValueError(f"task={self.task!r} needs outputs with {self.dims} dims "
                             f"({layout}), got shape {tuple(student.shape)}")
        if teacher is None:
            return
        if student.shape[-1] != teacher.shape[-1]:
            raise ValueError(
                f"student and teacher must predict the same number of classes, got "
                f"{student.shape[-1]} (student) and {teacher.shape[-1]} (teacher)")
        if student.shape != teacher.shape:
            raise ValueError(f"student and teacher outputs must have the same shape, got "
                             f"{tuple(student.shape)} and {tuple(teacher.shape)}")

    def check_labels(self, labels: torch.Tensor, num_classes: int) -> None:
        """Host-side value check of a batch's labels (before the copy to the device)."""

    def new_meter(self, num_classes: int, device: torch.device) -> Meter:
        return Meter(self.task, num_classes, device, metrics=self.metrics,
                     blank=self.config.blank)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, batch: Batch,
                 mix: Mix | None = None) -> Terms:
        raise NotImplementedError


class SoftmaxObjective(Objective):
    """``multiclass`` (B, C) and ``frame`` (B, T, C): per valid row ``a*KD + (1-a)*CE``."""

    def __init__(self, config: ObjectiveConfig, metrics: dict | None = None) -> None:
        super().__init__(config, metrics)
        self.dims = 3 if config.task == "frame" else 2
        self.sequence = config.task == "frame"

    def check_labels(self, labels: torch.Tensor, num_classes: int) -> None:
        kept = labels[(labels != IGNORE_INDEX) & (labels != UNLABELLED)]
        if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= num_classes):
            raise ValueError(
                f"batch 'label' must hold class ids in [0, {num_classes}), {UNLABELLED} "
                f"(unlabelled) or {IGNORE_INDEX} (ignored), got values in "
                f"[{int(kept.min())}, {int(kept.max())}]")

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, batch: Batch,
                 mix: Mix | None = None) -> Terms:
        cfg = self.config
        student = student.float()
        mask = self.valid_mask(batch, student)
        valid = torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device) \
            if mask is None else mask
        labels = None if batch.labels is None else batch.labels.long()
        partner = None
        if labels is not None and mix is not None:
            partner = mix.partner_of(labels)
            labels = torch.where(partner == IGNORE_INDEX, IGNORE_INDEX, labels)
            labels = torch.where((partner == UNLABELLED) & (labels != IGNORE_INDEX),
                                 UNLABELLED, labels)
        labelled = None
        if labels is not None:
            valid = valid & (labels != IGNORE_INDEX)
            labelled = valid & (labels != UNLABELLED)
        if (teacher is not None and labelled is not None and partner is None
                and batch.all_labelled and torch.is_grad_enabled()):
            # A training step on rows that all have labels: alpha*KD + (1-alpha)*CE in one
            # fused kd_loss call (benchmarks/bench_objective_cpu.py measures the gain); the
            # named sums, which only evaluation (no grad) reads, are left out.
            loss = kd_loss(student, teacher.float(), temperature=cfg.temperature,
                           kind=cfg.kd_kind, labels=labels, alpha=cfg.alpha,
                           ignore_index=IGNORE_INDEX, mask=mask, reduction="sum",
                           backend=cfg.loss_backend)
            return Terms(loss, valid.sum().float(), {}, valid)
        sums: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=student.device)
        if labelled is not None:
            flat = student.reshape(-1, student.shape[-1])
            ce = F.cross_entropy(flat, torch.where(labelled, labels, 0).reshape(-1),
                                 reduction="none").reshape(labels.shape)
            if partner is not None:
                ce_partner = F.cross_entropy(
                    flat, torch.where(labelled, partner, 0).reshape(-1),
                    reduction="none").reshape(labels.shape)
                ce = mix.lam * ce + (1.0 - mix.lam) * ce_partner
            ce = torch.where(labelled, ce, 0.0)
            sums["ce_loss"] = ce.sum()
        if teacher is not None:
            kd = kd_loss(student, teacher.float(), temperature=cfg.temperature,
                         kind=cfg.kd_kind, mask=valid, reduction="none",
                         backend=cfg.loss_backend)
            sums["kd_loss"] = kd.sum()
            if labelled is None:
                loss = sums["kd_loss"]
            else:
                weight = torch.where(labelled, cfg.alpha, 1.0)
                loss = (weight * kd).sum() + (1.0 - cfg.alpha) * sums["ce_loss"]
            count = valid.sum().float()
        else:
            if labelled is None:
                raise ValueError("supervised training needs batches with a 'label'")
            loss = sums["ce_loss"]
            count = labelled.sum().float()
        return Terms(loss, count, sums, valid)


class SigmoidObjective(Objective):
    """``multilabel`` (B, C) and ``frame_multilabel`` (B, T, C): per valid element
    ``a*KD_BCE + (1-a)*BCE`` against multi-hot (or mixed) labels in [0, 1]."""

    def __init__(self, config: ObjectiveConfig, metrics: dict | None = None) -> None:
        super().__init__(config, metrics)
        self.dims = 3 if config.task == "frame_multilabel" else 2
        self.sequence = config.task == "frame_multilabel"

    def check_labels(self, labels: torch.Tensor, num_classes: int) -> None:
        if bool(((labels < 0) | (labels > 1)).any()):
            raise ValueError(f"batch 'label' for task={self.task!r} must be in [0, 1]")

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, batch: Batch,
                 mix: Mix | None = None) -> Terms:
        cfg = self.config
        student = student.float()
        mask = self.valid_mask(batch, student)
        keep = (torch.ones_like(student, dtype=torch.bool) if mask is None
                else mask[..., None].expand_as(student))
        sums: dict[str, torch.Tensor] = {}
        labels = batch.labels
        if labels is not None:
            labels = labels.float()
            if mix is not None and mix.perm is None:
                weight = mix.lam.to(labels.dtype).view(-1, *([1] * (labels.dim() - 1)))
                labels = weight * labels + (1.0 - weight) * mix.partner_of(labels)
            elif mix is not None:
                labels = mix_targets(labels, mix.lam, mix.perm)
            bce = F.binary_cross_entropy_with_logits(
                student, torch.where(keep, labels, 0.0), reduction="none")
            sums["ce_loss"] = torch.where(keep, bce, 0.0).sum()
        if teacher is not None:
            kd = kd_bce_loss(student, teacher.float(), temperature=cfg.temperature, mask=mask,
                             reduction="none", backend=cfg.loss_backend)
            sums["kd_loss"] = kd.sum()
            loss = (sums["kd_loss"] if labels is None
                    else cfg.alpha * sums["kd_loss"] + (1.0 - cfg.alpha) * sums["ce_loss"])
        elif labels is None:
            raise ValueError("supervised training needs batches with a 'label'")
        else:
            loss = sums["ce_loss"]
        return Terms(loss, keep.sum().float(), sums, mask)


class CTCObjective(Objective):
    """``ctc``: outputs (B, T, C) logits or log-probabilities (a log-softmax is applied, which
    leaves log-probabilities unchanged), ``blank`` its class. KD per valid frame with
    ``kd_loss``; the label term is ``F.ctc_loss`` (``zero_infinity=True``) summed over
    utterances. Labels are transcripts (B, S) of class ids padded with any negative value;
    ``target_lengths`` (B,) default to the count of non-negative ids. Input lengths come from
    ``lengths`` (kept on the host: no sync) or the mask."""

    dims = 3
    sequence = True

    def check_labels(self, labels: torch.Tensor, num_classes: int) -> None:
        if labels.dim() != 2:
            raise ValueError(f"batch 'label' for task='ctc' must be (B, S) transcripts of "
                             f"class ids, got shape {tuple(labels.shape)}")
        kept = labels[labels >= 0]
        blank = self.config.blank
        if kept.numel() and (int(kept.max()) >= num_classes or bool((kept == blank).any())):
            raise ValueError(f"batch 'label' for task='ctc' must hold ids in [0, {num_classes}) "
                             f"other than the blank {blank} (negative values pad)")

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, batch: Batch,
                 mix: Mix | None = None) -> Terms:
        cfg = self.config
        student = student.float()
        mask = self.valid_mask(batch, student)
        valid = (torch.ones(student.shape[:-1], dtype=torch.bool, device=student.device)
                 if mask is None else mask)
        sums: dict[str, torch.Tensor] = {}
        labels = batch.labels
        if labels is not None:
            labels = labels.long()
            log_probs = torch.log_softmax(student, dim=-1)
            input_lengths = (batch.host_lengths if batch.host_lengths is not None
                             and batch.mask is None else valid.sum(1))
            target_lengths = (batch.target_lengths if batch.target_lengths is not None
                              else (labels >= 0).sum(1))
            ctc = F.ctc_loss(log_probs.transpose(0, 1), labels.clamp(min=0), input_lengths,
                             target_lengths, blank=cfg.blank, reduction="none",
                             zero_infinity=True)
            sums["ctc_loss"] = ctc.sum()
        if teacher is not None:
            kd = kd_loss(student, teacher.float(), temperature=cfg.temperature,
                         kind=cfg.kd_kind, mask=valid, reduction="none",
                         backend=cfg.loss_backend)
            sums["kd_loss"] = kd.sum()
            loss = (sums["kd_loss"] if labels is None
                    else cfg.alpha * sums["kd_loss"] + (1.0 - cfg.alpha) * sums["ctc_loss"])
        elif labels is None:
            raise ValueError("supervised training needs batches with a 'label'")
        else:
            loss = sums["ctc_loss"]
        return Terms(loss, valid.sum().float(), sums, valid)


class RegressionObjective(Objective):
    """``regression``: outputs (B, ..., D); ``distance`` (``feature_loss`` kind) to the
    teacher's output (KD) and to the batch's float ``label`` targets of the same shape."""

    dims = None
    sequence = True

    def check_outputs(self, student: torch.Tensor, teacher: torch.Tensor | None) -> None:
        if student.dim() < 2:
            raise ValueError(f"task='regression' needs outputs (B, ..., D), got shape "
                             f"{tuple(student.shape)}")
        super().check_outputs(student, teacher)

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, batch: Batch,
                 mix: Mix | None = None) -> Terms:
        cfg = self.config
        student = student.float()
        mask = self.valid_mask(batch, student)
        width = 1 if cfg.distance == "cosine" else student.shape[-1]
        rows = (_full(student.shape[:-1].numel(), student) if mask is None
                else mask.sum().float())
        sums: dict[str, torch.Tensor] = {}
        labels = batch.labels
        if labels is not None:
            labels = labels.float()
            if labels.shape != student.shape:
                raise ValueError(f"batch 'label' for task='regression' must have the outputs' "
                                 f"shape {tuple(student.shape)}, got {tuple(labels.shape)}")
            sums["label_loss"] = feature_loss(student, labels, kind=cfg.distance, mask=mask,
                                              reduction="sum", backend=cfg.loss_backend)
        if teacher is not None:
            sums["kd_loss"] = feature_loss(student, teacher.float(), kind=cfg.distance,
                                           mask=mask, reduction="sum",
                                           backend=cfg.loss_backend)
            loss = (sums["kd_loss"] if labels is None
                    else cfg.alpha * sums["kd_loss"] + (1.0 - cfg.alpha) * sums["label_loss"])
        elif labels is None:
            raise ValueError("supervised training needs batches with a 'label'")
        else:
            loss = sums["label_loss"]
        return Terms(loss, rows * width, sums, mask)


def make_objective(config: ObjectiveConfig,
                   metrics: dict[str, Callable] | None = None) -> Objective:
    """The objective of ``config.task``; ``metrics``: extra evaluation metrics, see
    :class:`kdcore.engine.metrics.Meter`."""
    kind = {"multiclass": SoftmaxObjective, "frame": SoftmaxObjective,
            "multilabel": SigmoidObjective, "frame_multilabel": SigmoidObjective,
            "ctc": CTCObjective, "regression": RegressionObjective}[config.task]
    return kind(config, metrics)
