"""The :class:`Distiller`: a frozen teacher, a trainable student and a thin training loop.

One optimizer step over a window of ``grad_accum`` micro-batches:

1. the frontend (fp32, no grad) turns the input into features, shared by teacher and student,
   so both see the same augmented view;
2. the teacher runs under ``torch.inference_mode`` (or its outputs come from the cache);
3. the student runs (bf16 autocast on CUDA) and the loss is computed in fp32 by the fused ops
   as a *sum* over valid rows; its backward accumulates gradients;
4. the window's valid-row count is all-reduced over ranks and the optimizer divides the
   gradients by it (fused AdamW's ``grad_scale``): the loss is normalised by the global number
   of valid rows, not per micro-batch; a non-finite loss sets ``found_inf`` and the fused step
   leaves parameters and moments untouched.

Nothing in the step reads a device value on the host: counters and metrics accumulate on the
device and are read every ``min(log_every, max_nonfinite)`` steps and at epoch ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdcore._backends import BACKENDS
from kdcore.data.audio import UNLABELLED
from kdcore.data.augment import mix_targets, mixup
from kdcore.engine import batches as batching
from kdcore.engine import checkpoint as ckpt
from kdcore.engine.cache import TeacherCache
from kdcore.engine.distributed import (
    DistContext,
    all_reduce_,
    barrier,
    init_from_env,
    local_rank,
)
from kdcore.engine.history import History
from kdcore.engine.hooks import FeatureTap, StudentWithProjectors, first_tensor, resolve_module
from kdcore.engine.metrics import ClassificationMeter
from kdcore.ops import _checks
from kdcore.ops.feature_loss import KINDS as FEATURE_KINDS
from kdcore.ops.feature_loss import feature_loss
from kdcore.ops.kd_bce_loss import kd_bce_loss
from kdcore.ops.kd_loss import KINDS as KD_KINDS
from kdcore.ops.kd_loss import kd_loss

TASKS = ("multiclass", "multilabel", "frame")
TEACHER_MODES = ("online", "cached")
PRECISIONS = ("bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
IGNORE_INDEX = -100
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``max_nonfinite`` optimizer steps in a row had a non-finite loss."""


