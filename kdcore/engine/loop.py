"""The training loop: epochs, micro-batches, optimizer, schedule, precision, DDP, checkpoints.

It knows nothing of distillation. A *learner* (:class:`kdcore.engine.trainer.Learner`) says
how a batch becomes :class:`~kdcore.engine.objectives.Terms` (a loss *sum* and the count of
units it covers); the loop does the rest. One optimizer step over a window of ``grad_accum``
micro-batches:

1. each micro-batch's labels are checked on the host, then copied; the learner's forward and
   objective give ``Terms``; ``backward`` accumulates the gradients of the *sum*;
2. the window's count is all-reduced over ranks and the gradients are divided by it (fused
   AdamW's ``grad_scale``): the loss is normalised by the global number of valid units;
3. optional clipping of the global gradient norm, on the device; a non-finite loss sets
   ``found_inf`` and the step leaves parameters and moments untouched;
4. the schedule steps, the EMA (if any) follows the weights.

Nothing in the step reads a device value on the host (the SGD/fp16 path excepted): counters
and metrics stay on the device and are read every ``min(log_every, max_nonfinite)`` steps and
at epoch ends.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from kdcore.engine import batches as batching
from kdcore.engine import checkpoint as ckpt
from kdcore.engine.config import LoopConfig, check_int
from kdcore.engine.distributed import DistContext, all_reduce_, barrier, init_from_env, local_rank
from kdcore.engine.history import History
from kdcore.engine.metrics import Meter
from kdcore.errors import UserInputError

CHECKPOINT_FORMAT = 2
LOWER_IS_BETTER = ("loss", "error", "wer", "cer", "ter")


class NonFiniteLossError(RuntimeError):
    """Training stopped after ``max_nonfinite`` optimizer steps in a row had a non-finite loss."""


class PhaseTimer:
    """Wall time per phase of the step (benchmarks): synchronises the device at every lap, so
    it slows training down; leave ``Loop.timer`` at None otherwise."""

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


def resolve_device(device: str | torch.device | None, cuda_graphs: bool) -> torch.device:
    if device is None:
        device = f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise ValueError("cuda_graphs=True needs a CUDA device (CUDA graphs record GPU kernels); "
                         f"this run is on '{device}'")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # NCCL and DDP use the current device
    return device


class Loop:
    """Runs a learner's objective over epochs; see the module docstring for one step.

    Args:
        learner: the task-specific part (a :class:`kdcore.engine.trainer.Learner`).
        config: :class:`LoopConfig` (every default documented there).
    """

    def __init__(self, learner: object, config: LoopConfig) -> None:
        self.learner, self.config = learner, config
        self.device = resolve_device(config.device, config.cuda_graphs)
        learner.to(self.device)
        self.dist: DistContext = init_from_env(self.device)
        self.history = History()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=config.precision == "fp16" and self.device.type == "cuda")
        self.ema: nn.Module | None = None
        self.train_call: nn.Module | None = None
        self.timer: PhaseTimer | None = None
        self._fused = False
        self.best: dict | None = None

    # -- precision -----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.config.precision != "fp32":
            dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def no_autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", enabled=False)
        return contextlib.nullcontext()

    def lap(self, phase: str) -> None:
        if self.timer is not None:
            self.timer.lap(phase)

    # -- set-up --------------------------------------------------------------------------------
    def _build_optimizer(self, total_steps: int) -> None:
        cfg = self.config
        decay, no_decay = [], []
        for parameter in self.learner.module.parameters():
            if parameter.requires_grad:
                (decay if parameter.dim() >= 2 else no_decay).append(parameter)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        fusable = self.device.type in ("cuda", "cpu") and all(
            p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            for p in decay + no_decay)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
            self._fused = False
        else:
            kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            self.optimizer = kind(groups, lr=cfg.lr, fused=fusable or None)
            self._fused = fusable
        sched = torch.optim.lr_scheduler
        if cfg.schedule == "onecycle":
            self.scheduler = sched.OneCycleLR(self.optimizer, max_lr=cfg.lr,
                                              total_steps=max(total_steps, 1))
        elif cfg.schedule == "cosine":
            self.scheduler = sched.CosineAnnealingLR(self.optimizer, T_max=max(total_steps, 1))
        else:
            self.scheduler = sched.ConstantLR(self.optimizer, factor=1.0, total_iters=0)

    def _wrap(self) -> None:
        if self.train_call is not None:
            return
        module: nn.Module = self.learner.module
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        if self.config.compile:
            mode = "reduce-overhead" if self.config.cuda_graphs else None
            dynamic = False if self.config.cuda_graphs else None
            module = torch.compile(module, mode=mode, dynamic=dynamic)
            self.learner.compile(mode=mode, dynamic=dynamic)
        self.train_call = module

    # -- checkpoints ---------------------------------------------------------------------------
    def _state(self, epoch: int, batches_done: int, step: int, meter: Meter,
               planned_steps: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            **self.learner.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.capture_rng(),
            "epoch": epoch, "batches_done": batches_done, "step": step,
            "planned_steps": planned_steps,
            "config": self.config_dict(),
            "history": self.history.state_dict(),
            "meter": meter.state_dict(),
            "nonfinite": torch.stack([self._bad_run, self._bad_total]).cpu(),
            "best": self.best,
        }

    def config_dict(self) -> dict:
        return {**self.config.to_dict(), **self.learner.config_dict()}

    def _load_state(self, state: dict, path: Path, meter: Meter) -> None:
        self.learner.load_state_dict(state, path)
        changed = sorted(k for k, v in self.config_dict().items()
                         if k != "epochs" and state["config"].get(k) != v)
        if changed:
            warnings.warn(f"kdcore: resuming {path} with a changed configuration ({changed})",
                          UserWarning, stacklevel=4)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history.load_state_dict(state["history"])
        meter.load_state_dict(state["meter"])
        self._bad_run, self._bad_total = state["nonfinite"].to(self.device).unbind()
        self._bad_reported = int(self._bad_total)
        self.best = state.get("best")
        ckpt.restore_rng(state["rng"])

    def _save(self, path: Path, *args: object) -> None:
        if self.dist.is_main:
            ckpt.save_atomic(self._state(*args), path)
        barrier(self.dist)

    # -- training ------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, *, epochs: int,
            out_dir: str | Path | None = None, resume: bool = True,
            on_epoch: Callable[[dict], dict | None] | None = None) -> History:
        """Train for ``epochs`` epochs; returns the :class:`History` (also of earlier epochs
        when resuming). ``val_loader`` [None] is evaluated after every epoch (keep the test
        split out of it). ``on_epoch`` [None] is called after each epoch (and its validation)
        with a copy of the epoch record; the entries of the dict it returns (str keys, not
        already in the record) join the record before it is logged, kept in the history and
        offered to ``best_metric``. It runs on every rank; the model modes and the random
        streams are restored after it, so it does not change what is trained.
        With ``out_dir`` [None]: ``checkpoints/last.pt`` every ``checkpoint_every`` steps and
        each epoch (atomic, rank 0), ``checkpoints/best.pt`` at each better ``best_metric``,
        ``metrics.jsonl``, and the learner's files (the
        teacher cache). ``resume`` [True] continues from ``last.pt``: on the CPU the final
        parameters equal an uninterrupted run's bit for bit (see docs/engine.md). A
        one-cycle or cosine run resumed with another ``epochs`` raises a ValueError naming
        ``epochs``: its schedule was planned for the original length.
        """
        cfg = self.config
        epochs = check_int("epochs", epochs, 1)
        out = Path(out_dir) if out_dir is not None else None
        checkpoint_path = out / "checkpoints" / "last.pt" if out is not None else None
        state = None
        if resume and checkpoint_path is not None and checkpoint_path.exists():
            state = ckpt.load(checkpoint_path)
        else:
            ckpt.seed_everything(cfg.seed)
            self.history = History()
            self.best = None

        loader = batching.TrainLoader(train_loader, seed=cfg.seed, rank=self.dist.rank,
                                      world_size=self.dist.world_size,
                                      pin_memory=self.device.type == "cuda")
        if cfg.cuda_graphs and loader.sampler is not None:
            loader.batch_sampler.batches.drop_last = True
        batches_per_epoch = loader.batches_per_epoch()
        if batches_per_epoch is None and cfg.schedule != "constant":
            raise ValueError(f"schedule={cfg.schedule!r} needs a train_loader with a len(); "
                             "use schedule='constant' for unsized iterables")
        planned = math.ceil((batches_per_epoch or 0) / cfg.grad_accum) * epochs
        if state is not None and cfg.schedule != "constant" and "planned_steps" in state \
                and state["planned_steps"] != planned:
            raise UserInputError(
                f"epochs={epochs}: the checkpoint {checkpoint_path} was planned for "
                f"{state['planned_steps']} optimizer steps ({cfg.schedule} schedule), this "
                f"run would take {planned}; resume with the original epochs, use "
                "schedule='constant', or pass resume=False")
        loader.set_epoch(0)
        rng = ckpt.capture_rng()  # the probe batch must not shift the run's random streams
        first = next(iter(loader), None)
        ckpt.restore_rng(rng)
        if first is None:
            raise ValueError("train_loader yielded no batch")
        self.learner.prepare(first, self)
        del first
        self._build_optimizer(planned)
        if cfg.ema is not None:
            self.ema = copy.deepcopy(self.learner.module).requires_grad_(False).eval()
        meter = self.learner.new_meter(self.device)
        self._bad_run = torch.zeros((), device=self.device)
        self._bad_total = torch.zeros((), device=self.device)
        self._bad_reported = 0
        start_epoch, skip, step = 0, 0, 0
        if state is not None:
            self._load_state(state, checkpoint_path, meter)
            start_epoch, skip, step = state["epoch"], state["batches_done"], state["step"]
        self.learner.setup(out, loader.num_items, self.dist)
        self._wrap()
        log = (_RunLog(out, self.dist, cfg.tensorboard, resumed=state is not None)
               if out is not None else None)
        context = dict(loader=loader, meter=meter, log=log, checkpoint_path=checkpoint_path,
                       val_loader=val_loader, batches_per_epoch=batches_per_epoch,
                       epochs=epochs, planned=planned, on_epoch=on_epoch)
        try:
            for epoch in range(start_epoch, epochs):
                step = self._train_epoch(epoch, skip if epoch == start_epoch else 0, step,
                                         **context)
                if self._should_stop():
                    break
        finally:
            if log is not None:
                log.close()
            self.learner.close()
        return self.history

    def _train_epoch(self, epoch: int, skip: int, step: int, *, loader: batching.TrainLoader,
                     meter: Meter, log: _RunLog | None, checkpoint_path: Path | None,
                     val_loader: Iterable | None, batches_per_epoch: int | None, epochs: int,
                     planned: int, on_epoch: Callable[[dict], dict | None] | None) -> int:
        cfg = self.config
        self.learner.train(True)
        loader.set_epoch(epoch, skip)
        sync_every = min(cfg.log_every, cfg.max_nonfinite)
        bar = _progress_bar(batches_per_epoch, skip, epoch, epochs,
                            cfg.progress and self.dist.is_main)
        recent_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        recent_steps, samples, batches_done = 0, 0, skip
        started = time.perf_counter()
        window: list[object] = []
        iterator: Iterator[object] = iter(loader)
        if self.timer is not None:
            self.timer.last = time.perf_counter()
        while True:
            raw = next(iterator, None)
            if raw is not None:
                window.append(raw)
                if len(window) < cfg.grad_accum:
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
            at_checkpoint = (checkpoint_path is not None and cfg.checkpoint_every
                             and step % cfg.checkpoint_every == 0)
            if step % sync_every == 0 or at_checkpoint:
                self._check_nonfinite(step, checkpoint_path)
            if step % cfg.log_every == 0:
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
                self._save(checkpoint_path, epoch, batches_done, step, meter, planned)
            if raw is None:
                break
        bar.close()
        self._check_nonfinite(step, checkpoint_path)
        elapsed = time.perf_counter() - started
        meter.all_reduce(self.dist)
        record = {"event": "epoch", "epoch": epoch, "step": step,
                  **{f"train_{k}": v for k, v in meter.compute().items()},
                  "samples_per_s": samples / max(elapsed, 1e-9), "time_s": elapsed,
                  "skipped_steps": int(self._bad_total),
                  "lr": float(self.optimizer.param_groups[0]["lr"])}
        if val_loader is not None:
            record.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
            self.learner.train(True)
        if on_epoch is not None:
            record.update(self._epoch_callback(on_epoch, record))
        self.history.epochs.append(record)
        if log is not None:
            log.write(record)
        self.learner.epoch_end(self.dist)
        meter.reset()
        self._track_best(record, epoch, checkpoint_path)
        if checkpoint_path is not None:
            self._save(checkpoint_path, epoch + 1, 0, step, meter, planned)
        return step

    def _epoch_callback(self, on_epoch: Callable[[dict], dict | None], record: dict) -> dict:
        """``on_epoch(copy of record)`` with the learner's modes and the RNG restored after it;
        its returned entries, checked."""
        modes = self.learner.modes()
        rng = ckpt.capture_rng()
        try:
            extra = on_epoch(dict(record))
        finally:
            self.learner.restore_modes(modes)
            ckpt.restore_rng(rng)
        if extra is None:
            return {}
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise TypeError(f"on_epoch must return None or a dict with str keys, got "
                            f"{type(extra).__name__}")
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"on_epoch returned entries the epoch record already has: {clash}")
        return extra

    def _window_step(self, window: list[object], meter: Meter) -> tuple[torch.Tensor, int]:
        """One optimizer step over a window of raw micro-batches; returns the step's
        normalised loss (a device tensor, this rank's share) and the samples it saw."""
        self.optimizer.zero_grad(set_to_none=True)
        rows_total = torch.zeros((), device=self.device)
        loss_total = torch.zeros((), device=self.device)
        samples = 0
        call = self.train_call
        for position, raw in enumerate(window):
            batch = self.learner.to_device(batching.parse_batch(raw))
            samples += batch.size
            self.lap("data")
            last = position == len(window) - 1
            no_sync = (call.no_sync() if self.dist.enabled and not last
                       and hasattr(call, "no_sync") else contextlib.nullcontext())
            with no_sync:
                terms, outputs = self.learner.terms(call, batch, training=True)
                self.scaler.scale(terms.loss).backward()
                self.lap("student_bwd")
            rows_total += terms.count
            loss_total += terms.loss.detach()
            if batch.labels is not None:
                meter.add_predictions(outputs.detach(), batch.labels, terms.mask)
        # Gradients hold sums over units averaged over ranks by DDP; dividing by
        # count_global / world normalises by the global count.
        all_reduce_(rows_total, self.dist)
        denominator = rows_total.clamp(min=1) / self.dist.world_size
        found_inf = (~torch.isfinite(loss_total)).float()
        all_reduce_(found_inf, self.dist, torch.distributed.ReduceOp.MAX)
        if self._fused and not self.scaler.is_enabled():
            self._clip(denominator)
            self.optimizer.grad_scale = denominator
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
        else:
            self._unfused_step(denominator, found_inf)
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema()
        self.lap("optimizer")
        finite = found_inf == 0
        self._bad_run = (self._bad_run + found_inf) * found_inf
        self._bad_total += found_inf
        step_loss = torch.where(finite, loss_total / denominator / self.dist.world_size, 0.0)
        meter.add_sum("loss", torch.where(finite, loss_total, 0.0))
        meter.add_rows(torch.where(finite, rows_total / self.dist.world_size, 0.0))
        return step_loss.to(torch.float64), samples

    def _clip(self, denominator: torch.Tensor) -> None:
        """Scale the gradients (sums, ``denominator`` times the normalised ones) so that the
        normalised gradients' global L2 norm is at most ``clip_grad_norm``; on the device."""
        limit = self.config.clip_grad_norm
        if limit is None:
            return
        grads = [p.grad for p in self.learner.module.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        coefficient = (limit * denominator / (norm + 1e-6 * denominator)).clamp(max=1.0)
        torch._foreach_mul_(grads, coefficient.to(grads[0].dtype))

    def _update_ema(self) -> None:
        decay = self.config.ema
        with torch.no_grad():
            ema_params = list(self.ema.parameters())
            params = [p.detach() for p in self.learner.module.parameters()]
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
            for ema_buffer, buffer in zip(self.ema.buffers(), self.learner.module.buffers(),
                                          strict=True):
                ema_buffer.copy_(buffer)

    def _unfused_step(self, denominator: torch.Tensor, found_inf: torch.Tensor) -> None:
        """SGD or fp16 with a GradScaler: unscale and normalise the gradients, skip on a
        non-finite loss (this path reads found_inf on the host)."""
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.learner.module.parameters() if p.grad is not None]
        if grads:
            torch._foreach_div_(grads, denominator)
        self._clip(torch.ones((), device=self.device))
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
        if bad_total > self._bad_reported:
            warnings.warn(f"kdcore: skipped {bad_total - self._bad_reported} optimizer step(s) "
                          f"with a non-finite loss (up to step {step})", RuntimeWarning,
                          stacklevel=4)
            self._bad_reported = bad_total
        if bad_run >= self.config.max_nonfinite:
            where = (f"the last good checkpoint {checkpoint_path} is untouched"
                     if checkpoint_path is not None else "no checkpoint was written (no out_dir)")
            raise NonFiniteLossError(
                f"training stopped: the loss was non-finite in {bad_run} optimizer steps in a "
                f"row (max_nonfinite={self.config.max_nonfinite}, at step {step}); {where}")

    # -- best checkpoint and early stopping ----------------------------------------------------
    def _track_best(self, record: dict, epoch: int, checkpoint_path: Path | None) -> None:
        name = self.config.best_metric or ("val_loss" if "val_loss" in record else None)
        if name is None:
            return
        if name not in record:
            raise ValueError(f"best_metric={name!r} is not in the epoch record (it has "
                             f"{sorted(k for k in record if k != 'event')})")
        mode = self.config.best_mode or (
            "min" if any(word in name for word in LOWER_IS_BETTER) else "max")
        value = float(record[name])
        best = self.best
        better = best is None or (value < best["value"] if mode == "min"
                                  else value > best["value"])
        if better:
            self.best = {"metric": name, "mode": mode, "value": value, "epoch": epoch,
                         "stale": 0}
            if checkpoint_path is not None and self.dist.is_main:
                module = self.ema if self.ema is not None else self.learner.module
                ckpt.save_atomic({**self.learner.state_dict(module), "epoch": epoch,
                                  "metric": name, "value": value, "ema": self.ema is not None,
                                  "config": self.config_dict()},
                                 checkpoint_path.with_name("best.pt"))
        else:
            self.best["stale"] += 1
        record["best_" + name] = self.best["value"]

    def _should_stop(self) -> bool:
        patience = self.config.patience
        return patience is not None and self.best is not None and self.best["stale"] >= patience

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader: Iterable, *, use_ema: bool = True) -> dict[str, float]:
        """Metrics on ``loader``: ``loss`` (the training objective), the objective's named
        terms (``kd_loss``, ``ce_loss``, ...), the task's metrics and ``samples``. With an EMA
        and ``use_ema`` [True] the EMA weights are evaluated. Under torchrun each rank takes
        an exact shard and the sums are all-reduced, so every rank returns the same values."""
        shard = batching.eval_loader(loader, self.dist.rank, self.dist.world_size,
                                     pin_memory=self.device.type == "cuda")
        module = self.ema if (use_ema and self.ema is not None) else self.learner.module
        modes = self.learner.modes()
        self.learner.train(False)
        module_mode = module.training
        module.eval()
        meter = None
        samples = torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            for raw in shard:
                self.learner.prepare(raw, self)
                if meter is None:
                    meter = self.learner.new_meter(self.device)
                    meter.collect = True
                batch = self.learner.to_device(batching.parse_batch(raw), check=False)
                terms, outputs = self.learner.terms(module, batch, training=False)
                meter.add_sum("loss", terms.loss)
                meter.add_rows(terms.count)
                for name, value in terms.sums.items():
                    meter.add_sum(name, value)
                samples += batch.size
                if batch.labels is not None:
                    meter.add_predictions(outputs, batch.labels, terms.mask)
        finally:
            self.learner.restore_modes(modes)
            module.train(module_mode)
        if meter is None:
            raise ValueError("the evaluation loader yielded no batch")
        meter.all_reduce(self.dist)
        all_reduce_(samples, self.dist)
        result = meter.compute()
        result["samples"] = float(samples)
        return result


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
