"""One config dataclass per engine layer, validated once in ``__post_init__``.

- :class:`LoopConfig`: the training loop (optimizer, schedule, precision, checkpoints, ...);
  knows nothing of distillation. :class:`kdcore.Trainer` takes it alone.
- :class:`ObjectiveConfig`: the task and its loss terms (temperature, alpha, ...).
- :class:`TeacherConfig`: where teacher outputs come from (online, cached) and the feature
  pairs.
- :class:`ViewConfig`: the distillation recipe and its deterministic views (function matching,
  :mod:`kdcore.engine.views`).

Defaults shared with other layers come from :mod:`kdcore.defaults`. ``to_dict()`` gives the
plain dict stored in checkpoints and ``run.json``; ``fields()`` lists the names (CLI flags and
YAML keys are generated from them).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from kdcore import defaults
from kdcore._backends import BACKENDS
from kdcore.ops import _checks
from kdcore.ops.feature_loss import KINDS as FEATURE_KINDS
from kdcore.ops.kd_loss import KINDS as KD_KINDS

TASKS = ("multiclass", "multilabel", "frame", "frame_multilabel", "ctc", "regression")
TEACHER_MODES = ("online", "cached")
PRECISIONS = ("bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
RECIPES = ("function_matching", "classic")


def check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


class _Config:
    def to_dict(self) -> dict:
        """Plain JSON-able values (paths as strings, tuples as lists)."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[field.name] = value
        return out

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))


@dataclasses.dataclass
class LoopConfig(_Config):
    """The training loop.

    - ``optimizer`` ["adamw"]: ``"adamw"``/``"adam"`` (fused) or ``"sgd"`` (momentum 0.9).
    - ``lr`` [``defaults.LR`` = 3e-3]: peak learning rate; ``weight_decay`` [1e-2], decoupled,
      on weights (dim >= 2) only.
    - ``schedule`` ["onecycle"]: ``"onecycle"``, ``"cosine"`` or ``"constant"``, per optimizer
      step.
    - ``grad_accum`` [1]: micro-batches per optimizer step; the loss is normalised by the
      window's global count of valid rows/frames/elements.
    - ``precision`` ["bf16"]: autocast of the model forward on CUDA (fp16 with a GradScaler,
      which syncs); fp32 on the CPU whatever this says.
    - ``compile`` [False], ``cuda_graphs`` [False, CUDA only: compile with
      ``mode="reduce-overhead"``, the training loader drops its last partial batch].
    - ``device`` [None: ``cuda:LOCAL_RANK`` when available, else CPU]; ``seed`` [0].
    - ``log_every`` [50 steps], ``checkpoint_every`` [200 steps; 0 = epoch ends only],
      ``max_nonfinite`` [10 steps in a row], ``progress`` [True], ``tensorboard`` [False].
    - ``clip_grad_norm`` [None: off]: clip the global gradient norm (of the normalised
      gradients) to this value, on the device.
    - ``ema`` [None: off]: decay of an exponential moving average of the trainable weights,
      updated after every optimizer step; evaluation then uses, and ``best.pt`` stores, the
      EMA weights.
    - ``best_metric`` [None: ``"val_loss"`` when a validation loader is given]: the epoch
      record entry that picks ``best.pt``; ``best_mode`` [None: ``"min"`` for names with
      ``loss``/``error``/``wer``/``cer``, else ``"max"``].
    - ``patience`` [None: off]: stop after this many epochs without a better ``best_metric``.
    """

    optimizer: str = "adamw"
    lr: float = defaults.LR
    weight_decay: float = 1e-2
    schedule: str = "onecycle"
    grad_accum: int = 1
    precision: str = "bf16"
    compile: bool = False
    cuda_graphs: bool = False
    device: str | None = None
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 200
    max_nonfinite: int = 10
    progress: bool = True
    tensorboard: bool = False
    clip_grad_norm: float | None = None
    ema: float | None = None
    best_metric: str | None = None
    best_mode: str | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        _checks.check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.check_choice("schedule", self.schedule, SCHEDULES)
        _checks.check_choice("precision", self.precision, PRECISIONS)
        self.lr = _checks.check_number("lr", self.lr, low=0.0, high=math.inf, low_open=True)
        self.weight_decay = _checks.check_number("weight_decay", self.weight_decay, low=0.0,
                                                 high=math.inf)
        check_int("grad_accum", self.grad_accum, 1)
        check_int("seed", self.seed, 0)
        check_int("log_every", self.log_every, 1)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("max_nonfinite", self.max_nonfinite, 1)
        if self.clip_grad_norm is not None:
            self.clip_grad_norm = _checks.check_number("clip_grad_norm", self.clip_grad_norm,
                                                       low=0.0, high=math.inf, low_open=True)
        if self.ema is not None:
            self.ema = _checks.check_number("ema", self.ema, low=0.0, high=1.0, low_open=True)
            if self.ema >= 1.0:
                raise ValueError(f"ema must be a decay in (0, 1), got {self.ema}")
        if self.best_mode is not None:
            _checks.check_choice("best_mode", self.best_mode, ("min", "max"))
        if self.patience is not None:
            check_int("patience", self.patience, 1)
        self.compile = bool(self.compile or self.cuda_graphs)
        if self.device is not None:
            self.device = str(self.device)


