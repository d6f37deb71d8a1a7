"""The :class:`Distiller`: the training loop with a teacher source and a task's objective.

- :class:`kdcore.engine.loop.Loop` runs the steps (knows nothing of distillation);
- :class:`DistillLearner` turns a batch into the objective's terms: frontends, teacher outputs
  (online, cached, or from any callable), frame alignment, mixup, feature pairs;
- :mod:`kdcore.engine.objectives` says what the loss is per task.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdcore import defaults
from kdcore.data.augment import mix_targets
from kdcore.engine import batches as batching
from kdcore.engine.cache import TeacherCache
from kdcore.engine.config import LoopConfig, ObjectiveConfig, TeacherConfig
from kdcore.engine.distributed import barrier
from kdcore.engine.history import History
from kdcore.engine.hooks import FeatureTap, StudentWithProjectors, first_tensor, resolve_module
from kdcore.engine.loop import Loop, NonFiniteLossError, PhaseTimer
from kdcore.engine.objectives import Mix, Objective, Terms, make_objective
from kdcore.engine.teachers import (
    CallableTeacher,
    OnlineTeacher,
    align_frames,
    check_deterministic,
    frontend_rate,
    run_cache_key,
)
from kdcore.engine.trainer import Learner
from kdcore.ops import _checks
from kdcore.ops.feature_loss import feature_loss

__all__ = ["Distiller", "DistillLearner", "Mix", "NonFiniteLossError", "PhaseTimer"]

_UNSET = object()


class DistillLearner(Learner):
    """A student (with the projectors of its tapped features), a teacher source and the
    objective. Teacher and student each see their own frontend's view of the input (one
    shared view when both frontends are the same object)."""

    model_key = "student"

    def __init__(self, teacher: nn.Module | Callable, student: nn.Module,
                 objective: Objective, config: TeacherConfig, *,
                 teacher_frontend: nn.Module | None, student_frontend: nn.Module | None,
                 teacher_fingerprint: str | None) -> None:
        if teacher is student:
            raise ValueError("teacher and student must be different modules")
        if teacher_frontend is not None and not isinstance(teacher_frontend, nn.Module):
            raise TypeError(f"teacher_frontend must be a torch.nn.Module or None, got "
                            f"{type(teacher_frontend).__name__}")
        student_modules = [resolve_module(student, s, "student") for s, _ in config.feature_pairs]
        if isinstance(teacher, nn.Module):
            teacher_modules = [resolve_module(teacher, t, "teacher")
                               for _, t in config.feature_pairs]
            taps = [FeatureTap(m, p) for m, (_, p) in zip(teacher_modules, config.feature_pairs,
                                                          strict=True)]
            self.source = OnlineTeacher(teacher, taps)
            if teacher_fingerprint is not None:
                self.source.fingerprint = teacher_fingerprint
        else:
            if config.feature_pairs:
                raise ValueError("feature_pairs need an nn.Module teacher (forward hooks)")
            self.source = CallableTeacher(teacher, teacher_fingerprint or "")
            config = dataclasses.replace(config, teacher_mode="cached")
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        student_taps = [FeatureTap(m, p) for m, (p, _) in zip(student_modules,
                                                              config.feature_pairs, strict=True)]
        super().__init__(student, objective, student_frontend)
        self.module = StudentWithProjectors(student, student_taps)
        self.teacher_config = config
        self.teacher_frontend = teacher_frontend
        self.cache: TeacherCache | None = None
        self.teacher_shapes: dict[str, tuple[int, ...]] = {}
        self.dataset: object = None  # the training set, for the cache key
        self.rates = (config.teacher_frame_rate or frontend_rate(teacher_frontend)[0],
                      config.student_frame_rate or frontend_rate(student_frontend)[0])

    @property
    def shared_frontend(self) -> bool:
        return self.teacher_frontend is self.frontend

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.source.to(device)
        if self.teacher_frontend is not None:
            self.teacher_frontend.to(device)

    def train(self, mode: bool) -> None:
        super().train(mode)
        if self.teacher_frontend is not None and not self.shared_frontend:
            self.teacher_frontend.train(mode)
        if self.source.module is not None:
            self.source.module.eval()

    def modes(self) -> list[tuple[nn.Module, bool]]:
        extra = [] if self.teacher_frontend is None or self.shared_frontend else [
            (self.teacher_frontend, self.teacher_frontend.training)]
        return super().modes() + extra

    def compile(self, *, mode: str | None, dynamic: bool | None) -> None:
        if self.source.module is not None:
            self.source.call = torch.compile(self.source.module, mode=mode, dynamic=dynamic)

    def config_dict(self) -> dict:
        return {**super().config_dict(), **self.teacher_config.to_dict()}

    def state_dict(self, module: nn.Module | None = None) -> dict:
        bundle = module or self.module
        return {"student": bundle.student.state_dict(),
                "projectors": bundle.projectors.state_dict(),
                "teacher_fingerprint": self.source.fingerprint}

    def load_state_dict(self, state: dict, path: Path) -> None:
        if state.get("teacher_fingerprint") != self.source.fingerprint:
            raise ValueError(
                f"the checkpoint {path} was trained with another teacher (fingerprint "
                f"{str(state.get('teacher_fingerprint'))[:12]}, this teacher is "
                f"{self.source.fingerprint[:12]}); pass resume=False or another out_dir")
        self.module.student.load_state_dict(state["student"])
        self.module.projectors.load_state_dict(state["projectors"])

    # -- teacher outputs -------------------------------------------------------------------
    def _run_teacher(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode(), self.loop.autocast():
            return self.source(features)

    def _teacher_features(self, inputs: torch.Tensor, student_features: torch.Tensor | None
                          ) -> torch.Tensor:
        if self.shared_frontend and student_features is not None:
            return student_features
        return self.features(inputs, self.teacher_frontend)

    def teacher_outputs(self, batch: batching.Batch,
                        features: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
        """From the cache, or by running the teacher on ``features()`` (storing them when
        caching)."""
        if self.cache is not None:
            stored = self.cache.lookup(batch.index, batch.view, batch.size)
            if stored is not None:
                pin = self.device.type == "cuda"
                return {name: (value.pin_memory() if pin else value).to(
                    self.device, non_blocking=True) for name, value in stored.items()}
        outputs = self._run_teacher(features())
        if self.cache is not None:
            self.cache.store(batch.index, batch.view, outputs)
        return outputs

    def _align(self, outputs: dict[str, torch.Tensor], student: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]
        if not self.objective.sequence or logits.dim() < 3 or student.dim() < 3:
            return outputs
        return {**outputs, "logits": align_frames(logits, student.shape[1], *self.rates)}

    def mix_teacher(self, outputs: dict[str, torch.Tensor], mix: Mix) -> dict[str, torch.Tensor]:
        """Cached teacher outputs of the clean rows mixed like the inputs: the logits as
        distributions at the temperature T, features linearly."""
        temperature = self.objective.config.temperature
        log_lam = torch.log(mix.lam)[:, None]
        log_rest = torch.log1p(-mix.lam)[:, None]
        mixed = {}
        for name, value in outputs.items():
            value = value.float()
            if name != "logits":
                mixed[name] = mix_targets(value, mix.lam, mix.perm)
                continue
            scaled = value / temperature
            if self.objective.task == "multilabel":
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

    # -- set-up ----------------------------------------------------------------------------
    def _probe(self, batch: batching.Batch) -> None:
        features = self.features(batch.inputs)
        teacher_features = self._teacher_features(batch.inputs, features)
        if self.teacher_config.teacher_mode == "cached":
            check_deterministic(self.teacher_frontend, batch.inputs)
        teacher = self._run_teacher(teacher_features)
        student = first_tensor(self.model(features))
        student_features = [tap.take() for tap in self.module.taps]
        self.teacher_shapes = {name: tuple(v.shape[1:]) for name, v in teacher.items()}
        self.objective.check_outputs(student, self._align(teacher, student)["logits"])
        for position, (s_path, t_path) in enumerate(self.teacher_config.feature_pairs):
            s_shape = tuple(student_features[position].shape)
            t_shape = tuple(teacher[f"feature{position}"].shape)
            if s_shape[:-1] != t_shape[:-1]:
                raise ValueError(
                    f"feature pair ({s_path!r}, {t_path!r}): the features must agree in every "
                    f"dim but the channel one, got (channel-last) {s_shape} and {t_shape}")
        self.module.build_projectors([f.shape[-1] for f in student_features],
                                     [teacher[f"feature{i}"].shape[-1]
                                      for i in range(len(student_features))])
        self.module.projectors.to(self.device)
        self.num_classes = int(teacher["logits"].shape[-1])

    def setup(self, out: Path | None, num_items: int | None, dist: object) -> None:
        config = self.teacher_config
        if config.teacher_mode != "cached" or self.cache is not None:
            return
        explicit = config.cache_dir is not None
        directory = config.cache_dir if explicit else (out / "teacher_cache" if out else None)
        if directory is None:
            raise ValueError("teacher_mode='cached' needs out_dir (or cache_dir) for the cache")
        if num_items is None:
            raise ValueError("teacher_mode='cached' needs a train_loader whose dataset has a "
                             "len() (item ids index the cache)")
        key = run_cache_key(teacher_fingerprint=self.source.fingerprint,
                            teacher_frontend=self.teacher_frontend,
                            taps=[t for _, t in config.feature_pairs], task=self.objective.task,
                            dataset=self.dataset)
        views = getattr(self.dataset, "num_views", None) or config.cache_views
        cache = TeacherCache(directory, key, num_items, views, self.teacher_shapes,
                             storage=config.cache_storage)
        if dist.is_main:
            cache.prepare(explicit=explicit)
        barrier(dist)
        cache.open()
        self.cache = cache

    def epoch_end(self, dist: object) -> None:
        if self.cache is not None:
            self.cache.flush()
            barrier(dist)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.flush()

    # -- one micro-batch -------------------------------------------------------------------
    def terms(self, call: nn.Module, batch: batching.Batch, *,
              training: bool) -> tuple[Terms, torch.Tensor]:
        clean_inputs, mix = batch.inputs, None
        if training:
            batch, mix = self.mix(batch)
        features = self.features(batch.inputs)
        self.loop.lap("frontend")
        if not training:  # the cache holds training views only
            teacher = self._run_teacher(self._teacher_features(batch.inputs, features))
        elif mix is not None and mix.perm is not None and self.cache is not None:
            teacher = self.mix_teacher(self.teacher_outputs(
                batch, functools.partial(self._teacher_features, clean_inputs, None)), mix)
        else:
            teacher = self.teacher_outputs(
                batch, functools.partial(self._teacher_features, batch.inputs, features))
        self.loop.lap("teacher")
        with self.loop.autocast():
            student, student_features = call(features)
        self.loop.lap("student_fwd")
        with self.loop.no_autocast(), _checks.data_checks(not self._host_checked):
            teacher = self._align(teacher, student)
            terms = self.objective(student, teacher["logits"], batch, mix)
            terms.loss = terms.loss + self._feature_term(student_features, teacher, terms)
        self.loop.lap("loss")
        return terms, student

    def _feature_term(self, student_features: list[torch.Tensor],
                      teacher: dict[str, torch.Tensor], terms: Terms) -> torch.Tensor:
        """``feature_weight`` times each pair's mean distance, weighted by the micro-batch's
        share of the window's units (so the window normalisation yields the mean)."""
        config = self.teacher_config
        total = torch.zeros((), device=terms.count.device)
        mask = terms.mask
        for position, projected in enumerate(student_features):
            target = teacher[f"feature{position}"].float()
            projected = projected.float()
            feature_mask = mask if mask is not None and projected.shape[:-1] == mask.shape \
                else None
            feature_sum = feature_loss(projected, target, kind=config.feature_kind,
                                       mask=feature_mask, reduction="sum",
                                       backend=self.objective.config.loss_backend)
            width = 1 if config.feature_kind == "cosine" else projected.shape[-1]
            elements = (torch.full((), float(projected.shape[:-1].numel() * width),
                                   device=total.device) if feature_mask is None
                        else feature_mask.sum().float() * width)
            total = total + config.feature_weight * feature_sum * terms.count / elements.clamp(
                min=1)
        return total


