"""Plain supervised training: the loop with a task's objective and no teacher.

:class:`Learner` is the contract the loop drives (frontend, mixup, forward, objective, state);
:class:`kdcore.engine.distiller.DistillLearner` extends it with a teacher source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from kdcore.data.audio import UNLABELLED
from kdcore.data.augment import mixup
from kdcore.engine import batches as batching
from kdcore.engine import checkpoint as ckpt
from kdcore.engine.config import LoopConfig, ObjectiveConfig
from kdcore.engine.history import History
from kdcore.engine.hooks import first_tensor
from kdcore.engine.loop import Loop
from kdcore.engine.metrics import Meter
from kdcore.engine.objectives import Mix, Objective, Terms, make_objective
from kdcore.ops import _checks


class Learner:
    """The task-specific half of a run: ``module`` (the trainable ``nn.Module``), a frontend
    run in fp32 without grad, optional mixup, and the objective. ``model_key`` names the
    checkpoint entry of the trained weights."""

    model_key = "model"

    def __init__(self, model: nn.Module, objective: Objective,
                 frontend: nn.Module | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if frontend is not None and not isinstance(frontend, nn.Module):
            raise TypeError(f"frontend must be a torch.nn.Module or None, got "
                            f"{type(frontend).__name__}")
        self.model, self.objective, self.frontend = model, objective, frontend
        self.module: nn.Module = model
        self.num_classes: int | None = None
        self.loop: Loop | None = None
        self._host_checked = False

    # -- the contract the loop drives ------------------------------------------------------
    def to(self, device: torch.device) -> None:
        self.device = device
        self.module.to(device)
        if self.frontend is not None:
            self.frontend.to(device)

    def train(self, mode: bool) -> None:
        self.module.train(mode)
        if self.frontend is not None:
            self.frontend.train(mode)

    def modes(self) -> list[tuple[nn.Module, bool]]:
        return [(m, m.training) for m in (self.module, self.frontend) if m is not None]

    def restore_modes(self, modes: list[tuple[nn.Module, bool]]) -> None:
        for module, mode in modes:
            module.train(mode)

    def compile(self, *, mode: str | None, dynamic: bool | None) -> None:
        """Compile anything besides ``module`` (which the loop compiles)."""

    def setup(self, out: Path | None, num_items: int | None, dist: object) -> None:
        """Files next to the run (the teacher cache)."""

    def epoch_end(self, dist: object) -> None:
        pass

    def close(self) -> None:
        pass

    def config_dict(self) -> dict:
        return self.objective.config.to_dict()

    def new_meter(self, device: torch.device) -> Meter:
        return self.objective.new_meter(self.num_classes, device)

    def state_dict(self, module: nn.Module | None = None) -> dict:
        """The trained weights under ``model_key`` (``module``: an EMA copy of ``module``)."""
        return {self.model_key: (module or self.module).state_dict()}

    def load_state_dict(self, state: dict, path: Path) -> None:
        if self.model_key not in state:
            raise ValueError(f"the checkpoint {path} holds no {self.model_key!r} weights (keys "
                             f"{sorted(state)}); pass resume=False or another out_dir")
        self.module.load_state_dict(state[self.model_key])

    def features(self, inputs: torch.Tensor, frontend: nn.Module | None = None
                 ) -> torch.Tensor:
        frontend = self.frontend if frontend is None else frontend
        if frontend is None:
            return inputs
        with torch.no_grad(), self.loop.no_autocast():
            return frontend(inputs.float())

    def prepare(self, raw: object, loop: Loop) -> None:
        """Probe forward on the first batch (eval mode, RNG restored): class count, shapes."""
        self.loop = loop
        if self.num_classes is not None:
            return
        batch = batching.to_device(batching.parse_batch(raw), self.device)
        modes = self.modes()
        rng = ckpt.capture_rng()
        try:
            self.train(False)
            with torch.no_grad():
                self._probe(batch)
        finally:
            self.restore_modes(modes)
            ckpt.restore_rng(rng)

    def _probe(self, batch: batching.Batch) -> None:
        output = first_tensor(self.model(self.features(batch.inputs)))
        self.objective.check_outputs(output, None)
        self.num_classes = int(output.shape[-1])

    def to_device(self, batch: batching.Batch, check: bool = True) -> batching.Batch:
        """Check label values while they are still on the host, then copy; the ops' own
        value checks (a sync on a GPU) are then skipped for this batch."""
        labels = batch.labels
        self._host_checked = labels is None or labels.device.type == "cpu"
        if check and labels is not None and self._host_checked and labels.numel():
            self.objective.check_labels(labels, self.num_classes)
        if (self.objective.task == "ctc" and labels is not None and self._host_checked
                and batch.target_lengths is None):  # host lengths: ctc_loss needs no sync
            batch = dataclasses.replace(batch, target_lengths=(labels >= 0).sum(1))
        if (self.objective.task in ("multiclass", "frame") and labels is not None
                and self._host_checked and not labels.is_floating_point()):
            # lets the softmax objective use one fused kd_loss call (no sync: host labels)
            batch = dataclasses.replace(batch, all_labelled=not bool((labels == UNLABELLED).any()))
        return batching.to_device(batch, self.device)

    def mix(self, batch: batching.Batch) -> tuple[batching.Batch, Mix | None]:
        """Mixup of the inputs (on the device) when configured; labels, index and view stay
        the primary rows' (the partner's come from ``mix.perm``). A batch of mixed views
        (``lam`` and ``partner_label``) gives its own :class:`Mix` (``perm`` None)."""
        alpha = self.objective.config.mixup
        if batch.lam is not None:  # a ViewSet view: mixed already, with its partner's labels
            if alpha > 0:
                raise ValueError("mixup > 0 with a loader of mixed views (a ViewSet): the "
                                 "views are mixed already; set mixup=0")
            return batch, Mix(batch.lam.float(), None, batch.partner_labels)
        if alpha <= 0:
            return batch, None
        mixed, lam, perm = mixup(batch.inputs.float(), alpha)
        mask = batch.mask
        if mask is not None:
            mask = mask & mask[perm]
        return dataclasses.replace(batch, inputs=mixed, mask=mask), Mix(lam, perm)

    def terms(self, call: nn.Module, batch: batching.Batch, *,
              training: bool) -> tuple[Terms, torch.Tensor]:
        """Forward and objective of one micro-batch: ``(Terms, outputs)``."""
        mix = None
        if training:
            batch, mix = self.mix(batch)
        features = self.features(batch.inputs)
        self.loop.lap("frontend")
        with self.loop.autocast():
            output = first_tensor(call(features))
        self.loop.lap("student_fwd")
        with self.loop.no_autocast(), _checks.data_checks(not self._host_checked):
            terms = self.objective(output, None, batch, mix)
        self.loop.lap("loss")
        return terms, output


class Trainer:
    """Train ``model`` on a task's labels alone: the loop with the supervised objective.

    Args:
        model: ``nn.Module`` mapping the frontend's output to the task's outputs.
        task: ["multiclass"] any of ``kdcore.engine.config.TASKS``.
        frontend: [None] module run on the loader's input in fp32 without grad.
        mixup: [0.0] input mixup concentration (multiclass/multilabel).
        metrics: [None] extra evaluation metrics (see :class:`kdcore.engine.metrics.Meter`).
        loss_backend: ["auto"] backend of the kdcore loss ops.
        blank, distance: the ctc blank [0] and the regression distance ["mse"].
        **loop: any :class:`LoopConfig` field (``lr``, ``epochs`` excluded, ``ema``, ...), or
            ``config=LoopConfig(...)``.

    The checkpoint stores the weights under ``"model"``.
    """

    def __init__(self, model: nn.Module, *, task: str = "multiclass",
                 frontend: nn.Module | None = None, mixup: float = 0.0,
                 metrics: dict[str, Callable] | None = None, loss_backend: str = "auto",
                 blank: int = 0, distance: str = "mse", config: LoopConfig | None = None,
                 **loop: object) -> None:
        objective = ObjectiveConfig(task=task, mixup=mixup, loss_backend=loss_backend,
                                    blank=blank, distance=distance)
        self.loop_config = config if config is not None else LoopConfig(**loop)
        self.learner = Learner(model, make_objective(objective, metrics), frontend)
        self.loop = Loop(self.learner, self.loop_config)
        self.model, self.frontend = model, frontend

    @property
    def history(self) -> History:
        return self.loop.history

    @property
    def device(self) -> torch.device:
        return self.loop.device

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, *, epochs: int,
            out_dir: str | Path | None = None, resume: bool = True,
            on_epoch: Callable[[dict], dict | None] | None = None) -> History:
        """See :meth:`kdcore.engine.loop.Loop.fit`."""
        return self.loop.fit(train_loader, val_loader, epochs=epochs, out_dir=out_dir,
                             resume=resume, on_epoch=on_epoch)

    def evaluate(self, loader: Iterable, *, use_ema: bool = True) -> dict[str, float]:
        """See :meth:`kdcore.engine.loop.Loop.evaluate`."""
        return self.loop.evaluate(loader, use_ema=use_ema)


def train(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None, *,
          epochs: int, out_dir: str | Path | None = None, **kwargs: object) -> History:
    """One call: ``Trainer(model, **kwargs).fit(train_loader, val_loader, epochs=...)``."""
    return Trainer(model, **kwargs).fit(train_loader, val_loader, epochs=epochs,
                                        out_dir=out_dir)