@dataclasses.dataclass
class ObjectiveConfig(_Config):
    """The task and its loss (see :mod:`kdcore.engine.objectives` for the formulas).

    - ``task`` ["multiclass"]: one of ``TASKS``.
    - ``temperature`` [``defaults.TEMPERATURE`` = 2.0], ``alpha`` [``defaults.ALPHA`` = 0.9]:
      ``alpha * KD + (1 - alpha) * label``; without a teacher the label term has weight 1.
    - ``kd_kind`` ["kl"]: ``"kl"``, ``"reverse_kl"`` or ``"jsd"`` (softmax tasks).
    - ``distance`` ["mse"]: the regression distance, ``"mse"``, ``"l1"`` or ``"cosine"``.
    - ``blank`` [0]: the CTC blank index.
    - ``mixup`` [0: off]: Beta(mixup, mixup) concentration of input mixup (not for the
      frame tasks, ctc or regression).
    - ``loss_backend`` ["auto"]: the backend of the kdcore loss ops.
    """

    task: str = "multiclass"
    temperature: float = defaults.TEMPERATURE
    alpha: float = defaults.ALPHA
    kd_kind: str = "kl"
    distance: str = "mse"
    blank: int = 0
    mixup: float = 0.0
    loss_backend: str = "auto"

    def __post_init__(self) -> None:
        _checks.check_choice("task", self.task, TASKS)
        self.temperature = _checks.check_temperature(self.temperature)
        self.alpha = _checks.check_number("alpha", self.alpha, low=0.0, high=1.0)
        _checks.check_choice("kd_kind", self.kd_kind, KD_KINDS)
        _checks.check_choice("distance", self.distance, FEATURE_KINDS)
        check_int("blank", self.blank, 0)
        self.mixup = _checks.check_number("mixup", self.mixup, low=0.0, high=math.inf)
        if self.mixup > 0 and self.task not in ("multiclass", "multilabel"):
            raise ValueError("mixup is for task='multiclass' or 'multilabel'; per-frame labels, "
                             f"transcripts and regression targets do not mix (task={self.task!r})")
        _checks.check_choice("loss_backend", self.loss_backend, BACKENDS)