class Distiller:
    """Distil a frozen ``teacher`` into a ``student``: :class:`~kdcore.engine.loop.Loop` +
    :class:`DistillLearner` + the task's objective.

    Args:
        teacher: an ``nn.Module`` mapping teacher features to outputs (a tuple output uses its
            first tensor, a dict its ``"logits"``), or any callable (e.g. wrapping an
            onnxruntime session), which runs in cached mode and needs
            ``teacher_fingerprint``.
        student: ``nn.Module`` with outputs of the task's shape (see
            :mod:`kdcore.engine.objectives`); the same C as the teacher.
        frontend: [None] shorthand for the same ``teacher_frontend`` and
            ``student_frontend``: both then see one shared (augmented) view.
        teacher_frontend, student_frontend: [None: ``frontend``] modules mapping the loader's
            input (e.g. waveforms (B, T)) to each model's input, run in fp32 without grad.
            Sample rates may differ (put a ``kdcore.Resample`` in the teacher's); frame
            outputs are aligned by frame centres (:func:`kdcore.engine.teachers.align_frames`).
        task: ["multiclass"] ``"multiclass"``, ``"multilabel"``, ``"frame"``,
            ``"frame_multilabel"``, ``"ctc"`` or ``"regression"``.
        temperature: [``defaults.TEMPERATURE`` = 2.0]; alpha: [``defaults.ALPHA`` = 0.9]
            weight of the KD term, ``alpha*KD + (1-alpha)*label``; kd_kind: ["kl"].
        lr: [``defaults.LR`` = 3e-3].
        Every other keyword is a field of :class:`LoopConfig`, :class:`ObjectiveConfig` or
        :class:`TeacherConfig` (their docstrings give each default): ``feature_pairs``,
        ``feature_kind``, ``feature_weight``, ``teacher_mode``, ``cache_dir``,
        ``cache_views``, ``teacher_frame_rate``, ``student_frame_rate``, ``precision``,
        ``compile``, ``cuda_graphs``, ``optimizer``, ``weight_decay``, ``schedule``,
        ``grad_accum``, ``device``, ``seed``, ``log_every``, ``checkpoint_every``,
        ``max_nonfinite``, ``progress``, ``tensorboard``, ``clip_grad_norm``, ``ema``,
        ``best_metric``, ``best_mode``, ``patience``, ``loss_backend``, ``mixup``,
        ``distance``, ``blank``.
        teacher_fingerprint: [None: the module's state hash] the teacher's identity in the
            cache key and checkpoints; required for a callable teacher.
        metrics: [None] extra evaluation metrics, see :class:`kdcore.engine.metrics.Meter`.

    Mixup (``mixup > 0``, training steps only) mixes each input with a random partner of its
    batch before the frontend, ``x' = lam*x_a + (1-lam)*x_b`` with ``lam ~ Beta`` folded to
    [0.5, 1], and mixes every target with the same ``lam``. Online, the teacher sees the mixed
    input; cached, the stored teacher distributions mix, ``lam*p_a + (1-lam)*p_b`` at
    temperature T, and stored features mix linearly.
    """

    def __init__(self, teacher: nn.Module | Callable, student: nn.Module, *,
                 frontend: nn.Module | None = None,
                 teacher_frontend: nn.Module | None | object = _UNSET,
                 student_frontend: nn.Module | None | object = _UNSET,
                 temperature: float = defaults.TEMPERATURE, alpha: float = defaults.ALPHA,
                 kd_kind: str = "kl", task: str = "multiclass", lr: float = defaults.LR,
                 teacher_fingerprint: str | None = None,
                 metrics: dict[str, Callable] | None = None, **kwargs: object) -> None:
        if frontend is not None and not isinstance(frontend, nn.Module):
            raise TypeError(f"frontend must be a torch.nn.Module or None, got "
                            f"{type(frontend).__name__}")
        teacher_frontend = frontend if teacher_frontend is _UNSET else teacher_frontend
        student_frontend = frontend if student_frontend is _UNSET else student_frontend
        parts = {}
        for cls in (LoopConfig, ObjectiveConfig, TeacherConfig):
            parts[cls] = {k: kwargs.pop(k) for k in cls.fields() if k in kwargs}
        if kwargs:
            raise TypeError(f"Distiller got unexpected keyword arguments {sorted(kwargs)}")
        objective = ObjectiveConfig(task=task, temperature=temperature, alpha=alpha,
                                    kd_kind=kd_kind, **parts[ObjectiveConfig])
        teacher_config = TeacherConfig(**parts[TeacherConfig])
        if teacher_config.feature_pairs and teacher_config.feature_weight == 0:
            warnings.warn("kdcore: feature_pairs are given but feature_weight is 0, so the "
                          "feature loss has no effect", UserWarning, stacklevel=2)
        loop_config = LoopConfig(lr=lr, **parts[LoopConfig])
        self.learner = DistillLearner(teacher, student, make_objective(objective, metrics),
                                      teacher_config, teacher_frontend=teacher_frontend,
                                      student_frontend=student_frontend,
                                      teacher_fingerprint=teacher_fingerprint)
        self.loop = Loop(self.learner, loop_config)
        self.teacher, self.student = teacher, student
        self.frontend = student_frontend
        self.teacher_frontend = teacher_frontend
        self.bundle = self.learner.module
        self.teacher_fingerprint = self.learner.source.fingerprint
        self.config = self.loop.config_dict()

    @property
    def history(self) -> History:
        return self.loop.history

    @property
    def device(self) -> torch.device:
        return self.loop.device

    @property
    def _timer(self) -> PhaseTimer | None:
        return self.loop.timer

    @_timer.setter
    def _timer(self, timer: PhaseTimer | None) -> None:
        self.loop.timer = timer

    @property
    def _train_call(self) -> nn.Module | None:
        return self.loop.train_call

    def _mix_teacher(self, outputs: dict[str, torch.Tensor], mix: Mix
                     ) -> dict[str, torch.Tensor]:
        return self.learner.mix_teacher(outputs, mix)

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, *, epochs: int,
            out_dir: str | Path | None = None, resume: bool = True,
            on_epoch: Callable[[dict], dict | None] | None = None) -> History:
        """See :meth:`kdcore.engine.loop.Loop.fit` (``on_epoch``: a per-epoch callback whose
        returned entries join the epoch record); ``val_loader`` must not be the test split.
        The student's weights are saved under ``"student"``."""
        self.learner.dataset = getattr(train_loader, "dataset", None)
        return self.loop.fit(train_loader, val_loader, epochs=epochs, out_dir=out_dir,
                             resume=resume, on_epoch=on_epoch)

    def evaluate(self, loader: Iterable, *, use_ema: bool = True) -> dict[str, float]:
        """Student metrics on ``loader`` with the teacher run online; see
        :meth:`kdcore.engine.loop.Loop.evaluate`."""
        return self.loop.evaluate(loader, use_ema=use_ema)