class PhaseTimer:
    """Wall time per phase of the step (benchmarks): synchronises the device at every lap, so
    it slows training down; leave ``Distiller._timer`` at None otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] += now - self.last
        self.last = now


@dataclasses.dataclass
class Mix:
    """One mixup draw: row ``b`` is ``lam[b]`` of itself and ``1-lam[b]`` of row ``perm[b]``."""

    lam: torch.Tensor  # (B,) float32 in [0.5, 1]
    perm: torch.Tensor  # (B,) int64


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class Distiller:
    """Distil a frozen ``teacher`` into a ``student``.

    Args:
        teacher, student: ``nn.Module``s mapping features (B, ...) to logits: (B, C) for
            ``task="multiclass"``/``"multilabel"``, (B, T, C) for ``"frame"``; both must give
            the same C. A tuple output uses its first tensor, a dict its ``"logits"``.
        frontend: optional module mapping the loader's input (e.g. waveforms (B, T)) to the
            models' input on the device, run in fp32 without grad; None feeds inputs directly.
        temperature, alpha, kd_kind: the distillation loss, :func:`kdcore.kd_loss`
            (``T^2 * KL``, ``alpha*KD + (1-alpha)*CE`` when batches carry labels) or, for
            ``"multilabel"``, :func:`kdcore.kd_bce_loss`. A row (multiclass) or frame labelled
            ``kdcore.data.UNLABELLED`` (-1) adds ``T^2 * KL`` alone, weight 1, as a batch
            without labels does (an unlabelled transfer set, ``kdcore.data.TransferSet``); one
            labelled -100 drops out of every term.
        task: ``"multiclass"``, ``"multilabel"`` or ``"frame"`` (per-frame classes with a
            (B, T) ``mask`` or ``lengths``).
        feature_pairs: ``[(student_module_path, teacher_module_path), ...]``; outputs are
            captured by forward hooks (channels of conv/batch-norm/pool outputs, and of
            blocks ending in one, moved last),
            a learnable linear projector (a 1x1 convolution on channel-first maps) maps the
            student width to the teacher's where they differ, and
            ``feature_weight * feature_loss(kind=feature_kind)`` joins the loss.
        teacher_mode: ``"online"`` (teacher forward every step) or ``"cached"`` (outputs per
            (item, view) computed once and memory-mapped; see :mod:`kdcore.engine.cache`).
            Cached mode needs batches with ``"index"`` (and ``"view"`` when
            ``cache_views > 1``) and a deterministic view per (item, view).
        precision: ``"bf16"``/``"fp16"`` autocast the models on CUDA (fp16 with a GradScaler,
            which syncs); the frontend and the loss stay fp32. On the CPU everything runs in
            fp32 whatever this says.
        compile: wrap the student (with its projectors) and the teacher in ``torch.compile``.
        cuda_graphs: CUDA only (ValueError elsewhere): compile with ``mode="reduce-overhead"``,
            which records the static-shape forward and backward into CUDA graphs (the fused
            optimizer step stays outside the graph); the training loader drops its last
            partial batch to keep shapes static.
        optimizer: ``"adamw"`` (fused), ``"adam"`` (fused) or ``"sgd"`` (momentum 0.9).
        lr, weight_decay: peak learning rate; decoupled decay on weights (dim >= 2) only.
        schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"``, stepped per optimizer step.
        grad_accum: micro-batches per optimizer step.
        device: default CUDA (``cuda:LOCAL_RANK`` under torchrun) when available, else CPU.
        seed: seeds python, numpy and torch at the start of a fresh run and the data order.

    Keyword-only extras (defaults in brackets): ``cache_dir`` [None: ``out_dir/teacher_cache``,
    rebuilt when stale; a directory named here that holds another teacher's cache raises],
    ``cache_views`` [1], ``log_every`` [50], ``checkpoint_every`` [200 optimizer steps;
    0 = epoch ends only], ``max_nonfinite`` [10], ``progress`` [True: a tqdm bar],
    ``tensorboard`` [False: a SummaryWriter in ``out_dir/tensorboard`` when installed],
    ``loss_backend`` ["auto": the backend of the kdcore loss ops, see :mod:`kdcore._backends`],
    ``mixup`` [0: off; > 0: the Beta(mixup, mixup) concentration, see below].

    Mixup (``mixup > 0``, training steps only) mixes each input with a random partner of its
    batch before the frontend, ``x' = lam*x_a + (1-lam)*x_b`` with ``lam ~ Beta`` folded to
    [0.5, 1], and mixes every target with the same ``lam`` (REFERENCE section 5). The label
    term becomes ``lam*CE(y_a) + (1-lam)*CE(y_b)`` (multilabel: the labels mix). Online, the
    teacher sees the mixed input, so its targets are its own function of the student's view;
    cached, the stored teacher distributions mix, ``lam*p_a + (1-lam)*p_b`` at temperature T,
    and stored features mix linearly. A row whose partner is masked or ignored drops out.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *,
                 frontend: nn.Module | None = None, temperature: float = 2.0,
                 alpha: float = 0.5, kd_kind: str = "kl", task: str = "multiclass",
                 feature_pairs: list[tuple[str, str]] | None = None, feature_kind: str = "mse",
                 feature_weight: float = 0.0, teacher_mode: str = "online",
                 precision: str = "bf16", compile: bool = False, cuda_graphs: bool = False,
                 optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 1e-2,
                 schedule: str = "onecycle", grad_accum: int = 1,
                 device: str | torch.device | None = None, seed: int = 0,
                 cache_dir: str | Path | None = None, cache_views: int = 1,
                 log_every: int = 50, checkpoint_every: int = 200, max_nonfinite: int = 10,
                 progress: bool = True, tensorboard: bool = False,
                 loss_backend: str = "auto", mixup: float = 0.0) -> None:
        for name, module in (("teacher", teacher), ("student", student)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
        if teacher is student:
            raise ValueError("teacher and student must be different modules")
        if frontend is not None and not isinstance(frontend, nn.Module):
            raise TypeError(f"frontend must be a torch.nn.Module or None, got "
                            f"{type(frontend).__name__}")
        self.temperature = _checks.check_temperature(temperature)
        self.alpha = _checks.check_number("alpha", alpha, low=0.0, high=1.0)
        _checks.check_choice("kd_kind", kd_kind, KD_KINDS)
        _checks.check_choice("task", task, TASKS)
        _checks.check_choice("feature_kind", feature_kind, FEATURE_KINDS)
        self.feature_weight = _checks.check_number("feature_weight", feature_weight, low=0.0,
                                                   high=math.inf)
        self.mixup = _checks.check_number("mixup", mixup, low=0.0, high=math.inf)
        if self.mixup > 0 and task == "frame":
            raise ValueError("mixup is for task='multiclass' or 'multilabel'; per-frame labels "
                             "of two clips do not mix")
        _checks.check_choice("teacher_mode", teacher_mode, TEACHER_MODES)
        _checks.check_choice("precision", precision, PRECISIONS)
        _checks.check_choice("optimizer", optimizer, OPTIMIZERS)
        _checks.check_choice("schedule", schedule, SCHEDULES)
        _checks.check_choice("loss_backend", loss_backend, BACKENDS)
        self.lr = _checks.check_number("lr", lr, low=0.0, high=math.inf, low_open=True)
        self.weight_decay = _checks.check_number("weight_decay", weight_decay, low=0.0,
                                                 high=math.inf)
        self.grad_accum = _check_int("grad_accum", grad_accum, 1)
        self.seed = _check_int("seed", seed, 0)
        self.cache_views = _check_int("cache_views", cache_views, 1)
        self.log_every = _check_int("log_every", log_every, 1)
        self.checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 0)
        self.max_nonfinite = _check_int("max_nonfinite", max_nonfinite, 1)
        pairs = list(feature_pairs or [])
        for pair in pairs:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError("feature_pairs must hold (student_module_path, "
                                 f"teacher_module_path) pairs, got {pair!r}")
        if self.feature_weight > 0 and not pairs:
            raise ValueError("feature_weight > 0 needs feature_pairs")
        if pairs and self.feature_weight == 0:
            warnings.warn("kdcore: feature_pairs are given but feature_weight is 0, so the "
                          "feature loss has no effect", UserWarning, stacklevel=2)

        if device is None:
            if torch.cuda.is_available():
                device = f"cuda:{local_rank()}"
            else:
                device = "cpu"
        self.device = torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device (CUDA graphs record GPU "
                             f"kernels); this Distiller runs on '{self.device}'")
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)  # NCCL and DDP use the current device

        self.kd_kind, self.task, self.feature_kind = kd_kind, task, feature_kind
        self.teacher_mode, self.precision = teacher_mode, precision
        self.compile, self.cuda_graphs = bool(compile or cuda_graphs), bool(cuda_graphs)
        self.optimizer_name, self.schedule = optimizer, schedule
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress, self.tensorboard = progress, tensorboard
        self.feature_pairs = [(str(s), str(t)) for s, t in pairs]

        # Resolve every module path before any work, so a typo fails here.
        student_modules = [resolve_module(student, s, "student") for s, _ in self.feature_pairs]
        teacher_modules = [resolve_module(teacher, t, "teacher") for _, t in self.feature_pairs]

        self.teacher_fingerprint = ckpt.fingerprint(teacher)
        self.frontend_fingerprint = ckpt.fingerprint(frontend)
        self.teacher = teacher.eval().requires_grad_(False).to(self.device)
        self.frontend = frontend.to(self.device) if frontend is not None else None
        self.teacher_taps = [FeatureTap(m, p) for m, (_, p) in zip(teacher_modules,
                                                                   self.feature_pairs,
                                                                   strict=True)]
        student_taps = [FeatureTap(m, p) for m, (p, _) in zip(student_modules,
                                                              self.feature_pairs, strict=True)]
        self.student = student.to(self.device)
        self.bundle = StudentWithProjectors(self.student, student_taps).to(self.device)
        self.dist: DistContext = init_from_env(self.device)

        self.num_classes: int | None = None
        self._labels_checked = False
        self._maybe_unlabelled = True
        self.teacher_shapes: dict[str, tuple[int, ...]] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=(precision == "fp16" and self.device.type == "cuda"))
        self.history = History()
        self.cache: TeacherCache | None = None
        self._train_call: nn.Module | None = None
        self._teacher_call: nn.Module = self.teacher
        self._fused = False
        self._timer: PhaseTimer | None = None
        self._loss_backend = loss_backend
        self.config = {
            "temperature": self.temperature, "alpha": self.alpha, "kd_kind": kd_kind,
            "task": task, "feature_pairs": [list(p) for p in self.feature_pairs],
            "feature_kind": feature_kind, "feature_weight": self.feature_weight,
            "teacher_mode": teacher_mode, "precision": precision, "compile": self.compile,
            "cuda_graphs": self.cuda_graphs, "optimizer": optimizer, "lr": self.lr,
            "weight_decay": self.weight_decay, "schedule": schedule,
            "grad_accum": self.grad_accum, "seed": self.seed, "cache_views": self.cache_views,
            "mixup": self.mixup,
        }

    # ----------------------------------------------------------------------------------------
    # Pieces of the step
    # ----------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _no_autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", enabled=False)
        return contextlib.nullcontext()

    def _features(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.frontend is None:
            return inputs
        with torch.no_grad(), self._no_autocast():
            return self.frontend(inputs.float())

    def _run_teacher(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), self._autocast():
            outputs = {"logits": first_tensor(self._teacher_call(features))}
            for position, tap in enumerate(self.teacher_taps):
                outputs[f"feature{position}"] = tap.take()
        return outputs

    def _teacher_outputs(self, batch: batching.Batch,
                         features: torch.Tensor | Callable[[], torch.Tensor],
                         ) -> dict[str, torch.Tensor]:
        """The teacher's outputs for ``batch``: from the cache, or by running the teacher on
        ``features`` (a callable is called only then), storing them when caching."""
        if self.cache is not None:
            stored = self.cache.lookup(batch.index, batch.view, batch.size)
            if stored is not None:
                pin = self.device.type == "cuda"
                return {name: (value.pin_memory() if pin else value).to(
                    self.device, non_blocking=True) for name, value in stored.items()}
        outputs = self._run_teacher(features() if callable(features) else features)
        if self.cache is not None:
            self.cache.store(batch.index, batch.view, outputs)
        return outputs

    def _to_device_checked(self, batch: batching.Batch) -> batching.Batch:
        """Check label values while they are still on the host, then copy; the losses' own
        value checks (a sync on a GPU) are then skipped for this batch."""
        labels = batch.labels
        self._labels_checked = labels is None or labels.device.type == "cpu"
        # Unknown for labels already on the device: the distillation-only term then always runs.
        self._maybe_unlabelled = not self._labels_checked
        if labels is not None and self._labels_checked and labels.numel():
            if self.task == "multilabel":
                if bool(((labels < 0) | (labels > 1)).any()):
                    raise ValueError("batch 'label' for task='multilabel' must be in [0, 1]")
            else:
                unlabelled = labels == UNLABELLED
                self._maybe_unlabelled = bool(unlabelled.any())
                kept = labels[(labels != IGNORE_INDEX) & ~unlabelled]
                if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= self.num_classes):
                    raise ValueError(
                        f"batch 'label' must hold class ids in [0, {self.num_classes}), "
                        f"{UNLABELLED} (unlabelled) or {IGNORE_INDEX} (ignored), got values in "
                        f"[{int(kept.min())}, {int(kept.max())}]")
        return batching.to_device(batch, self.device)

    def _mix_batch(self, batch: batching.Batch) -> tuple[batching.Batch, Mix]:
        """Mixup of the inputs (on the device); labels, index and view stay the primary
        rows' (the partner's come from ``mix.perm``)."""
        mixed, lam, perm = mixup(batch.inputs.float(), self.mixup)
        mask = batch.mask
        if mask is not None:
            mask = mask & mask[perm]
        return dataclasses.replace(batch, inputs=mixed, mask=mask), Mix(lam, perm)

    def _mix_teacher(self, outputs: dict[str, torch.Tensor], mix: Mix) -> dict[str, torch.Tensor]:
        """Cached teacher outputs of the clean rows mixed like the inputs: the logits as
        distributions at the temperature T, features linearly."""
        temperature = self.temperature
        log_lam = torch.log(mix.lam)[:, None]
        log_rest = torch.log1p(-mix.lam)[:, None]
        mixed = {}
        for name, value in outputs.items():
            value = value.float()
            if name != "logits":
                mixed[name] = mix_targets(value, mix.lam, mix.perm)
                continue
            scaled = value / temperature
            if self.task == "multilabel":
                # logit(lam*sigmoid(a) + (1-lam)*sigmoid(b)), in log space
                positive = torch.logaddexp(F.logsigmoid(scaled) + log_lam,
                                           F.logsigmoid(scaled[mix.perm]) + log_rest)
                negative = torch.logaddexp(F.logsigmoid(-scaled) + log_lam,
                                           F.logsigmoid(-scaled[mix.perm]) + log_rest)
                mixed[name] = temperature * (positive - negative)
            else:
                log_probs = torch.log_softmax(scaled, dim=-1)
                mixed[name] = temperature * torch.logaddexp(log_probs + log_lam,
                                                            log_probs[mix.perm] + log_rest)
        return mixed

    def _mask(self, batch: batching.Batch, logits: torch.Tensor) -> torch.Tensor | None:
        mask = batch.mask
        if batch.lengths is not None:
            if self.task != "frame":
                raise ValueError("batch 'lengths' is for task='frame'; use 'mask' otherwise")
            frames = torch.arange(logits.shape[1], device=logits.device)
            by_length = frames[None, :] < batch.lengths.reshape(-1, 1)
            mask = by_length if mask is None else mask & by_length
        if mask is not None and mask.shape != logits.shape[:-1]:
            raise ValueError(f"batch 'mask' must have the logits' leading shape "
                             f"{tuple(logits.shape[:-1])}, got {tuple(mask.shape)}")
        return mask

    def _objective(self, student_logits: torch.Tensor, student_features: list[torch.Tensor],
                   teacher: dict[str, torch.Tensor], batch: batching.Batch,
                   mix: Mix | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loss_sum, rows, mask)``: the loss summed over valid rows (fp32) and the number
        of rows it counts (elements for multilabel), both device tensors. With ``mix`` the
        labels mix like the inputs did."""
        with self._no_autocast(), _checks.data_checks(not self._labels_checked):
            student = student_logits.float()
            teacher_logits = teacher["logits"].float()
            mask = self._mask(batch, student)
            labels = batch.labels
            lead_shape = student.shape[:-1]
            if self.task == "multilabel":
                if labels is not None:
                    labels = labels.float()
                    if mix is not None:
                        labels = mix_targets(labels, mix.lam, mix.perm)
                loss_sum = kd_bce_loss(
                    student, teacher_logits, temperature=self.temperature, labels=labels,
                    alpha=self.alpha, mask=mask, reduction="sum", backend=self._loss_backend)
                valid = mask
                per_row = student.shape[-1]
            else:
                labels = None if labels is None else labels.long()
                partner_labels = None
                if labels is not None and mix is not None:
                    partner_labels = labels[mix.perm]
                    labels = torch.where(partner_labels == IGNORE_INDEX, IGNORE_INDEX, labels)
                    labels = torch.where(
                        (partner_labels == UNLABELLED) & (labels != IGNORE_INDEX), UNLABELLED,
                        labels)
                distil_only = None
                if labels is not None and self._maybe_unlabelled:
                    distil_only = labels == UNLABELLED
                    distil_mask = distil_only if mask is None else distil_only & mask
                    labels = torch.where(distil_only, IGNORE_INDEX, labels)
                loss_sum = kd_loss(student, teacher_logits, temperature=self.temperature,
                                   kind=self.kd_kind, labels=labels, alpha=self.alpha,
                                   ignore_index=IGNORE_INDEX, mask=mask, reduction="sum",
                                   backend=self._loss_backend)
                valid = mask
                if labels is not None:  # kd_loss drops ignore_index rows from every term
                    kept = labels != IGNORE_INDEX
                    valid = kept if valid is None else valid & kept
                if partner_labels is not None and self.alpha < 1:
                    # lam*CE(y_a) + (1-lam)*CE(y_b) = CE(y_a) + (1-lam)*(s[y_a] - s[y_b])
                    own = student.gather(-1, torch.where(kept, labels, 0)[:, None])[:, 0]
                    other = student.gather(
                        -1, torch.where(kept, partner_labels, 0)[:, None])[:, 0]
                    shift = (1.0 - mix.lam) * (own - other)
                    loss_sum = loss_sum + (1.0 - self.alpha) * torch.where(
                        valid, shift, 0.0).sum()
                if distil_only is not None:  # unlabelled rows: the KD term alone, weight 1
                    loss_sum = loss_sum + kd_loss(
                        student, teacher_logits, temperature=self.temperature,
                        kind=self.kd_kind, mask=distil_mask, reduction="sum",
                        backend=self._loss_backend)
                    valid = valid | distil_mask
                per_row = 1
            if valid is None:
                rows = torch.full((), float(lead_shape.numel() * per_row), device=self.device)
            else:
                rows = valid.sum().to(torch.float32) * per_row
            for position, projected in enumerate(student_features):
                target = teacher[f"feature{position}"].float()
                projected = projected.float()
                feature_mask = (mask if mask is not None
                                and projected.shape[:-1] == mask.shape else None)
                feature_sum = feature_loss(projected, target, kind=self.feature_kind,
                                           mask=feature_mask, reduction="sum",
                                           backend=self._loss_backend)
                width = 1 if self.feature_kind == "cosine" else projected.shape[-1]
                if feature_mask is None:
                    elements = torch.full((), float(projected.shape[:-1].numel() * width),
                                          device=self.device)
                else:
                    elements = feature_mask.sum().to(torch.float32) * width
                # A micro-batch's feature mean, weighted by its share of the window's rows.
                loss_sum = loss_sum + (self.feature_weight * feature_sum * rows
                                       / elements.clamp(min=1))
        return loss_sum, rows, mask

    # ----------------------------------------------------------------------------------------
    # Set-up: a probe forward fixes the class count, feature widths and projectors
    # ----------------------------------------------------------------------------------------

    def _prepare(self, raw: object) -> None:
        if self.num_classes is not None:
            return
        batch = batching.to_device(batching.parse_batch(raw), self.device)
        modes = [(m, m.training) for m in (self.bundle, self.frontend) if m is not None]
        rng = ckpt.capture_rng()
        try:
            for module, _ in modes:
                module.eval()
            with torch.no_grad():
                features = self._features(batch.inputs)
                teacher = self._run_teacher(features)
                student_logits = first_tensor(self.student(features))
                student_features = [tap.take() for tap in self.bundle.taps]
            self._check_shapes(student_logits, teacher, student_features)
            self.bundle.build_projectors([f.shape[-1] for f in student_features],
                                         [teacher[f"feature{i}"].shape[-1]
                                          for i in range(len(student_features))])
            self.bundle.projectors.to(self.device)
        finally:
            for module, training in modes:
                module.train(training)
            ckpt.restore_rng(rng)
        self.num_classes = int(teacher["logits"].shape[-1])
        self.teacher_shapes = {name: tuple(value.shape[1:]) for name, value in teacher.items()}

    def _check_shapes(self, student_logits: torch.Tensor, teacher: dict[str, torch.Tensor],
                      student_features: list[torch.Tensor]) -> None:
        teacher_logits = teacher["logits"]
        if student_logits.shape[-1] != teacher_logits.shape[-1]:
            raise ValueError(
                f"student and teacher must predict the same number of classes, got "
                f"{student_logits.shape[-1]} (student) and {teacher_logits.shape[-1]} (teacher)")
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student and teacher logits must have the same shape, got "
                             f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
        expected_dims = 3 if self.task == "frame" else 2
        if student_logits.dim() != expected_dims:
            raise ValueError(f"task={self.task!r} needs logits with {expected_dims} dims "
                             f"({'(B, T, C)' if expected_dims == 3 else '(B, C)'}), got shape "
                             f"{tuple(student_logits.shape)}")
        for position, (student_path, teacher_path) in enumerate(self.feature_pairs):
            student_shape = tuple(student_features[position].shape[:-1])
            teacher_shape = tuple(teacher[f"feature{position}"].shape[:-1])
            if student_shape != teacher_shape:
                raise ValueError(
                    f"feature pair ({student_path!r}, {teacher_path!r}): the features must "
                    f"agree in every dim but the channel one, got (channel-last) "
                    f"{tuple(student_features[position].shape)} and "
                    f"{tuple(teacher[f'feature{position}'].shape)}")

    def _build_optimizer(self, total_steps: int) -> None:
        decay, no_decay = [], []
        for parameter in self.bundle.parameters():
            if parameter.requires_grad:
                (decay if parameter.dim() >= 2 else no_decay).append(parameter)
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fusable = self.device.type in ("cuda", "cpu") and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            for p in decay + no_decay)
        if self.optimizer_name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9)
            self._fused = False
        else:
            optimizer_type = (torch.optim.AdamW if self.optimizer_name == "adamw"
                              else torch.optim.Adam)
            self.optimizer = optimizer_type(groups, lr=self.lr, fused=fusable or None)
            self._fused = fusable
        if self.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=self.lr, total_steps=max(total_steps, 1))
        elif self.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(total_steps, 1))
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0,
                                                                 total_iters=0)

    def _wrap_for_training(self) -> None:
        if self._train_call is not None:
            return
        module: nn.Module = self.bundle
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        if self.compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            dynamic = False if self.cuda_graphs else None
            module = torch.compile(module, mode=mode, dynamic=dynamic)
            self._teacher_call = torch.compile(self.teacher, mode=mode, dynamic=dynamic)
        self._train_call = module

    def _setup_cache(self, directory: Path | None, num_items: int | None) -> None:
        if self.teacher_mode != "cached":
            return
        explicit = self.cache_dir is not None
        directory = self.cache_dir if explicit else directory
        if directory is None:
            raise ValueError("teacher_mode='cached' needs out_dir (or cache_dir) for the cache")
        if num_items is None:
            raise ValueError("teacher_mode='cached' needs a train_loader whose dataset has a "
                             "len() (item ids index the cache)")
        key = {"teacher": self.teacher_fingerprint, "frontend": self.frontend_fingerprint,
               "taps": [t for _, t in self.feature_pairs], "task": self.task}
        cache = TeacherCache(directory, key, num_items, self.cache_views, self.teacher_shapes)
        if self.dist.is_main:
            cache.prepare(explicit=explicit)
        barrier(self.dist)
        cache.open()
        self.cache = cache

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------

    def _state(self, epoch: int, batches_done: int, step: int,
               meter: ClassificationMeter) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "student": self.student.state_dict(),
            "projectors": self.bundle.projectors.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.capture_rng(),
            "epoch": epoch, "batches_done": batches_done, "step": step,
            "config": self.config,
            "teacher_fingerprint": self.teacher_fingerprint,
            "history": self.history.state_dict(),
            "meter": meter.state_dict(),
            "nonfinite": torch.stack([self._bad_run, self._bad_total]).cpu(),
        }

    def _load_state(self, state: dict, path: Path, meter: ClassificationMeter) -> None:
        if state.get("teacher_fingerprint") != self.teacher_fingerprint:
            raise ValueError(
                f"the checkpoint {path} was trained with another teacher (fingerprint "
                f"{str(state.get('teacher_fingerprint'))[:12]}, this teacher is "
                f"{self.teacher_fingerprint[:12]}); pass resume=False or another out_dir")
        changed = sorted(k for k, v in self.config.items() if state["config"].get(k) != v)
        if changed:
            warnings.warn(f"kdcore: resuming {path} with a changed configuration ({changed})",
                          UserWarning, stacklevel=3)
        self.student.load_state_dict(state["student"])
        self.bundle.projectors.load_state_dict(state["projectors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history.load_state_dict(state["history"])
        meter.load_state_dict(state["meter"])
        self._bad_run, self._bad_total = state["nonfinite"].to(self.device).unbind()
        self._bad_reported = int(self._bad_total)
        ckpt.restore_rng(state["rng"])

    # ----------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, *, epochs: int,
            out_dir: str | Path | None = None, resume: bool = True) -> History:
        """Train for ``epochs`` epochs; returns the :class:`History` (also of earlier epochs
        when resuming).

        With ``out_dir``: checkpoints ``out_dir/checkpoints/last.pt`` every
        ``checkpoint_every`` optimizer steps and each epoch (written atomically, rank 0 only),
        ``out_dir/metrics.jsonl`` every ``log_every`` steps and each epoch (appended to when
        resuming, else written anew), and the teacher cache. With ``resume`` a run continues
        from ``last.pt``: on the CPU the final
        parameters equal those of an uninterrupted run bit for bit, given a DataLoader over a
        map-style dataset whose items depend only on the index and the global RNG
        (``num_workers=0``), or on ``(index, epoch)``.
        """
        epochs = _check_int("epochs", epochs, 1)
        out = Path(out_dir) if out_dir is not None else None
        checkpoint_path = out / "checkpoints" / "last.pt" if out is not None else None
        state = None
        if resume and checkpoint_path is not None and checkpoint_path.exists():
            state = ckpt.load(checkpoint_path)
        else:
            ckpt.seed_everything(self.seed)
            self.history = History()  # a fresh run starts a fresh record

        loader = batching.TrainLoader(train_loader, seed=self.seed, rank=self.dist.rank,
                                      world_size=self.dist.world_size,
                                      pin_memory=self.device.type == "cuda")
        if self.cuda_graphs and loader.sampler is not None:
            loader.batch_sampler.batches.drop_last = True
        batches_per_epoch = loader.batches_per_epoch()
        if batches_per_epoch is None and self.schedule != "constant":
            raise ValueError(f"schedule={self.schedule!r} needs a train_loader with a len(); "
                             "use schedule='constant' for unsized iterables")
        steps_per_epoch = math.ceil((batches_per_epoch or 0) / self.grad_accum)
        loader.set_epoch(0)
        rng = ckpt.capture_rng()  # the probe batch must not shift the run's random streams
        first = next(iter(loader), None)
        ckpt.restore_rng(rng)
        if first is None:
            raise ValueError("train_loader yielded no batch")
        self._prepare(first)
        del first
        self._build_optimizer(steps_per_epoch * epochs)
        meter = ClassificationMeter(self.task, self.num_classes, self.device)
        self._bad_run = torch.zeros((), device=self.device)
        self._bad_total = torch.zeros((), device=self.device)
        self._bad_reported = 0
        start_epoch, skip, step = 0, 0, 0
        if state is not None:
            self._load_state(state, checkpoint_path, meter)
            start_epoch, skip, step = state["epoch"], state["batches_done"], state["step"]
        self._setup_cache(out / "teacher_cache" if out is not None else None, loader.num_items)
        self._wrap_for_training()
        log = (_RunLog(out, self.dist, self.tensorboard, resumed=state is not None)
               if out is not None else None)
        try:
            for epoch in range(start_epoch, epochs):
                step = self._train_epoch(loader, epoch, skip if epoch == start_epoch else 0,
                                         step, meter, log, checkpoint_path, val_loader,
                                         batches_per_epoch, epochs)
        finally:
            if log is not None:
                log.close()
            if self.cache is not None:
                self.cache.flush()
        return self.history

    def _train_epoch(self, loader: batching.TrainLoader, epoch: int, skip: int, step: int,
                     meter: ClassificationMeter, log: _RunLog | None,
                     checkpoint_path: Path | None, val_loader: Iterable | None,
                     batches_per_epoch: int | None, epochs: int) -> int:
        self.bundle.train()
        if self.frontend is not None:
            self.frontend.train()
        self.teacher.eval()
        loader.set_epoch(epoch, skip)
        sync_every = min(self.log_every, self.max_nonfinite)
        bar = _progress_bar(batches_per_epoch, skip, epoch, epochs,
                            self.progress and self.dist.is_main)
        recent_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        recent_steps = 0
        samples = 0
        started = time.perf_counter()
        batches_done = skip
        window: list[object] = []
        iterator: Iterator[object] = iter(loader)
        if self._timer is not None:
            self._timer.last = time.perf_counter()
        while True:
            raw = next(iterator, None)
            if raw is not None:
                window.append(raw)
                if len(window) < self.grad_accum:
                    continue
            if not window:
                break
            step_loss, window_samples = self._window_step(window, meter)
            recent_loss += step_loss
            recent_steps += 1
            samples += window_samples * self.dist.world_size
            batches_done += len(window)
            step += 1
            bar.update(len(window))
            window = []
            at_checkpoint = (checkpoint_path is not None and self.checkpoint_every
                             and step % self.checkpoint_every == 0)
            if step % sync_every == 0 or at_checkpoint:
                self._check_nonfinite(step, checkpoint_path)
            if step % self.log_every == 0:
                all_reduce_(recent_loss, self.dist)
                record = {"event": "step", "epoch": epoch, "step": step,
                          "loss": float(recent_loss) / max(recent_steps, 1),
                          "lr": float(self.optimizer.param_groups[0]["lr"]),
                          "samples_per_s": samples / max(time.perf_counter() - started, 1e-9)}
                recent_loss.zero_()
                recent_steps = 0
                self.history.steps.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                samples_s=f"{record['samples_per_s']:.0f}")
                if log is not None:
                    log.write(record)
            if at_checkpoint:
                self._save(checkpoint_path, epoch, batches_done, step, meter)
            if raw is None:
                break
        bar.close()
        self._check_nonfinite(step, checkpoint_path)
        elapsed = time.perf_counter() - started
        meter.all_reduce(self.dist)
        train = meter.compute()
        record = {"event": "epoch", "epoch": epoch, "step": step,
                  **{f"train_{k}": v for k, v in train.items()},
                  "samples_per_s": samples / max(elapsed, 1e-9), "time_s": elapsed,
                  "skipped_steps": int(self._bad_total),
                  "lr": float(self.optimizer.param_groups[0]["lr"])}
        if val_loader is not None:
            record.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
            self.bundle.train()
            if self.frontend is not None:
                self.frontend.train()
        self.history.epochs.append(record)
        if log is not None:
            log.write(record)
        if self.cache is not None:
            self.cache.flush()
            barrier(self.dist)
        meter.reset()
        if checkpoint_path is not None:
            self._save(checkpoint_path, epoch + 1, 0, step, meter)
        return step

    def _window_step(self, window: list[object],
                     meter: ClassificationMeter) -> tuple[torch.Tensor, int]:
        """One optimizer step over a window of raw micro-batches; returns the step's
        normalised loss (a device tensor, this rank's share) and the samples it saw."""
        timer = self._timer
        self.optimizer.zero_grad(set_to_none=True)
        rows_total = torch.zeros((), device=self.device)
        loss_total = torch.zeros((), device=self.device)
        samples = 0
        for position, raw in enumerate(window):
            batch = self._to_device_checked(batching.parse_batch(raw))
            samples += batch.size
            if timer is not None:
                timer.lap("data")
            clean_inputs, mix = batch.inputs, None
            if self.mixup > 0:
                batch, mix = self._mix_batch(batch)
            features = self._features(batch.inputs)
            if timer is not None:
                timer.lap("frontend")
            if mix is not None and self.cache is not None:
                teacher = self._mix_teacher(self._teacher_outputs(
                    batch, functools.partial(self._features, clean_inputs)), mix)
            else:
                teacher = self._teacher_outputs(batch, features)
            if timer is not None:
                timer.lap("teacher")
            last = position == len(window) - 1
            no_sync = (self._train_call.no_sync() if self.dist.enabled and not last
                       and hasattr(self._train_call, "no_sync") else contextlib.nullcontext())
            with no_sync:
                with self._autocast():
                    student_logits, student_features = self._train_call(features)
                if timer is not None:
                    timer.lap("student_fwd")
                loss_sum, rows, mask = self._objective(student_logits, student_features,
                                                       teacher, batch, mix)
                if timer is not None:
                    timer.lap("loss")
                self.scaler.scale(loss_sum).backward()
                if timer is not None:
                    timer.lap("student_bwd")
            rows_total += rows
            loss_total += loss_sum.detach()
            if batch.labels is not None:
                meter.add_predictions(student_logits.detach(), batch.labels, mask)
        # Gradients hold sum-of-rows losses averaged over ranks by DDP; dividing by
        # rows_global / world normalises by the global number of valid rows.
        all_reduce_(rows_total, self.dist)
        denominator = rows_total.clamp(min=1) / self.dist.world_size
        found_inf = (~torch.isfinite(loss_total)).float()
        all_reduce_(found_inf, self.dist, torch.distributed.ReduceOp.MAX)
        if self._fused and not self.scaler.is_enabled():
            self.optimizer.grad_scale = denominator
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
        else:
            self._unfused_step(denominator, found_inf)
        self.scheduler.step()
        if timer is not None:
            timer.lap("optimizer")
        finite = found_inf == 0
        self._bad_run = (self._bad_run + found_inf) * found_inf
        self._bad_total += found_inf
        step_loss = torch.where(finite, loss_total / denominator / self.dist.world_size, 0.0)
        meter.add_sum("loss", torch.where(finite, loss_total, 0.0))
        meter.add_rows(torch.where(finite, rows_total / self.dist.world_size, 0.0))
        return step_loss.to(torch.float64), samples

    def _unfused_step(self, denominator: torch.Tensor, found_inf: torch.Tensor) -> None:
        """SGD or fp16 with a GradScaler: unscale and normalise the gradients, skip on a
        non-finite loss (this path reads found_inf on the host)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.bundle.parameters() if p.grad is not None]
        if grads:
            torch._foreach_div_(grads, denominator)
        if bool(found_inf):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            return
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _check_nonfinite(self, step: int, checkpoint_path: Path | None) -> None:
        """Host read of the non-finite counters: warn about newly skipped steps, stop after
        ``max_nonfinite`` in a row (before any checkpoint is written)."""
        bad_run, bad_total = (int(v) for v in torch.stack([self._bad_run, self._bad_total]))
        reported = self._bad_reported
        if bad_total > reported:
            warnings.warn(f"kdcore: skipped {bad_total - reported} optimizer step(s) with a "
                          f"non-finite loss (up to step {step})", RuntimeWarning, stacklevel=3)
            self._bad_reported = bad_total
        if bad_run >= self.max_nonfinite:
            where = (f"the last good checkpoint {checkpoint_path} is untouched"
                     if checkpoint_path is not None else "no checkpoint was written (no out_dir)")
            raise NonFiniteLossError(
                f"training stopped: the loss was non-finite in {bad_run} optimizer steps in a "
                f"row (max_nonfinite={self.max_nonfinite}, at step {step}); {where}")

    def _save(self, path: Path, epoch: int, batches_done: int, step: int,
              meter: ClassificationMeter) -> None:
        if self.dist.is_main:
            ckpt.save_atomic(self._state(epoch, batches_done, step, meter), path)
        barrier(self.dist)

    # ----------------------------------------------------------------------------------------
    # Evaluation
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader: Iterable) -> dict[str, float]:
        """Student metrics on ``loader`` with the teacher run online (the cache holds training
        views only): ``loss`` (the training objective, features included), ``kd_loss``, with
        labels ``ce_loss`` (BCE for multilabel), ``accuracy`` (per element for multilabel)
        and ``macro_f1``; ``samples``. Under torchrun each rank takes an exact shard and the
        sums are all-reduced, so every rank returns the same values."""
        shard = batching.eval_loader(loader, self.dist.rank, self.dist.world_size,
                                     pin_memory=self.device.type == "cuda")
        modes = [(m, m.training) for m in (self.bundle, self.frontend) if m is not None]
        for module, _ in modes:
            module.eval()
        meter = None
        samples = torch.zeros((), dtype=torch.float64, device=self.device)
        self._maybe_unlabelled = True
        try:
            for raw in shard:
                self._prepare(raw)
                if meter is None:
                    meter = ClassificationMeter(self.task, self.num_classes, self.device)
                batch = batching.to_device(batching.parse_batch(raw), self.device)
                features = self._features(batch.inputs)
                teacher = self._run_teacher(features)
                with self._autocast():
                    student_logits, student_features = self.bundle(features)
                loss_sum, rows, mask = self._objective(student_logits, student_features,
                                                       teacher, batch)
                meter.add_sum("loss", loss_sum)
                meter.add_rows(rows)
                samples += batch.size
                self._eval_terms(meter, student_logits, teacher["logits"], batch, mask, rows)
        finally:
            for module, training in modes:
                module.train(training)
        if meter is None:
            raise ValueError("the evaluation loader yielded no batch")
        meter.all_reduce(self.dist)
        all_reduce_(samples, self.dist)
        result = meter.compute()
        result["samples"] = float(samples)
        return result

    def _eval_terms(self, meter: ClassificationMeter, student_logits: torch.Tensor,
                    teacher_logits: torch.Tensor, batch: batching.Batch,
                    mask: torch.Tensor | None, rows: torch.Tensor) -> None:
        """Separate KD and hard-label sums, scaled so that dividing by the meter's rows gives
        their means over the same rows as the objective."""
        student = student_logits.float()
        teacher = teacher_logits.float()
        labels = batch.labels
        if self.task == "multilabel":
            kd = kd_bce_loss(student, teacher, temperature=self.temperature, mask=mask,
                             reduction="sum", backend=self._loss_backend)
            meter.add_sum("kd_loss", kd)
            if labels is not None:
                keep = torch.ones_like(student, dtype=torch.bool) if mask is None else (
                    mask[..., None].expand_as(student))
                bce = torch.nn.functional.binary_cross_entropy_with_logits(
                    student, labels.float(), reduction="none")
                meter.add_sum("ce_loss", torch.where(keep, bce, 0.0).sum())
                meter.add_predictions(student_logits, labels, mask)
            return
        if labels is None:
            kd = kd_loss(student, teacher, temperature=self.temperature, kind=self.kd_kind,
                         mask=mask, reduction="sum", backend=self._loss_backend)
            meter.add_sum("kd_loss", kd)
            return
        labels = labels.long()
        kept = labels != IGNORE_INDEX
        valid = kept if mask is None else kept & mask
        labelled = valid & (labels != UNLABELLED)
        kd = kd_loss(student, teacher, temperature=self.temperature, kind=self.kd_kind,
                     mask=valid, reduction="sum", backend=self._loss_backend)
        cross_entropy = torch.nn.functional.cross_entropy(
            student.reshape(-1, student.shape[-1]),
            torch.where(labelled, labels, 0).reshape(-1), reduction="none")
        meter.add_sum("kd_loss", kd)
        meter.add_sum("ce_loss", torch.where(labelled.reshape(-1), cross_entropy, 0.0).sum())
        meter.add_predictions(student_logits, labels, mask)


def _progress_bar(total: int | None, initial: int, epoch: int, epochs: int,
                  enabled: bool) -> object:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                disable=not enabled, dynamic_ncols=True, leave=False)


class _RunLog:
    """``metrics.jsonl`` (and an optional TensorBoard writer), rank 0 only. A resumed run
    appends to the file; a fresh run starts it anew, as it does the checkpoint."""

    def __init__(self, out: Path, context: DistContext, tensorboard: bool,
                 resumed: bool) -> None:
        self.handle = None
        self.writer = None
        if not context.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.handle = open(out / "metrics.jsonl", "a" if resumed else "w", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                warnings.warn("kdcore: tensorboard=True but tensorboard is not installed; "
                              "writing metrics.jsonl only", UserWarning, stacklevel=3)

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            prefix = "epoch" if record["event"] == "epoch" else "step"
            for name, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{prefix}/{name}", value, record["step"])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
        if self.writer is not None:
            self.writer.close()