@dataclasses.dataclass
class TeacherConfig(_Config):
    """Where teacher outputs come from, and the feature pairs.

    - ``teacher_mode`` ["online"]: ``"online"`` (forward every step) or ``"cached"``
      (computed once per (item, view), memory-mapped); a teacher that is not an ``nn.Module``
      always runs cached.
    - ``cache_dir`` [None: ``out_dir/teacher_cache``, rebuilt when stale; a directory named
      here whose key differs raises :class:`CacheMismatchError`]; ``cache_views`` [1: one
      view per item; a :class:`kdcore.engine.views.ViewSet` loader sets its ``num_views``].
    - ``cache_storage`` ["float32"]: or ``"float16"``, half the disk and page cache; each
      stored value is then rounded to nearest, a relative error of at most 2**-11.
    - ``feature_pairs`` [()]: ``(student_module_path, teacher_module_path)`` pairs,
      ``feature_kind`` ["mse"], ``feature_weight`` [0.0].
    - ``teacher_frame_rate``, ``student_frame_rate`` [None]: output frames per second of
      the frame tasks; None takes ``sample_rate / hop_length`` of the side's frontend when it
      has them; needed only when the frame counts differ (see :func:`align_frames`).
    """

    teacher_mode: str = "online"
    cache_dir: Path | None = None
    cache_views: int = 1
    cache_storage: str = "float32"
    feature_pairs: tuple[tuple[str, str], ...] = ()
    feature_kind: str = "mse"
    feature_weight: float = 0.0
    teacher_frame_rate: float | None = None
    student_frame_rate: float | None = None

    def __post_init__(self) -> None:
        _checks.check_choice("teacher_mode", self.teacher_mode, TEACHER_MODES)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        check_int("cache_views", self.cache_views, 1)
        _checks.check_choice("cache_storage", self.cache_storage, ("float32", "float16"))
        pairs = []
        for pair in self.feature_pairs or ():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError("feature_pairs must hold (student_module_path, "
                                 f"teacher_module_path) pairs, got {pair!r}")
            pairs.append((str(pair[0]), str(pair[1])))
        self.feature_pairs = tuple(pairs)
        _checks.check_choice("feature_kind", self.feature_kind, FEATURE_KINDS)
        self.feature_weight = _checks.check_number("feature_weight", self.feature_weight,
                                                   low=0.0, high=math.inf)
        if self.feature_weight > 0 and not self.feature_pairs:
            raise ValueError("feature_weight > 0 needs feature_pairs")
        for name in ("teacher_frame_rate", "student_frame_rate"):
            if getattr(self, name) is not None:
                setattr(self, name, _checks.check_number(name, getattr(self, name), low=0.0,
                                                         high=math.inf, low_open=True))


def _pair(name: str, value: object) -> tuple[float, float]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
    low, high = (_checks.check_number(name, v, low=-math.inf, high=math.inf) for v in value)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    return float(low), float(high)


@dataclasses.dataclass
class ViewConfig(_Config):
    """The distillation recipe and, for function matching, how its views are made (see
    docs/recipes.md; one set of defaults for every classification dataset).

    - ``recipe`` ["function_matching"]: the student and the teacher see the same
      deterministic *views* of each clip, each a mixup of two clips with gain, shift and
      noise; labels mix alike (:class:`kdcore.engine.views.ViewSet`). ``"classic"``: KD and
      labels on the student's own randomly augmented clip (no views).
    - ``views`` [8]: K, the views stored per clip; the teacher cache holds K x N outputs and
      its fill costs K teacher passes over the training set (``kdcore distill`` takes
      ``min(views, epochs)``: each epoch trains on the next view of every clip).
    - ``gain_db`` [(-6.0, 6.0)]: uniform gain in dB.
    - ``max_shift_s`` [0.05]: integer time shift of up to s seconds either way, zero-filled.
    - ``noise_snr_db`` [(20.0, 40.0)]: white noise at a uniform SNR in dB against the mixed
      clip's mean power; None: no noise.
    - ``view_mixup`` [0.4]: ``lam ~ Beta(a, a)`` folded to ``max(lam, 1 - lam)``; the partner
      is another clip of the training set drawn uniformly; 0: no partner.
    """

    recipe: str = "function_matching"
    views: int = 8
    gain_db: tuple[float, float] = (-6.0, 6.0)
    max_shift_s: float = 0.05
    noise_snr_db: tuple[float, float] | None = (20.0, 40.0)
    view_mixup: float = 0.4

    def __post_init__(self) -> None:
        _checks.check_choice("recipe", self.recipe, RECIPES)
        check_int("views", self.views, 1)
        self.gain_db = _pair("gain_db", self.gain_db)
        self.max_shift_s = _checks.check_number("max_shift_s", self.max_shift_s, low=0.0,
                                                high=math.inf)
        if self.noise_snr_db is not None:
            self.noise_snr_db = _pair("noise_snr_db", self.noise_snr_db)
        self.view_mixup = _checks.check_number("view_mixup", self.view_mixup, low=0.0,
                                               high=math.inf)

    def view_recipe(self) -> dict:
        """What defines a view (the cache key's part): every field but ``recipe``/``views``."""
        return {k: v for k, v in self.to_dict().items() if k not in ("recipe", "views")}
