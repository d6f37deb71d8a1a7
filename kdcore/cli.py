"""The ``kdcore`` command line: demo, train, distill, eval, cache-teacher, export, bench.

``--data`` is a folder with one subfolder per class, a CSV manifest (``path,label[,split]
[,group]``; ``path,labels`` with ``;``-separated tags for ``--task multilabel``; ``transcript``,
``frames`` or ``target`` columns for ctc, the frame tasks and regression, see
:mod:`kdcore.data.tasks`) or the word ``synthetic`` (the embedded
:class:`kdcore.data.SyntheticAudio`). ``train`` is
:class:`kdcore.Trainer`, ``distill`` :class:`kdcore.Distiller`; the loop flags and their
defaults come from :class:`kdcore.engine.config.LoopConfig` (``--help`` shows them).
``--config FILE.yaml`` holds defaults whose keys mirror the long flags (``clip-seconds`` or
``clip_seconds``) and take the flag's type; flags given on the command line win.

``train`` and ``distill`` never overwrite a run by accident: an ``--out`` that holds one is
refused unless ``--resume`` (continue it, with the same settings) or ``--overwrite`` (replace
it). Nothing is written to ``--out`` until the arguments, the data and the resume state are
checked; then ``run.json`` (the resolved configuration, the environment and the git commit) is
written atomically, and a resume appends its invocation to the record's ``resumes`` list.
``--seed`` seeds everything before the model is built: the same command on the same machine
and thread count gives bitwise-identical weights on the CPU (see docs/cli.md).
User mistakes (:class:`kdcore.errors.UserInputError`, a missing file or package) end with one
``kdcore: error: ...`` line on stderr and exit code 2 (``KDCORE_DEBUG=1`` shows the traceback
instead); internal errors keep their traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcore import defaults
from kdcore.engine.config import (
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
    TASKS,
    TEACHER_MODES,
    LoopConfig,
    ObjectiveConfig,
    TeacherConfig,
    ViewConfig,
)
from kdcore.errors import UserInputError
from kdcore.ops.feature_loss import KINDS as FEATURE_KINDS

EXIT_USAGE = 2
SYNTHETIC = "synthetic"
# What marks a folder as holding a run, and what --overwrite removes (nothing else).
RUN_MARKERS = ("run.json", "model.pt", "checkpoints", "metrics.jsonl")
RUN_ARTEFACTS = (*RUN_MARKERS, "best.pt", "report.json", "confusion.png", "per_class_ap.png",
                 "skipped.txt", "teacher_cache", "tensorboard")
# Settings a resume may change: they do not change what is trained. ``epochs`` follows the
# engine's policy for a longer run; every other setting must match the original run.
RESUME_MAY_DIFFER = frozenset({"device", "no_progress", "config", "resume", "overwrite",
                               "deterministic", "backend", "out", "epochs", "cache_dir",
                               "teacher", "workers"})


class CLIError(UserInputError):
    """A user mistake the command line reports in one line."""


# ------------------------------------------------------------------------------------------
# Run records
# ------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the kdcore source tree, or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def environment(device: torch.device) -> dict:
    """Versions and device of this process."""
    import numpy

    import kdcore

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "kdcore": kdcore.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "device": str(device),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _write_json_atomic(path: Path, value: object) -> None:
    """``json.dumps(value)`` to ``path`` through a temporary file and ``os.replace``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def _run_config(args: argparse.Namespace) -> dict:
    """The resolved configuration of ``args`` as JSON values (no handler, no argv)."""
    return _jsonable({key: value for key, value in vars(args).items()
                      if key not in ("handler", "command", "argv")})


def write_run_record(out: Path, command: str, args: argparse.Namespace,
                     device: torch.device) -> Path:
    """``out/run.json`` (written atomically): the command, its argv, resolved configuration,
    environment, git commit and start time, and an empty ``resumes`` list."""
    record = {"command": command, "argv": list(getattr(args, "argv", []) or []),
              "config": _run_config(args), "environment": environment(device),
              "git_commit": git_commit(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumes": []}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    _write_json_atomic(path, record)
    return path


def append_resume_record(out: Path, args: argparse.Namespace, device: torch.device,
                         record: dict) -> Path:
    """Append this invocation (argv, the settings that differ from the original run, the
    environment, start time) to ``record["resumes"]`` and write ``out/run.json`` atomically;
    the original ``config`` is kept as it was."""
    original = record.get("config", {})
    current = _run_config(args)
    changed = {key: {"was": original.get(key), "now": value} for key, value in current.items()
               if key in original and original[key] != value}
    entry = {"argv": list(getattr(args, "argv", []) or []), "changed": changed,
             "environment": environment(device), "git_commit": git_commit(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record = dict(record)
    record["resumes"] = [*record.get("resumes", []), entry]
    path = out / "run.json"
    _write_json_atomic(path, record)
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------------------
# Data and models
# ------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The splits of ``--data`` as datasets of :class:`kdcore.data.AudioExample`:
    ``evaluation`` is the split a report scores (``--split``, default test), ``validation``
    the per-epoch validation split (``val``; None when the data has none); training never
    sees the test split."""

    class_names: list[str]
    train: torch.utils.data.Dataset | None
    evaluation: torch.utils.data.Dataset
    evaluation_split: str
    summary: str
    validation: torch.utils.data.Dataset | None = None
    skipped: list = field(default_factory=list)
    collate: object = None  # the sequence tasks' kdcore.data.tasks.TaskCollate


def _data_key(args: argparse.Namespace) -> dict:
    """What fixes the item ids of the training split (checked by a reused teacher cache)."""
    key = {"data": str(args.data), "seed": args.seed, "test_fraction": args.test_fraction,
           "group_split": args.group_split, "skip_bad": args.skip_bad,
           "synthetic_size": args.synthetic_size, "sample_rate": args.sample_rate,
           "clip_seconds": args.clip_seconds}
    if getattr(args, "val_fraction", 0.0):
        key["val_fraction"] = args.val_fraction
    if getattr(args, "allow_duplicates", False):
        key["allow_duplicates"] = True
    if getattr(args, "unlabelled", None):
        key["unlabelled"] = str(args.unlabelled)
    return key


def clip_samples(args: argparse.Namespace) -> int:
    return max(1, round(args.clip_seconds * args.sample_rate))


def load_data(args: argparse.Namespace, *, split: str = "test", need_train: bool = True,
              deterministic_train: bool = False, classes: list[str] | None = None,
              per_frame: bool | None = None) -> Data:
    """Datasets of ``args.data``: the training split (random crops unless
    ``deterministic_train``), followed by the clips of ``args.unlabelled`` without labels when
    given (:class:`kdcore.data.TransferSet`), the ``val`` split and ``split`` (centre crops;
    ``all`` is every file). Every file is decoded here, so bad audio surfaces before anything
    is written. ``classes``/``per_frame``: see :func:`kdcore.data.tasks.load_task_source`
    (the sequence tasks)."""
    data = _labelled_data(args, split=split, need_train=need_train,
                          deterministic_train=deterministic_train, classes=classes,
                          per_frame=per_frame)
    if need_train and getattr(args, "unlabelled", None):
        from kdcore.data import AudioFileDataset, TransferSet, unlabelled_files

        files, skipped = unlabelled_files(args.unlabelled, skip_bad=args.skip_bad,
                                          decode=args.skip_bad)
        unlabelled = AudioFileDataset(files, [0] * len(files), sample_rate=args.sample_rate,
                                      clip_samples=clip_samples(args),
                                      train=not deterministic_train, preload=True)
        data.train = TransferSet(data.train, unlabelled)
        data.skipped += skipped
        data.summary += (f"; + {len(files)} unlabelled clips from {args.unlabelled} (KD term "
                         f"only{f', {len(skipped)} bad skipped' if skipped else ''})")
    return data


def _split_counts(parts: dict[str, list[int]]) -> str:
    return " / ".join(f"{len(parts.get(name, []))} {name}" for name in ("train", "val", "test"))


def _labelled_data(args: argparse.Namespace, *, split: str, need_train: bool,
                   deterministic_train: bool, classes: list[str] | None = None,
                   per_frame: bool | None = None) -> Data:
    from kdcore.data import SyntheticAudio

    if args.sample_rate < 1000:
        raise CLIError(f"--sample-rate must be at least 1000 Hz, got {args.sample_rate}")
    if not args.clip_seconds > 0:
        raise CLIError(f"--clip-seconds must be > 0, got {args.clip_seconds}")
    val_fraction = getattr(args, "val_fraction", 0.0)
    for flag, value in (("--test-fraction", args.test_fraction),
                        ("--val-fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise CLIError(f"{flag} must be in [0, 1), got {value}")
    samples = clip_samples(args)
    task = getattr(args, "task", "multiclass")
    if str(args.data) == SYNTHETIC and task != "multiclass":
        raise CLIError(f"--data synthetic is single-label; --task {task} needs a CSV manifest "
                       "with a 'labels' column")
    if str(args.data) == SYNTHETIC:
        sizes = {"train": args.synthetic_size, "val": max(16, args.synthetic_size // 4),
                 "test": max(16, args.synthetic_size // 4)}
        common = {"seed": args.seed, "sample_rate": args.sample_rate,
                  "duration": args.clip_seconds}
        parts = {name: SyntheticAudio(size, split=name, **common) if name == split or
                 (name == "train" and need_train) or (name == "val" and need_train) or
                 split == "all" else None for name, size in sizes.items()}
        evaluation = (torch.utils.data.ConcatDataset([parts[n] for n in sizes])
                      if split == "all" else parts[split])
        counts = " / ".join(f"{size} {name}" for name, size in sizes.items())
        return Data(list(SyntheticAudio.classes), parts["train"] if need_train else None,
                    evaluation, split,
                    f"SyntheticAudio: {counts} clips, {len(SyntheticAudio.classes)} classes",
                    validation=parts["val"] if need_train else None)
    source = data_source(args, classes=classes, per_frame=per_frame)
    parts = source.split(group_column=args.group_split, test_fraction=args.test_fraction,
                         val_fraction=val_fraction, seed=args.seed)
    if split == "all":
        parts = {**parts, "all": list(range(len(source.records)))}
    if split not in parts or not parts[split]:
        raise CLIError(f"--split {split!r} is empty or missing in {args.data} (splits: "
                       f"{_split_counts(parts)})")
    if need_train and not parts.get("train"):
        raise CLIError(f"{args.data} has no training items (splits: {_split_counts(parts)})")
    options = {"sample_rate": args.sample_rate, "clip_samples": samples, "preload": True}
    train = (source.dataset(parts["train"], train=not deterministic_train, **options)
             if need_train else None)
    validation = (source.dataset(parts["val"], train=False, **options)
                  if need_train and parts.get("val") else None)
    evaluation = source.dataset(parts[split], train=False, **options)
    how = ("split column" if args.group_split is None and source.has_split_column() else
           f"group split by {args.group_split!r}, seed {args.seed}" if args.group_split else
           f"stratified random split, seed {args.seed}")
    line = f"{len(source.records)} files in {len(source.classes)} classes from {source.root}"
    if not getattr(source, "labelled", True):
        line = (f"{len(source.records)} unlabelled files from {args.data} (teacher-only "
                f"distillation, the teacher's {len(source.classes)} classes)")
    if source.skipped:
        line += f"; skipped {len(source.skipped)} bad entries"
    summary = f"{line}; {how}: {_split_counts(parts)}"
    if need_train:
        summary += ("; validating on val each epoch" if validation is not None else
                    "; no val split (add 'val' rows or --val-fraction to validate each epoch)")
    elif split == "all":
        summary += f"; scoring all {len(parts['all'])} files"
    elif how != "split column":
        summary += f"; scoring the {split} split (--split all scores every file)"
    return Data(list(source.classes), train, evaluation, split, summary, validation,
                list(source.skipped))


def data_source(args: argparse.Namespace, *, check_audio: bool = True,
                classes: list[str] | None = None, per_frame: bool | None = None):
    """The :class:`kdcore.data.AudioSource` of ``--data`` for ``--task``: the sequence tasks'
    :func:`kdcore.data.tasks.load_task_source` (labels required by ``train`` and ``eval``),
    else :func:`kdcore.data.load_source`."""
    from kdcore.data import load_source
    from kdcore.data.tasks import SEQUENCE_TASKS, load_task_source

    task = getattr(args, "task", "multiclass")
    common = {"skip_bad": args.skip_bad, "decode": args.skip_bad and check_audio,
              "check_audio": check_audio,
              "allow_duplicates": getattr(args, "allow_duplicates", False)}
    if task in SEQUENCE_TASKS:
        return load_task_source(args.data, task, classes=classes, per_frame=per_frame,
                                require_targets=args.command != "distill", **common)
    return load_source(args.data, task=task, **common)


def parse_model_args(pairs: list[str] | None) -> dict:
    """``["width=8", "dropout=0.2"]`` to ``{"width": 8, "dropout": 0.2}`` (YAML scalars)."""
    import yaml

    kwargs = {}
    for pair in pairs or []:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--model-arg must be KEY=VALUE, got {pair!r}")
        kwargs[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return kwargs


def frontend_config(args: argparse.Namespace) -> dict:
    """``LogMel`` keywords of the run's frontend."""
    return {"sample_rate": args.sample_rate, "n_fft": args.n_fft,
            "hop_length": args.hop_length, "n_mels": args.n_mels, "log": "ln",
            "log_eps": 1e-6}


def build_model(name: str, num_classes: int, args: argparse.Namespace) -> nn.Module:
    from kdcore.models import create

    kwargs = parse_model_args(args.model_arg)
    if name == "hf":
        if "path" not in kwargs:
            raise CLIError("--model hf needs --model-arg path=DIR (a local Hugging Face "
                           "audio-classification model directory)")
    else:
        kwargs = {"n_mels": args.n_mels, **kwargs}
    if args.width is not None:
        kwargs["width"] = args.width
    try:
        return create(name, num_classes, **kwargs)
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise CLIError(f"--model-arg: {error}") from None


def training_frontend(config: dict, args: argparse.Namespace, augment: bool) -> nn.Module:
    """Log-mel with waveform gain/shift and SpecAugment (``augment``), else log-mel only;
    no shift for the sequence tasks, whose targets are tied to the frames."""
    from kdcore.checkpoints import build_frontend
    from kdcore.data import SpecAugment, WaveAugment
    from kdcore.data.tasks import SEQUENCE_TASKS

    log_mel = build_frontend(config, args.backend)
    if not augment:
        return log_mel
    shift = 0 if getattr(args, "task", None) in SEQUENCE_TASKS else args.sample_rate // 20
    return nn.Sequential(
        WaveAugment(gain_db=(-6.0, 6.0), max_shift=shift), log_mel,
        SpecAugment(freq_masks=2, freq_width=max(1, args.n_mels // 8), time_masks=2,
                    time_width=8))


def _loader(dataset, batch_size: int, shuffle: bool, collate=None):
    from torch.utils.data import DataLoader

    from kdcore.data import collate_audio
    from kdcore.engine.views import ViewSet

    if collate is None:
        collate = None if isinstance(dataset, ViewSet) else collate_audio  # views: dict items
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def available_devices() -> list[str]:
    """The devices this machine offers: ``cpu``, then ``cuda:0`` ... and ``mps`` when present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def _device(args: argparse.Namespace) -> torch.device:
    """``--device`` checked against this machine (a :class:`CLIError` naming the device and
    what is available); default ``cuda`` when available, else ``cpu``."""
    if getattr(args, "device", None) is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(args.device)
    available = available_devices()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {text!r} is not a device name; available here: "
                       f"{', '.join(available)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: no CUDA GPU is available here (torch "
                           f"{torch.__version__}, CUDA {torch.version.cuda}); available here: "
                           f"{', '.join(available)}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: this machine has {torch.cuda.device_count()} "
                           f"GPU(s); available here: {', '.join(available)}")
    elif device.type == "mps" and "mps" not in available:
        raise CLIError(f"--device {text}: MPS is not available here; available here: "
                       f"{', '.join(available)}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device {text}: kdcore runs on cpu, cuda or mps; available here: "
                       f"{', '.join(available)}")
    return device


def check_frontend(args: argparse.Namespace) -> None:
    """The run's log-mel frontend must build and every mel band must cover an FFT bin (an
    all-zero band is a constant feature, almost always a too small ``--n-fft``)."""
    from kdcore.checkpoints import build_frontend
    from kdcore.ops.log_mel import _tables

    for flag in ("n_fft", "hop_length", "n_mels"):
        value = getattr(args, flag)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be a positive integer, got {value!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log_mel = build_frontend(frontend_config(args), "reference")
    except (ValueError, TypeError) as error:
        raise CLIError(f"the log-mel frontend (--n-fft {args.n_fft}, --hop-length "
                       f"{args.hop_length}, --n-mels {args.n_mels}, --sample-rate "
                       f"{args.sample_rate}) is invalid: {error}") from None
    _, filterbank = _tables(log_mel.config.key(), torch.device("cpu"), torch.float64)
    empty = (filterbank.amax(0) == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:8])) + (" ..." if len(empty) > 8 else "")
        raise CLIError(f"--n-fft {args.n_fft} gives {filterbank.shape[0]} frequency bins, too "
                       f"few for --n-mels {args.n_mels}: {len(empty)} mel band(s) would be all "
                       f"zero (band {shown}); raise --n-fft or lower --n-mels")


@torch.no_grad()
def predict(frontend: nn.Module, model: nn.Module, dataset, batch_size: int,
            device: torch.device, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and argmax predictions (both (N,) int64) over ``dataset``."""
    from tqdm import tqdm

    frontend.to(device).eval()
    model.to(device).eval()
    labels, predictions = [], []
    loader = _loader(dataset, batch_size, shuffle=False)
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        logits = model(frontend(batch.waveforms.to(device)))
        predictions.append(logits.argmax(dim=-1).cpu())
        labels.append(batch.labels)
    return torch.cat(labels), torch.cat(predictions)


def write_report(labels: torch.Tensor, predictions: torch.Tensor, class_names: list[str],
                 out: Path, title: str) -> object:
    """Print the classification report; write ``report.json`` and ``confusion.png``."""
    from kdcore.eval import classification_report

    report = classification_report(labels, predictions, class_names)
    print(report.to_text())
    out.mkdir(parents=True, exist_ok=True)
    report.save_json(out / "report.json")
    report.save_confusion_png(out / "confusion.png", title=title)
    print(f"wrote {out / 'report.json'} and {out / 'confusion.png'}")
    return report


LOOP_FLAGS = ("optimizer", "lr", "weight_decay", "schedule", "grad_accum", "precision",
              "compile", "clip_grad_norm", "ema", "best_metric", "best_mode", "patience",
              "seed")


def _user_config(cls: type, **values: object):
    """``cls(**values)`` (a config dataclass); its validation errors name the field and are
    user mistakes here, so they become a :class:`CLIError` naming the flag."""
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        text = str(error)
        for name in values:
            if text.startswith(name):
                text = f"--{name.replace('_', '-')}{text[len(name):]}"
                break
        raise CLIError(text) from None


def loop_config(args: argparse.Namespace) -> LoopConfig:
    """The :class:`LoopConfig` of a train/distill run from its loop flags."""
    values = {name: getattr(args, name) for name in LOOP_FLAGS}
    return _user_config(LoopConfig, **values, device=str(_device(args)), checkpoint_every=0,
                        progress=not args.no_progress)


def objective_config(args: argparse.Namespace, *, alpha: float | None = None,
                     temperature: float | None = None) -> ObjectiveConfig:
    """The :class:`ObjectiveConfig` of a train/distill run."""
    extra = {} if alpha is None else {"alpha": alpha, "temperature": temperature}
    return _user_config(ObjectiveConfig, task=args.task, mixup=args.mixup,
                        distance=args.distance, loss_backend=args.backend, **extra)


def make_trainer(model: nn.Module, args: argparse.Namespace, *, augment: bool,
                 classes: list[str] | None = None):
    """The :class:`kdcore.Trainer` of a train run (plain supervised training, weights saved
    under ``"model"``), built and so checked before anything is written to ``--out``."""
    from kdcore import Trainer

    objective = objective_config(args)
    frontend = model_frontend(args, augment)
    return Trainer(model, task=objective.task, frontend=frontend, mixup=objective.mixup,
                   loss_backend=objective.loss_backend, distance=objective.distance,
                   metrics=task_metrics(args.task, classes), config=loop_config(args))


def make_distiller(teacher: nn.Module, student: nn.Module, args: argparse.Namespace, *,
                   augment: bool, teacher_mode: str = "online",
                   feature_pairs: list[tuple[str, str]] | None = None,
                   feature_weight: float = 0.0, cache_dir: Path | None = None,
                   teacher_frontend: nn.Module | None = None,
                   classes: list[str] | None = None,
                   student_frontend: nn.Module | None = None):
    """The :class:`kdcore.Distiller` of a distill run (built, and so checked, before
    anything is written to ``--out``). ``teacher_frontend`` [None: the student's];
    ``student_frontend`` [None: :func:`model_frontend` with ``augment``]; per-frame teacher
    and student outputs are aligned by their frame rates (log-mel hop and stride)."""
    from kdcore import Distiller
    from kdcore.data.tasks import model_frame_rate

    objective = objective_config(args, alpha=args.alpha, temperature=args.temperature)
    teacher_config = _user_config(TeacherConfig, teacher_mode=teacher_mode,
                                  feature_pairs=tuple(feature_pairs or ()),
                                  feature_weight=feature_weight, cache_dir=cache_dir,
                                  cache_storage=getattr(args, "cache_storage", "float32"))
    loop = loop_config(args)
    frontend = student_frontend if student_frontend is not None else model_frontend(args,
                                                                                    augment)
    fronts = ({"frontend": frontend} if teacher_frontend is None else
              {"teacher_frontend": teacher_frontend, "student_frontend": frontend})
    rates = {}
    if teacher_frontend is None:
        rates = {"teacher_frame_rate": model_frame_rate(teacher, args.sample_rate,
                                                        args.hop_length),
                 "student_frame_rate": model_frame_rate(student, args.sample_rate,
                                                        args.hop_length)}
        rates = rates if None not in rates.values() else {}
    return Distiller(teacher, student, **fronts, task=objective.task,
                     temperature=objective.temperature, alpha=objective.alpha,
                     mixup=objective.mixup, loss_backend=objective.loss_backend,
                     distance=objective.distance, **rates,
                     metrics=task_metrics(args.task, classes),
                     **{k: v for k, v in teacher_config.to_dict().items()
                        if k in ("teacher_mode", "feature_pairs", "feature_weight",
                                 "cache_dir", "cache_storage") and v is not None},
                     **loop.to_dict())


def task_metrics(task: str, classes: list[str] | None = None) -> dict | None:
    """Extra validation metrics of ``task`` (:func:`kdcore.eval.tasks.task_metrics`)."""
    from kdcore.eval.tasks import task_metrics as metrics

    return metrics(task, classes or [])


@torch.no_grad()
def tagging_report(frontend: nn.Module, model: nn.Module, dataset, class_names: list[str],
                   batch_size: int, device: torch.device, out: Path, split: str,
                   title: str | None = None) -> dict:
    """Multilabel scores of ``model`` on ``dataset``: macro mAP, micro AP and micro/macro F1
    of ``sigmoid(logits) >= 0.5``, and per-tag AP; printed, written to ``out/report.json``
    and plotted to ``out/per_class_ap.png`` (``title`` [None: "per-class AP, SPLIT
    split"])."""
    from kdcore.eval import save_average_precision_png
    from kdcore.eval.metrics import (
        average_precision,
        f1_at_threshold,
        mean_average_precision,
        micro_average_precision,
    )

    frontend.to(device).eval()
    model.to(device).eval()
    scores, targets = [], []
    for batch in _loader(dataset, batch_size, shuffle=False):
        scores.append(torch.sigmoid(model(frontend(batch.waveforms.to(device)))).cpu())
        targets.append(batch.labels)
    probability, target = torch.cat(scores).double(), torch.cat(targets).double()
    per_tag = average_precision(probability, target)
    report = {"task": "multilabel", "split": split, "items": int(target.shape[0]),
              "mAP": mean_average_precision(probability, target),
              "micro_ap": micro_average_precision(probability, target),
              "f1_micro@0.5": float(f1_at_threshold(probability, target)),
              "f1_macro@0.5": float(f1_at_threshold(probability, target, average="macro")),
              "ap_per_tag": {name: (None if value != value else float(value))
                             for name, value in zip(class_names, per_tag.tolist(),
                                                    strict=True)}}
    print(" ".join(f"{key} {report[key]:.4f}" for key in
                   ("mAP", "micro_ap", "f1_micro@0.5", "f1_macro@0.5")) +
          f" on {report['items']} {split} clips")
    width = max(len(name) for name in class_names)
    for name, value in report["ap_per_tag"].items():
        print(f"  AP {name:<{width}} " + ("n/a (no positive)" if value is None
                                          else f"{value:.4f}"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    _write_json_atomic(path, report)
    plot = save_average_precision_png(report["ap_per_tag"], out / "per_class_ap.png",
                                      title=title or f"per-class AP, {split} split",
                                      mean_ap=report["mAP"])
    print(f"wrote {path} and {plot}")
    return report


def model_frontend(args: argparse.Namespace, augment: bool) -> nn.Module:
    """The student's (or trained model's) frontend: log-mel, with augmentation; for
    ``--model hf`` the model's own feature frontend (:func:`hf_frontend`)."""
    if getattr(args, "model", None) == "hf" and args.command == "train":
        return hf_frontend(parse_model_args(args.model_arg)["path"], args.sample_rate)
    return training_frontend(frontend_config(args), args, augment)


def hf_frontend(path: str, sample_rate: int) -> nn.Module:
    """The feature frontend of the local Hugging Face model ``path``
    (:func:`kdcore.teachers.hf.frontend_for`), behind a :class:`kdcore.Resample` when the
    data's ``sample_rate`` differs from the model's."""
    from kdcore import Resample
    from kdcore.teachers.hf import frontend_for

    try:
        frontend, rate = frontend_for(path)
    except ValueError as error:
        raise CLIError(f"--model-arg path={path}: {error}") from None
    if rate == sample_rate:
        return frontend
    return nn.Sequential(Resample(sample_rate, rate), frontend)


def registered_teacher(name: str, args: argparse.Namespace, classes: list[str]):
    """``--teacher NAME`` of the registry (``kdcore teachers``) or ``hf:PATH``: its model,
    and its own frontend behind a :class:`kdcore.Resample` from ``--sample-rate`` when the
    rates differ. Only a teacher of the run's ``--task`` whose labels are the data's classes
    fits; anything else is a :class:`CLIError` saying what to use."""
    from kdcore import Resample, teachers

    spec = teachers.spec(name)
    if spec.task != args.task:
        raise CLIError(f"--teacher {name} is a {spec.task} teacher and this run's --task is "
                       f"{args.task}; the "
                       "command line distils clip-level multiclass and multilabel teachers. "
                       f"Use kdcore.teachers.load({name!r}) with kdcore.Distiller(bundle.model, "
                       f"student, task={spec.task!r}, teacher_frontend=bundle.frontend) "
                       "from Python")
    bundle = teachers.load(name)
    labels = list(bundle.output.labels) if bundle.output.labels else None
    if (labels is not None and labels != classes) or bundle.output.size != len(classes):
        raise CLIError(f"--teacher {name} predicts {bundle.output.size} classes "
                       f"{(labels or [])[:6]} but --data has {len(classes)} classes "
                       f"{classes[:6]}; the data's labels must be the teacher's")
    frontend = bundle.frontend
    if bundle.sample_rate != args.sample_rate:
        print(f"note: resampling {args.sample_rate} Hz to the teacher's {bundle.sample_rate} Hz "
              "on the device (kdcore.Resample)")
        frontend = nn.Sequential(Resample(args.sample_rate, bundle.sample_rate), frontend)
    return bundle, frontend


def is_registered_teacher(values: object) -> bool:
    """``--teacher`` names one registered teacher or ``hf:PATH`` (not a file)."""
    from kdcore import teachers

    items = values if isinstance(values, (list, tuple)) else [values]
    if len(items) != 1:
        return False
    name = str(items[0])
    return (name.startswith("hf:") or name in teachers.names()) and not Path(name).is_file()


def _fit(distiller, data: Data, args: argparse.Namespace, out: Path) -> None:
    """``distiller.fit`` on the training split, validating on the ``val`` split (never on
    test) when the data has one."""
    train_loader = _loader(data.train, args.batch_size, shuffle=True, collate=data.collate)
    val_loader = (_loader(data.validation, args.batch_size, shuffle=False, collate=data.collate)
                  if data.validation is not None else None)
    try:
        history = distiller.fit(train_loader, val_loader, epochs=args.epochs, out_dir=out,
                                resume=args.resume)
    except ValueError as error:
        # The engine refuses another ``epochs`` for a planned (onecycle/cosine) schedule.
        if args.resume and str(error).startswith("epochs="):
            raise CLIError(f"--resume with --epochs {args.epochs}: {error}") from None
        raise
    last = history.epochs[-1] if history.epochs else {}
    shown = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    print(f"last epoch: {shown}")


def check_task(args: argparse.Namespace) -> None:
    """``--task`` with what the command line reads for it: the sequence tasks (ctc, frame,
    frame_multilabel, regression) have no teacher cache yet (``--teacher-mode cached``,
    ``cache-teacher``)."""
    from kdcore.data.tasks import SEQUENCE_TASKS

    task = getattr(args, "task", "multiclass")
    cached = args.command == "cache-teacher" or getattr(args, "teacher_mode", None) == "cached"
    if task in SEQUENCE_TASKS and cached:
        raise CLIError(f"--task {task}: the teacher cache holds fixed-shape outputs and these "
                       "utterances vary in length; distil with --teacher-mode online")


def bind_task_data(data: Data, model: nn.Module, args: argparse.Namespace, name: str,
                   log_mel: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
    """For the sequence tasks, set ``data.collate`` to the batches of ``model`` (named
    ``name``) behind ``log_mel`` [None: the flags' log-mel], checking every item's targets
    against its output frames (:func:`kdcore.data.tasks.task_collate`); a ``teacher`` [None]
    must be per frame exactly when the model is."""
    from kdcore.checkpoints import build_frontend
    from kdcore.data.tasks import SEQUENCE_TASKS, model_frames, task_collate

    if args.task in SEQUENCE_TASKS:
        log_mel = log_mel or build_frontend(frontend_config(args), "reference")
        frames = model_frames(model, log_mel)
        if teacher is not None and (model_frames(teacher, log_mel) is None) != (frames is None):
            kinds = ("one output per clip", "outputs per frame")
            raise CLIError(f"--student {name} gives {kinds[frames is not None]} but the "
                           f"teacher gives {kinds[frames is None]}; --task {args.task} needs "
                           "both alike")
        data.collate = task_collate(args.task, frames,
                                    [data.train, data.validation, data.evaluation],
                                    model_name=name)


def check_training_args(args: argparse.Namespace) -> None:
    """The numbers of a train/distill run, checked before anything is read or written."""
    import math

    check_task(args)
    if getattr(args, "unlabelled", None) and args.task != "multiclass":
        raise CLIError(f"--unlabelled works with --task multiclass only for now (got --task "
                       f"{args.task})")
    if args.epochs < 1:
        raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr must be a positive number, got {args.lr}")


def seed_run(args: argparse.Namespace) -> None:
    """Seed Python, numpy and torch (every device) with ``--seed`` before anything random is
    drawn (model init first); ``--deterministic`` also makes PyTorch use deterministic
    algorithms (needed for bitwise repeats on a GPU)."""
    import random

    import numpy

    if getattr(args, "deterministic", False):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    random.seed(args.seed)
    numpy.random.seed(args.seed % 2**32)
    torch.manual_seed(args.seed)


# ------------------------------------------------------------------------------------------
# Run folders: refuse, resume strictly, overwrite on purpose
# ------------------------------------------------------------------------------------------

# Distiller settings a resume may change (how the step runs, not what it computes).
ENGINE_MAY_DIFFER = frozenset({"compile", "cuda_graphs", "device", "progress", "loss_backend",
                               "cache_dir"})


@dataclass
class RunPlan:
    """What a train/distill command does with ``--out``: ``remove`` (artefacts of a run being
    replaced), or ``state``/``record`` (the checkpoint and ``run.json`` it resumes)."""

    out: Path
    remove: list[str] = field(default_factory=list)
    state: dict | None = None
    record: dict | None = None

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Check ``--out`` against ``--resume``/``--overwrite`` and read the resume state; writes
    nothing. An ``--out`` that holds a run is refused unless one of the two is given."""
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out and --overwrite replaces it; "
                       "pass only one of them")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    found = [name for name in RUN_MARKERS if (out / name).exists()]
    plan = RunPlan(out)
    present = [name for name in RUN_ARTEFACTS if (out / name).exists()]
    if args.overwrite:
        plan.remove = present
        return plan
    if not args.resume:
        if found:
            raise CLIError(f"--out {out} already holds a run ({', '.join(found)}); pass "
                           "--resume to continue it or --overwrite to replace it")
        return plan
    if not plan.checkpoint.is_file():
        if (out / "model.pt").exists():
            raise CLIError(f"--resume: {out} holds a finished model.pt but no checkpoint "
                           f"{plan.checkpoint} to continue; pass --overwrite to train again")
        print(f"--resume: no checkpoint {plan.checkpoint} yet; starting a fresh run",
              flush=True)
        plan.remove = present
        return plan
    try:
        state = torch.load(plan.checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors: not a usable checkpoint
        raise CLIError(f"--resume: {plan.checkpoint} is not a readable training checkpoint "
                       f"({type(error).__name__}); pass --overwrite to start again") from None
    if not isinstance(state, dict) or not isinstance(state.get(args_model_key(args)), dict):
        raise CLIError(f"--resume: {plan.checkpoint} is not a kdcore training checkpoint")
    plan.state = state
    record_path = out / "run.json"
    if record_path.is_file():
        try:
            plan.record = json.loads(record_path.read_text())
        except (OSError, ValueError) as error:
            raise CLIError(f"--resume: {record_path} is not readable JSON ({error})") from None
    return plan


def args_model_key(args: argparse.Namespace) -> str:
    """The checkpoint key of the trained weights: ``"model"`` (train), ``"student"``
    (distill)."""
    return "model" if args.command == "train" else "student"


def _shown(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def check_resume(plan: RunPlan, args: argparse.Namespace, model: nn.Module,
                 distiller) -> None:
    """A resume must keep every setting that defines the model, data or objective: refuse
    with one line naming each differing key and both values (the original run's from its
    ``run.json`` and checkpoint, and this command's)."""
    if plan.state is None:
        return
    differ: dict[str, tuple[object, object]] = {}
    if plan.record is not None:
        original, current = plan.record.get("config", {}), _run_config(args)
        for key in sorted(set(original) & set(current) - RESUME_MAY_DIFFER):
            if original[key] != current[key]:
                differ[key] = (original[key], current[key])
    stored = plan.state.get("config", {})
    for key, value in sorted(distiller.loop.config_dict().items()):
        if (key not in ENGINE_MAY_DIFFER and key not in differ and key in stored
                and _jsonable(stored[key]) != _jsonable(value)):
            differ[key] = (stored[key], value)
    if differ:
        listed = "; ".join(f"{key}: {_shown(was)} in the run, {_shown(now)} now"
                           for key, (was, now) in differ.items())
        raise CLIError(f"--resume: {plan.out} was started with other settings ({listed}); "
                       "resume with the original values, or pass --overwrite or another "
                       "--out for a new run")
    weights, expected = plan.state[args_model_key(args)], model.state_dict()
    wrong = [key for key in expected if key not in weights
             or tuple(weights[key].shape) != tuple(expected[key].shape)]
    wrong += [key for key in weights if key not in expected]
    if wrong:
        key = wrong[0]
        have = tuple(weights[key].shape) if key in weights else "absent"
        want = tuple(expected[key].shape) if key in expected else "absent"
        raise CLIError(f"--resume: the checkpoint {plan.checkpoint} holds weights of another "
                       f"model ({len(wrong)} tensors differ, first {key}: {have} in the "
                       f"checkpoint, {want} now); resume with the original --model, --width "
                       "and --model-arg")
    fingerprint = getattr(distiller, "teacher_fingerprint", None)
    if plan.state.get("teacher_fingerprint") != fingerprint:
        raise CLIError(f"--resume: {plan.out} was trained with another teacher (fingerprint "
                       f"{str(plan.state.get('teacher_fingerprint'))[:12]}, this teacher "
                       f"{str(fingerprint)[:12]}); resume with the original "
                       "--teacher")


def start_run(plan: RunPlan, command: str, args: argparse.Namespace, data: Data) -> None:
    """The first writes to ``--out``, after every check: remove a replaced run's artefacts,
    write ``run.json`` (or append this resume to it) and ``skipped.txt``."""
    out = plan.out
    for name in plan.remove:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if plan.remove and args.overwrite:
        print(f"--overwrite: replaced the run in {out}", flush=True)
    device = _device(args)
    if plan.state is not None and plan.record is not None:
        append_resume_record(out, args, device, plan.record)
    else:
        write_run_record(out, command, args, device)
    write_skipped(out, data.skipped)


def write_skipped(out: Path, skipped: list) -> None:
    """``out/skipped.txt``: one ``where<TAB>reason`` line per entry ``--skip-bad`` left out
    (named here once)."""
    if not skipped:
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / "skipped.txt"
    path.write_text("".join(f"{entry.where}\t{entry.reason}\n" for entry in skipped))
    print(f"--skip-bad: skipped {len(skipped)} bad entries, listed in {path}", flush=True)


def run_training(plan: RunPlan, distiller, data: Data, args: argparse.Namespace,
                 before=None) -> None:
    """``before()`` (e.g. the view cache fill), then :func:`_fit`; a fresh run that fails
    before its first checkpoint leaves no record."""
    created = [plan.out / name for name in ("run.json", "metrics.jsonl", "skipped.txt")]
    try:
        if before is not None:
            before()
        _fit(distiller, data, args, plan.out)
    except BaseException:
        if plan.state is None and not plan.checkpoint.exists():
            for path in created:
                path.unlink(missing_ok=True)
        raise


def _final_weights(engine, model: nn.Module) -> None:
    """With ``--ema``, load the EMA weights into ``model``: they are what is saved and
    evaluated."""
    ema = getattr(engine.loop, "ema", None)
    if ema is not None:
        model.load_state_dict(getattr(ema, "student", ema).state_dict())


def _save_best(engine, model: nn.Module, data: Data, args: argparse.Namespace, out: Path,
               meta: dict) -> Path | None:
    """``OUT/best.pt``: a model checkpoint (like ``model.pt``) of the engine's
    ``checkpoints/best.pt`` (the best epoch by ``--best-metric``; the EMA weights with
    ``--ema``), or None when no epoch was validated."""
    import copy

    from kdcore.checkpoints import save_model_checkpoint

    best = out / "checkpoints" / "best.pt"
    if not best.is_file():
        return None
    state = torch.load(best, map_location="cpu", weights_only=True)
    best_model = copy.deepcopy(model).cpu()
    best_model.load_state_dict(state[args_model_key(args)])
    info = {"best_epoch": state.get("epoch"), "best_metric": state.get("metric"),
            "best_value": state.get("value"), "ema": bool(state.get("ema"))}
    path = save_model_checkpoint(out / "best.pt", best_model, class_names=data.class_names,
                                 frontend=frontend_config(args), clip_samples=clip_samples(args),
                                 meta={**meta, **info})
    print(f"saved the best epoch ({info['best_epoch']}, {info['best_metric']} "
          f"{info['best_value']:.4g}) as {path}")
    return path


def _finish_training(engine, model: nn.Module, data: Data, args: argparse.Namespace,
                     out: Path, kind: str, meta: dict) -> None:
    from kdcore.checkpoints import build_frontend, save_model_checkpoint

    _final_weights(engine, model)
    meta = {**meta, "ema": args.ema, "task": args.task, "distance": args.distance}
    path = save_model_checkpoint(out / "model.pt", model, class_names=data.class_names,
                                 frontend=frontend_config(args), clip_samples=clip_samples(args),
                                 meta=meta)
    print(f"saved {kind} checkpoint {path}{' (EMA weights)' if args.ema else ''}")
    _save_best(engine, model, data, args, out, meta)
    frontend = (model_frontend(args, augment=False) if args.model_arg is not None
                and getattr(args, "model", None) == "hf" else
                build_frontend(frontend_config(args), args.backend))
    if args.task == "multilabel":
        tagging_report(frontend, model,
                       data.evaluation, data.class_names, args.batch_size, _device(args), out,
                       data.evaluation_split,
                       f"{model.model_name}: per-class AP, {data.evaluation_split} split")
        return
    if data.collate is not None:
        from kdcore.eval.tasks import task_report

        task_report(engine, _loader(data.evaluation, args.batch_size, False, data.collate),
                    task=args.task, split=data.evaluation_split, out=out)
        return
    labels, predictions = predict(frontend, model, data.evaluation, args.batch_size,
                                  _device(args),
                                  not args.no_progress)
    write_report(labels, predictions, data.class_names, out,
                 f"{model.model_name}: {data.evaluation_split} split")


def _check_model_name(name: str) -> None:
    from kdcore.models import available_models

    if name not in available_models():
        raise CLIError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name, None) is None:
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{args.command} needs {flag} (on the command line or as key "
                           f"{name!r} in --config)")


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------


def command_demo(args: argparse.Namespace) -> int:
    """``--task vad`` (default): Silero VAD distilled on the FSDD subset shipped with kdcore
    (:mod:`kdcore.demo_vad`); ``--task synthetic-kd``: teacher, student alone and student
    with KD on SyntheticAudio (:mod:`kdcore.demo`)."""
    if args.task == "synthetic-kd":
        import contextlib
        import dataclasses
        import io

        from kdcore.demo import FULL, QUICK, run_demo

        clear_out(Path(args.out), DEMO_MARKERS, args.overwrite)
        config = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
        silence = (contextlib.redirect_stdout(io.StringIO()) if args.quiet
                   else contextlib.nullcontext())
        with silence:
            run_demo(out_dir=args.out, config=config,
                     progress=not (args.no_progress or args.quiet))
        return 0
    from kdcore.demo_vad import run_vad_demo

    clear_out(Path(args.out), DEMO_MARKERS, args.overwrite)
    try:
        run_vad_demo(args.out, quick=args.quick, quiet=args.quiet, seed=args.seed,
                     progress=not args.no_progress)
    except ImportError as error:  # silero-vad or matplotlib missing: the message says what to
        raise CLIError(str(error)) from None  # install
    return 0


def command_train(args: argparse.Namespace) -> int:
    _require(args, "data", "model", "out")
    if _paired_data(args):  # --model mask_student --task regression on noisy,clean pairs
        return command_train_mask_student(args, teacher=None)
    _check_model_name(args.model)
    _device(args)
    check_training_args(args)
    check_frontend(args)
    plan = plan_run(args)
    data = load_data(args)
    print(data.summary, flush=True)
    seed_run(args)
    model = build_model(args.model, len(data.class_names), args)
    bind_task_data(data, model, args, args.model)
    trainer = make_trainer(model, args, augment=not args.no_augment, classes=data.class_names)
    check_resume(plan, args, model, trainer)
    start_run(plan, "train", args, data)
    print(f"{args.model}: {model.num_parameters():,} parameters", flush=True)
    run_training(plan, trainer, data, args)
    _finish_training(trainer, model, data, args, plan.out, "model", {"command": "train"})
    return 0


def teacher_paths(args: argparse.Namespace) -> list[str]:
    """``--teacher`` as a list: one checkpoint, or several for an ensemble teacher (a YAML
    string or list in ``--config``); each must exist."""
    paths = args.teacher if isinstance(args.teacher, (list, tuple)) else [args.teacher]
    paths = [str(path) for path in paths]
    if not paths:
        raise CLIError("--teacher needs at least one checkpoint")
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"teacher checkpoint does not exist: {path}")
    return paths


def _load_teacher(paths: list[str], args: argparse.Namespace,
                  data_classes: list[str] | None):
    """The ``--teacher`` checkpoint (``paths``, from :func:`teacher_paths`); with several,
    one whose ``model`` is a :class:`kdcore.models.TeacherEnsemble` (mean of the members'
    logits). The members must share class names, frontend and clip length. ``args``' frontend
    follows the teacher's."""
    import dataclasses

    from kdcore.checkpoints import load_model_checkpoint
    from kdcore.models import TeacherEnsemble

    teachers = [load_model_checkpoint(path) for path in paths]
    for path, teacher in zip(paths, teachers, strict=True):
        if data_classes is not None and teacher.class_names != data_classes:
            raise CLIError(f"teacher {path} was trained on classes "
                           f"{teacher.class_names[:6]}"
                           f"{'...' if teacher.num_classes > 6 else ''} "
                           f"but --data has {data_classes[:6]}"
                           f"{'...' if len(data_classes) > 6 else ''}")
        if (teacher.frontend, teacher.clip_samples) != (teachers[0].frontend,
                                                        teachers[0].clip_samples):
            raise CLIError(f"--teacher: {path} uses frontend {teacher.frontend} and "
                           f"{teacher.clip_samples}-sample clips, {paths[0]} "
                           f"{teachers[0].frontend} and {teachers[0].clip_samples}; the "
                           "members of an ensemble must share them")
    teacher = teachers[0]
    if len(teachers) > 1:
        teacher = dataclasses.replace(
            teacher, model=TeacherEnsemble([member.model for member in teachers]).eval(),
            model_name="ensemble of " + ", ".join(member.model_name for member in teachers),
            model_kwargs={}, meta={"members": paths})
    if teacher.frontend != frontend_config(args) or teacher.clip_samples != clip_samples(args):
        print(f"note: using the teacher's frontend {teacher.frontend} and clip length "
              f"{teacher.clip_samples} samples")
        args.sample_rate, args.n_fft = teacher.frontend["sample_rate"], teacher.frontend["n_fft"]
        args.hop_length, args.n_mels = teacher.frontend["hop_length"], teacher.frontend["n_mels"]
        args.clip_seconds = teacher.clip_samples / args.sample_rate
    return teacher


def parse_feature_pairs(pairs: list[str] | None) -> list[tuple[str, str]]:
    parsed = []
    for pair in pairs or []:
        student, sep, teacher = str(pair).partition(":")
        if not sep or not student or not teacher:
            raise CLIError(f"--feature-pair must be STUDENT_MODULE:TEACHER_MODULE (e.g. "
                           f"blocks.2:blocks.3), got {pair!r}")
        parsed.append((student, teacher))
    return parsed


def _check_cache_dir(cache_dir: Path, args: argparse.Namespace) -> None:
    record = cache_dir / "cli_data.json"
    if not record.exists():
        return
    stored = json.loads(record.read_text())
    if stored != _jsonable(_data_key(args)):
        raise CLIError(f"the teacher cache in {cache_dir} was built for other data settings "
                       f"({stored}); rerun cache-teacher with the same --data, --seed and split "
                       "flags")


def _data_classes(args: argparse.Namespace) -> list[str] | None:
    """The classes of ``--data`` read without decoding audio; None for a sequence task,
    whose data is then read with the teacher's classes (and checked against them)."""
    if args.task in _sequence_tasks():
        return None
    return list(data_source(args, check_audio=False).classes)


# ------------------------------------------------------------------------------------------
# Per-frame registered teachers (CREPE pitch; other frame teachers plug in a branch here)
# ------------------------------------------------------------------------------------------


def registered_frame_teacher(values: object) -> str | None:
    """The name when ``--teacher`` is one registered per-frame teacher (task
    ``frame_multilabel``: ``crepe-full``, ``crepe-tiny``, ``silero-vad``), else None."""
    from kdcore import teachers

    if not is_registered_teacher(values):
        return None
    name = str(values[0] if isinstance(values, (list, tuple)) else values)
    if name.startswith("hf:"):
        return None
    return name if teachers.spec(name).task == "frame_multilabel" else None


def given_flags(args: argparse.Namespace) -> set[str]:
    """The destinations (``"lr"``, ``"task"``) set on this command's line or in its
    ``--config`` file, as opposed to left at their defaults."""
    import yaml

    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    for action in subparser._actions:  # noqa: SLF001
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(list(getattr(args, "argv", []) or []))))
    given -= {"command", "handler"}
    if getattr(args, "config", None) is not None:
        values = yaml.safe_load(Path(args.config).read_text()) or {}
        given |= {str(key).lstrip("-").replace("-", "_") for key in values}
    return given


def refuse_flags(args: argparse.Namespace, allowed: set[str], what: str) -> set[str]:
    """A :class:`CLIError` naming every flag given (:func:`given_flags`) outside ``allowed``,
    which do not apply to ``what``; returns the given flags."""
    given = given_flags(args)
    extra = sorted(given - allowed - {"config"})
    if extra:
        listed = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise CLIError(f"{listed} {'does' if len(extra) == 1 else 'do'} not apply to {what}")
    return given


def audio_folder(args: argparse.Namespace) -> tuple[list[Path], list]:
    """The audio files of ``--data`` (a folder searched recursively, or a CSV with a
    ``path`` column), unlabelled, and the entries ``--skip-bad`` left out."""
    from kdcore.data import unlabelled_files

    if str(args.data) == SYNTHETIC:
        raise CLIError("--data synthetic has no pitch; give a folder of audio files (any "
                       "sample rate, no labels)")
    try:
        return unlabelled_files(args.data, skip_bad=args.skip_bad, decode=True)
    except FileNotFoundError:
        raise CLIError(f"--data {args.data} does not exist") from None
    except ValueError as error:  # no audio found, or a bad file or row (named)
        raise CLIError(f"--data {args.data}: {error}") from None


PITCH_DISTILL_FLAGS = {
    "data", "out", "teacher", "student", "task", "epochs", "batch_size", "lr", "seed",
    "device", "no_progress", "resume", "overwrite", "temperature", "hop_length", "backend",
    "optimizer", "weight_decay", "schedule", "grad_accum", "precision", "compile",
    "clip_grad_norm", "ema", "deterministic", "teacher_mode", "skip_bad", "model_arg",
    "alpha"}


def distill_registered_frame_teacher(args: argparse.Namespace, name: str) -> int:
    """``kdcore distill --teacher NAME`` for a registered per-frame teacher: CREPE
    (``crepe-full``, ``crepe-tiny``) runs :func:`distill_pitch_run`. Another frame teacher
    without a command-line path yet is refused, pointing to the Python API."""
    from kdcore import teachers

    if teachers.spec(name).module == "crepe":
        return distill_pitch_run(args, name)
    raise CLIError(f"--teacher {name} is a frame_multilabel teacher with no command-line "
                   f"path yet; use kdcore.teachers.load({name!r}) with kdcore.Distiller("
                   "bundle.model, student, task='frame_multilabel', teacher_frontend="
                   "bundle.frontend) from Python")


def distill_pitch_run(args: argparse.Namespace, name: str) -> int:
    """``kdcore distill --teacher crepe-full --data DIR --out OUT``: the unlabelled clips of
    ``DIR`` (any rate, resampled to 16 kHz), cut into CREPE frames every ``--hop-length``
    samples, distilled with :func:`kdcore.pitch.prepare_pitch_distillation` (task
    frame_multilabel over 360 bins, teacher cached) under the run-folder rules of
    ``train``/``distill``; writes ``OUT/student.pt`` and ``OUT/report.json`` (parameters, MACs
    and speed of the student against the teacher's)."""
    import math

    from kdcore import pitch, teachers
    from kdcore.models import available_models
    from kdcore.models.pitch import CrepeLogits, PitchStudent

    _require(args, "data", "out")
    given = given_flags(args)
    task = teachers.spec(name).task
    if "task" in given and args.task != task:
        raise CLIError(f"--teacher {name} is a {task} teacher (360 pitch bins per frame) and "
                       f"--task is {args.task}; pass --task {task} or leave --task out")
    args.task = task
    student_name = args.student if "student" in given else "pitch_student"
    if student_name != "pitch_student":
        hint = ("" if student_name in available_models() else
                f" ({student_name!r} is not a model name either)")
        raise CLIError(f"--student {student_name}{hint}: a {task} CREPE teacher distils into "
                       "pitch_student (kdcore.models.PitchStudent, shaped with --model-arg, "
                       "e.g. widths=[32,16,16,16,32,32]); any other frame model: "
                       "kdcore.Distiller from Python (docs/pitch.md)")
    args.student = student_name
    refuse_flags(args, PITCH_DISTILL_FLAGS, f"--teacher {name} (a pitch teacher distilled frame "
                 "by frame from a folder of unlabelled audio, see docs/pitch.md)")
    if "teacher_mode" in given and args.teacher_mode != "cached":
        raise CLIError(f"--teacher-mode {args.teacher_mode}: a pitch teacher is always cached "
                       "(run once per training frame); leave --teacher-mode out")
    args.teacher_mode = "cached"
    if "alpha" in given and args.alpha != 1.0:
        raise CLIError(f"--alpha {args.alpha}: pitch distillation has no labels, so the KD "
                       "term is the whole loss (alpha 1); leave --alpha out")
    args.alpha = 1.0
    if "temperature" not in given:
        args.temperature = 1.0  # CREPE's own probabilities as the targets
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise CLIError(f"--temperature must be a positive number, got {args.temperature}")
    if args.hop_length < 1:
        raise CLIError(f"--hop-length must be a positive number of samples, got "
                       f"{args.hop_length}")
    if args.epochs < 1:
        raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = _device(args)
    loop = loop_config(args)
    plan = plan_run(args)
    if plan.remove and (plan.out / pitch.STUDENT_FILE).exists():
        plan.remove.append(pitch.STUDENT_FILE)
    files, skipped = audio_folder(args)
    bundle = teachers.load(name)
    seed_run(args)
    try:
        student = PitchStudent(**parse_model_args(args.model_arg))
    except (TypeError, ValueError) as error:
        raise CLIError(f"--model-arg: {error}") from None
    options = {k: v for k, v in loop.to_dict().items() if k != "lr"}
    run = pitch.prepare_pitch_distillation(
        bundle, files, student=student, hop=args.hop_length, batch_size=args.batch_size,
        lr=loop.lr, temperature=args.temperature, loss_backend=args.backend, **options)
    summary = (f"{len(files)} clips from {args.data} (unlabelled, resampled to 16 kHz): "
               f"{run.frames.shape[0]} training frames of 1024 samples every "
               f"{args.hop_length} samples")
    data = Data([], None, None, "", summary, skipped=list(skipped))
    check_resume(plan, args, student, run.distiller)
    start_run(plan, "distill", args, data)
    print(summary, flush=True)
    print(f"teacher {name}: {bundle.num_parameters:,} parameters; student pitch_student: "
          f"{student.num_parameters():,} parameters; teacher cached in "
          f"{plan.out / 'teacher_cache'}", flush=True)
    created = [plan.out / n for n in ("run.json", "metrics.jsonl", "skipped.txt")]
    try:
        history = run.fit(args.epochs, plan.out, resume=args.resume)
    except BaseException as error:
        if plan.state is None and not plan.checkpoint.exists():
            for path in created:
                path.unlink(missing_ok=True)
        if isinstance(error, ValueError) and args.resume and str(error).startswith("epochs="):
            raise CLIError(f"--resume with --epochs {args.epochs}: {error}") from None
        raise
    last = history.epochs[-1] if history.epochs else {}
    print(f"last epoch: { {k: round(v, 4) for k, v in last.items() if isinstance(v, float)} }")
    path = run.save(plan.out)
    cost = pitch.compare_cost(CrepeLogits(bundle.model), run.student, device=device)
    teacher_row, student_row = cost["teacher"], cost["student"]
    print(f"saved student {path}")
    for role, label, row in (("teacher", name, teacher_row),
                             ("student", "pitch_student", student_row)):
        print(f"{role} {label}: {row['parameters']:,} parameters, "
              f"{row['macs_per_frame'] / 1e6:,.1f} M MACs/frame, "
              f"{row['frames_per_s']:,.0f} frames/s on {device}")
    print(f"student / teacher: {cost['parameter_ratio']:.2%} of the parameters, "
          f"{cost['mac_ratio']:.2%} of the MACs, {cost['speedup']:.1f}x the speed")
    report = {"command": "distill", "teacher": name, "student": "pitch_student",
              "student_config": student.config(), "data": str(args.data),
              "clips": len(files), "training_frames": int(run.frames.shape[0]),
              "hop": args.hop_length, "epochs": args.epochs, "cost": cost,
              "last_epoch": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
    _write_json_atomic(plan.out / "report.json", report)
    print(f"wrote {plan.out / 'report.json'}; score it with `kdcore eval --model {path} "
          "--data DIR`")
    return 0


PITCH_EVAL_FLAGS = {"model", "data", "out", "against", "device", "batch_size", "no_progress",
                    "skip_bad"}


def wants_pitch_eval(args: argparse.Namespace) -> bool:
    """``kdcore eval`` scores pitch when ``--against`` is given, ``--model`` names a
    registered CREPE model, or ``--model`` is a pitch ``student.pt``."""
    from kdcore import pitch, teachers

    if getattr(args, "against", None) is not None:
        return True
    model = str(args.model)
    if model in teachers.names() and not Path(model).is_file():
        return teachers.spec(model).module == "crepe"
    return Path(model).is_file() and pitch.read_student(model) is not None


def pitch_source(name: str, flag: str, device: torch.device):
    """The CREPE bundle registered as ``name`` for ``flag``, on ``device``; a
    :class:`CLIError` naming ``flag`` for an unknown or non-pitch name."""
    from kdcore import teachers

    crepe = [n for n in teachers.names() if teachers.spec(n).module == "crepe"]
    if name not in teachers.names():
        raise CLIError(f"{flag} {name}: unknown pitch model; registered CREPE models: "
                       f"{', '.join(crepe)}")
    if name not in crepe:
        raise CLIError(f"{flag} {name} is a {teachers.spec(name).task} model, not a pitch "
                       f"model; pitch references: {', '.join(crepe)}")
    return teachers.load(name).to(device)


def eval_pitch_run(args: argparse.Namespace) -> int:
    """``kdcore eval --model student.pt|crepe-tiny --data DIR [--against NAME]``: pitch of
    the model against the teacher recorded in the student file or the reference model
    ``--against`` names, on every frame of every clip of ``DIR`` (whole clips; the hop recorded
    in the student file, else 160 = 10 ms) with :func:`kdcore.eval.pitch.evaluate_pitch`;
    ``report.json`` and ``report.md`` in ``--out``."""
    from kdcore import pitch, teachers
    from kdcore.eval.pitch import evaluate_pitch

    _require(args, "data", "model")
    refuse_flags(args, PITCH_EVAL_FLAGS, "pitch evaluation (every frame of every clip in "
                 "--data is scored)")
    device = _device(args)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    model_path = Path(str(args.model))
    if model_path.is_file():
        try:
            model, info = pitch.load_student(model_path)
        except ValueError as error:
            raise CLIError(f"--against compares pitch models: {error}") from None
        model.to(device)
        hop, recorded = int(info["hop"]), str(info["teacher"])
    else:
        if str(args.model) not in teachers.names():
            raise FileNotFoundError(f"--model {args.model}: no such file or registered "
                                    "pitch model")
        model = pitch_source(str(args.model), "--model", device)
        hop, recorded = 160, None
    against = args.against if args.against is not None else recorded
    if against is None:
        raise CLIError(f"--model {args.model} is a registered model with no recorded "
                       "teacher; name the reference with --against (e.g. --against "
                       "crepe-full)")
    reference = pitch_source(str(against), "--against" if args.against else
                             f"the teacher recorded in {args.model}", device)
    files, skipped = audio_folder(args)
    out = Path(args.out) if args.out is not None else (
        model_path.parent / "eval" if model_path.is_file() else Path(f"eval-{args.model}"))
    _refuse_training_run(out)
    write_run_record(out, "eval", args, device)
    write_skipped(out, skipped)
    print(f"scoring {args.model} against {against} on {len(files)} clips from {args.data} "
          f"(every {hop} samples at 16 kHz)", flush=True)
    scores = evaluate_pitch(model, reference, files, hop=hop, batch_size=args.batch_size)
    report = {"model": str(args.model), "reference": str(against),
              "reference_from": "--against" if args.against else "the student's teacher",
              "data": str(args.data), "clips": len(files), "scores": scores}
    json_path, md_path = pitch.write_pitch_report(report, out)
    print(md_path.read_text().split("\n", 2)[2].strip())
    print(f"wrote {json_path} and {md_path}")
    return 0


def command_distill(args: argparse.Namespace) -> int:
    if _is_vad_teacher(args.teacher):
        return command_distill_vad(args)
    name = registered_frame_teacher(args.teacher)
    if name is not None:
        return distill_registered_frame_teacher(args, name)
    _require(args, "data", "teacher", "student", "out")
    if _paired_data(args):  # --teacher nsnet2 --student mask_student on noisy,clean pairs
        return command_train_mask_student(args, teacher=args.teacher)
    from kdcore.data import SyntheticAudio

    _check_model_name(args.student)
    _device(args)
    check_training_args(args)
    plan = plan_run(args)
    registered = is_registered_teacher(args.teacher)
    paths = ([str(args.teacher[0] if isinstance(args.teacher, (list, tuple)) else args.teacher)]
             if registered else teacher_paths(args))  # a missing checkpoint fails fast
    classes = (list(SyntheticAudio.classes) if str(args.data) == SYNTHETIC
               else _data_classes(args))
    teacher_frontend = None
    if registered:
        bundle, teacher_frontend = registered_teacher(paths[0], args, classes)
        teacher = argparse.Namespace(model=bundle.model, model_name=bundle.name)
    else:
        teacher = _load_teacher(paths, args, classes)
    check_frontend(args)
    if (args.recipe == "function_matching" and args.task not in ("multiclass", "multilabel")
            and "recipe" not in given_flags(args)):
        args.recipe = "classic"  # the default recipe of the per-frame and sequence tasks
    matching = args.recipe == "function_matching"
    if args.teacher_mode is None:  # function matching caches a checkpoint teacher's views
        args.teacher_mode = ("cached" if matching and not registered
                             else _config_default(TeacherConfig, "teacher_mode"))
    cached = args.teacher_mode == "cached"
    data = load_data(args, deterministic_train=cached or matching, classes=classes or list(
        getattr(teacher, "class_names", [])) or None,
        per_frame=callable(getattr(teacher.model, "output_frames", None)))
    student_frontend = None
    if matching:
        data.train = view_set(data.train, args)
        student_frontend = view_student_frontend(args)
        if teacher_frontend is None:
            teacher_frontend = model_frontend(args, augment=False)
        data.summary += (f"; function matching on {args.views} mixup views per clip "
                         f"(teacher {args.teacher_mode})")
    print(data.summary, flush=True)
    pairs = parse_feature_pairs(args.feature_pair)
    weight = args.feature_weight if args.feature_weight is not None else (1.0 if pairs else 0.0)
    cache_dir = Path(args.cache_dir) if args.cache_dir is not None else None
    if cached and cache_dir is not None:
        _check_cache_dir(cache_dir, args)
    seed_run(args)
    student = build_model(args.student, len(data.class_names), args)
    bind_task_data(data, student, args, args.student,
                   teacher=None if registered else teacher.model)
    distiller = make_distiller(teacher.model, student, args, classes=data.class_names,
                               augment=not (args.no_augment or cached),
                               teacher_mode=args.teacher_mode, feature_pairs=pairs,
                               feature_weight=weight, cache_dir=cache_dir,
                               teacher_frontend=teacher_frontend,
                               student_frontend=student_frontend)
    check_resume(plan, args, student, distiller)
    start_run(plan, "distill", args, data)
    teacher_size = sum(p.numel() for p in teacher.model.parameters())
    print(f"teacher {teacher.model_name}: {teacher_size:,} parameters; "
          f"student {args.student}: {student.num_parameters():,} parameters", flush=True)
    before = None
    if matching and cached:  # the view cache: K teacher passes, resumable
        before = functools.partial(fill_views, teacher.model, data.train,
                                   cache_dir or plan.out / "teacher_cache", args,
                                   teacher_frontend, explicit=cache_dir is not None,
                                   pairs=pairs)
    run_training(plan, distiller, data, args, before)
    _finish_training(distiller, student, data, args, plan.out, "student",
                     {"command": "distill", "teacher": ", ".join(paths),
                      "temperature": args.temperature, "alpha": args.alpha,
                      "recipe": args.recipe})
    if args.task == "multiclass" and data.collate is None:
        _score_teacher(teacher.model, teacher_frontend, data, args, plan.out)
    return 0


def _score_teacher(teacher: nn.Module, teacher_frontend: nn.Module | None, data: Data,
                   args: argparse.Namespace, out: Path) -> None:
    """Score the teacher on the split the student was scored on; its accuracy and confusion
    matrix (rows: true class) go into ``report.json`` as ``extra.teacher_accuracy`` and
    ``extra.teacher_confusion``. A teacher no better than the student there
    gets a printed note: distillation has nothing to add on that split."""
    from kdcore.checkpoints import build_frontend
    from kdcore.eval import classification_report

    frontend = (teacher_frontend if teacher_frontend is not None
                else build_frontend(frontend_config(args), args.backend))
    labels, predictions = predict(frontend, teacher, data.evaluation, args.batch_size,
                                  _device(args), not args.no_progress)
    scored = classification_report(labels, predictions, data.class_names)
    teacher_accuracy = scored.accuracy
    path = out / "report.json"
    report = json.loads(path.read_text())
    report.setdefault("extra", {}).update(teacher_accuracy=teacher_accuracy,
                                          teacher_confusion=scored.confusion)
    _write_json_atomic(path, report)
    student_accuracy = report["accuracy"]
    print(f"teacher accuracy on the {data.evaluation_split} split: {100 * teacher_accuracy:.1f} % "
          f"(student {100 * student_accuracy:.1f} %); in {path} as extra.teacher_accuracy")
    if teacher_accuracy <= student_accuracy:
        print("note: the teacher scores no better than the student on this split, so "
              "distilling from it cannot be expected to help; a stronger teacher (more "
              "epochs, a wider model or an ensemble of checkpoints) can (docs/recipes.md)")


# -- voice activity: --teacher silero-vad (kdcore.vad) ------------------------------------

VAD_TEACHERS = ("silero-vad",)
VAD_MODEL_ARGS = ("n_mels", "width", "depth", "kernel")


def _is_vad_teacher(teacher: object) -> bool:
    names = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    return len(names) == 1 and str(names[0]) in VAD_TEACHERS


def _vad_clips(args: argparse.Namespace) -> tuple[list, list]:
    """The audio files under ``--data`` (a folder, recursively, or a CSV with a ``path``
    column; labels ignored) read as 16 kHz waveforms, and the entries ``--skip-bad`` left
    out."""
    from kdcore.data import unlabelled_files
    from kdcore.eval.pitch import load_clips

    files, skipped = unlabelled_files(args.data, skip_bad=args.skip_bad)
    return load_clips(files), skipped


def command_distill_vad(args: argparse.Namespace) -> int:
    """``distill --teacher silero-vad``: :func:`kdcore.vad.distill_vad` on the unlabelled
    audio under ``--data`` (any rate, resampled to 16 kHz), with the run-folder rules of
    ``distill`` (refuse, ``--resume``, ``--overwrite``, ``run.json``) and ``--seed``.
    ``--width`` and ``--model-arg`` n_mels/width/depth/kernel size the student; ``--backend
    auto`` means the reference ops for this small student. Writes ``student.pt``,
    ``report.json`` (parameters, MACs and speed against the teacher) and the engine's files."""
    from kdcore import teachers, vad
    from kdcore.vad import VadStudent, compare_costs, cost_table, distill_vad

    _require(args, "data", "out")
    if args.student not in (None, VadStudent.model_name):
        raise CLIError(f"--teacher {args.teacher[0]} distils kdcore's VAD student "
                       f"({VadStudent.model_name}); leave out --student (got {args.student!r})")
    device = _device(args)
    check_training_args(args)
    kwargs = parse_model_args(args.model_arg)
    if args.width is not None:
        kwargs["width"] = args.width
    unknown = sorted(set(kwargs) - set(VAD_MODEL_ARGS))
    if unknown:
        raise CLIError(f"--model-arg {unknown[0]}: the VAD student takes "
                       f"{', '.join(VAD_MODEL_ARGS)}")
    plan = plan_run(args)
    clips, skipped = _vad_clips(args)
    bundle = teachers.load(args.teacher[0])
    seed_run(args)
    backend = "reference" if args.backend == "auto" else args.backend
    try:
        student = VadStudent(backend=backend, **kwargs)
    except (TypeError, ValueError) as error:
        raise CLIError(f"--model-arg: {error}") from None
    stand_in = argparse.Namespace(loop=argparse.Namespace(config_dict=dict),
                                  teacher_fingerprint=vad.teacher_fingerprint(bundle))
    check_resume(plan, args, student.net, stand_in)
    start_run(plan, "distill", args, argparse.Namespace(skipped=skipped))
    seconds = sum(clip.numel() for clip in clips) / vad.RATE
    print(f"{len(clips)} clips ({seconds:.0f} s) from {args.data}; teacher {bundle.name}: "
          f"{bundle.num_parameters:,} parameters; student {VadStudent.model_name}: "
          f"{student.num_parameters():,} parameters", flush=True)
    created = [plan.out / name for name in ("run.json", "metrics.jsonl", "skipped.txt")]
    try:
        student, history = distill_vad(
            bundle, clips, plan.out, student=student, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, backend=backend,
            progress=not args.no_progress, resume=plan.state is not None,
            device=str(device), optimizer=args.optimizer, weight_decay=args.weight_decay,
            schedule=args.schedule, grad_accum=args.grad_accum, precision=args.precision,
            clip_grad_norm=args.clip_grad_norm)
    except BaseException:
        if plan.state is None and not plan.checkpoint.exists():
            for path in created:
                path.unlink(missing_ok=True)
        raise
    audio = torch.cat(clips)[None]
    if audio.shape[-1] < vad.RATE:
        audio = nn.functional.pad(audio, (0, vad.RATE - audio.shape[-1]))
    costs = compare_costs(student, bundle, audio[:, :60 * vad.RATE])
    report = {"command": "distill", "teacher": bundle.name, "costs": costs,
              "history": history.epochs, "clips": len(clips), "seconds_of_audio": seconds}
    _write_json_atomic(plan.out / "report.json", _jsonable(report))
    print(cost_table(costs))
    print(f"student {costs['compression']:.0f}x smaller than the teacher; saved "
          f"{plan.out / 'student.pt'} (score it: kdcore eval --model {plan.out / 'student.pt'} "
          "--data DIR)")
    return 0


def command_eval_vad(args: argparse.Namespace) -> int:
    """``eval --model student.pt`` of a VAD student: frame F1 and agreement against the
    teacher (Silero VAD streamed over each whole clip) on every audio file under ``--data``,
    with the trivial all-speech and all-silence predictors; ``report.json`` in ``--out``."""
    from kdcore.vad import evaluate_vad, load_vad_student

    device = _device(args)
    backend = "reference" if args.backend == "auto" else args.backend
    student = load_vad_student(args.model, backend=backend)
    out = Path(args.out) if args.out is not None else Path(args.model).parent / "eval"
    _refuse_training_run(out)
    clips, skipped = _vad_clips(args)
    write_run_record(out, "eval", args, device)
    write_skipped(out, skipped)
    state = torch.load(args.model, map_location="cpu", weights_only=True)
    scores = evaluate_vad(student, clips, teacher=state.get("teacher") or VAD_TEACHERS[0])
    _write_json_atomic(out / "report.json", _jsonable({"model": str(args.model),
                                                       "data": str(args.data), **scores}))
    lines = [f"{scores['clips']} clips, {scores['frames']} chunks of 32 ms "
             f"({scores['seconds']:.0f} s); decisions at p >= {scores['threshold']:g} against "
             f"the teacher {state.get('teacher')}",
             f"{'':<14}{'frame F1':>10}{'agreement':>11}"]
    for name in ("student", "all_speech", "all_silence"):
        row = scores[name]
        lines.append(f"{name.replace('_', '-'):<14}{row['f1']:>10.3f}{row['agreement']:>11.1%}")
    print("\n".join(lines))
    print(f"wrote {out / 'report.json'}")
    return 0


def _paired_data(args: argparse.Namespace) -> bool:
    """A train/distill of an enhancement mask student: ``mask_student`` named, or a paired
    noisy,clean manifest as ``--data``."""
    from kdcore.enhance import is_paired_data

    name = args.model if args.command == "train" else args.student
    return name == "mask_student" or is_paired_data(args.data, folders=False)


def command_train_mask_student(args: argparse.Namespace, teacher: object) -> int:
    """``train``/``distill`` on paired noisy,clean ``--data``: a ``mask_student`` (NSNet2's
    frontend, a causal GRU mask estimator) by :func:`kdcore.enhance.train_mask_student`, alone
    on ideal ratio masks (``train``) or from the ``nsnet2`` teacher with ``--alpha``
    (``distill``)."""
    from kdcore.enhance import train_mask_student

    name = args.model if args.command == "train" else args.student
    if name != "mask_student" or args.task != "regression":
        raise CLIError(f"paired noisy,clean --data {args.data} trains an enhancement mask "
                       f"student: pass {'--model' if args.command == 'train' else '--student'} "
                       "mask_student --task regression")
    if teacher is not None:
        teacher = teacher[0] if isinstance(teacher, (list, tuple)) and len(teacher) == 1 \
            else teacher
        if teacher != "nsnet2":
            raise CLIError(f"--teacher {teacher}: paired noisy,clean data is distilled from the "
                           "registered gain-mask teacher nsnet2 only")
    out = Path(args.out)
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out and --overwrite replaces it; "
                       "pass only one of them")
    done = [n for n in ("student.pt", "checkpoints") if (out / n).exists()]
    if done and not (args.overwrite or args.resume):
        raise CLIError(f"--out {out} already holds a run ({', '.join(done)}); pass --resume, "
                       "--overwrite or another --out")
    if args.overwrite:  # the teacher cache is keyed by teacher and data and stays
        for name in done:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    kwargs = parse_model_args(args.model_arg)
    unknown = set(kwargs) - {"hidden"}
    if unknown:
        raise CLIError(f"--model-arg {sorted(unknown)}: mask_student takes hidden=N only")
    device = _device(args)
    try:
        path = train_mask_student(
            args.data, out, teacher=teacher, alpha=getattr(args, "alpha", 1.0),
            hidden=int(kwargs.get("hidden", 128)), epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, seconds=args.clip_seconds,
            device=str(device), progress=not args.no_progress, resume=args.resume)
    except ValueError as error:  # a bad manifest, audio file or setting
        raise CLIError(str(error)) from error
    write_run_record(out, args.command, args, device)
    print(f"wrote {path}: evaluate it with `kdcore eval --model {path} --data PAIRS.csv`, "
          f"apply it with `kdcore enhance --model {path} IN.wav OUT.wav`")
    return 0


def view_set(train, args: argparse.Namespace):
    """The training split as a :class:`kdcore.engine.ViewSet` of ``--views`` deterministic
    mixup views per clip (the default :class:`ViewConfig` recipe, seeded by ``--seed``)."""
    from kdcore.engine.views import ViewSet

    if args.mixup:
        raise CLIError("--mixup is for --recipe classic; function matching mixes its views "
                       "already (each view is a mixup of two clips)")
    if args.task not in ("multiclass", "multilabel"):
        raise CLIError(f"--recipe function_matching is for clip labels (--task multiclass or "
                       f"multilabel), got --task {args.task}; pass --recipe classic")
    if args.views is None:
        args.views = min(_config_default(ViewConfig, "views"), args.epochs)
    config = _user_config(ViewConfig, recipe=args.recipe, views=args.views)
    return ViewSet(train, config, sample_rate=args.sample_rate, seed=args.seed)


def view_student_frontend(args: argparse.Namespace) -> nn.Module:
    """The student's frontend under function matching: log-mel, then SpecAugment (feature
    masks belong to the student and stay random) unless ``--no-augment``; the waveform
    augmentation is the view's, the one the teacher saw."""
    from kdcore.checkpoints import build_frontend
    from kdcore.data import SpecAugment

    log_mel = build_frontend(frontend_config(args), args.backend)
    if args.no_augment:
        return log_mel
    return nn.Sequential(log_mel, SpecAugment(freq_masks=2, freq_width=max(1, args.n_mels // 8),
                                              time_masks=2, time_width=8))


def fill_views(teacher: nn.Module, views, directory: Path, args: argparse.Namespace,
               frontend: nn.Module, *, explicit: bool,
               pairs: list[tuple[str, str]] | None = None) -> None:
    """Fill (or finish) the view cache in ``directory``: ``--views`` teacher passes."""
    from kdcore.engine.views import fill_view_cache

    started = time.perf_counter()
    fill_view_cache(teacher, views, directory, teacher_frontend=frontend, task=args.task,
                    device=_device(args), batch_size=args.batch_size,
                    storage=args.cache_storage, explicit=explicit,
                    progress=not args.no_progress,
                    feature_modules=[teacher_path for _, teacher_path in pairs or ()])
    print(f"teacher outputs on {views.num_views} views of {len(views)} clips in {directory} "
          f"({time.perf_counter() - started:.1f} s)", flush=True)


def _refuse_training_run(out: Path) -> None:
    """An eval's ``--out`` must not be a train/distill run folder (its report and run.json
    would be replaced)."""
    record = out / "run.json"
    if not record.is_file():
        return
    try:
        command = json.loads(record.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        command = None
    if command != "eval":
        raise CLIError(f"--out {out} holds a {command or 'kdcore'} run; evaluation would "
                       "replace its report.json and run.json: pick another --out")


def _sequence_tasks() -> tuple[str, ...]:
    from kdcore.data.tasks import SEQUENCE_TASKS

    return SEQUENCE_TASKS


def command_eval(args: argparse.Namespace) -> int:
    _require(args, "data", "model")
    from kdcore.vad import is_vad_student

    if is_vad_student(args.model):
        return command_eval_vad(args)
    if wants_pitch_eval(args):
        return eval_pitch_run(args)
    from kdcore import speaker

    if speaker.is_speaker_model(args.model):  # a kdcore.speaker student: EER and mean cosine
        return _speaker_eval(args)
    from kdcore.checkpoints import load_model_checkpoint
    from kdcore.enhance import is_enhancement_eval

    if is_enhancement_eval(args.model, args.data):  # paired noisy,clean data or a mask model
        return command_eval_enhancement(args)

    device = _device(args)
    checkpoint = load_model_checkpoint(args.model)
    args.sample_rate = checkpoint.sample_rate
    args.clip_seconds = checkpoint.clip_samples / checkpoint.sample_rate
    args.task = checkpoint.meta.get("task", "multiclass") if isinstance(
        checkpoint.meta, dict) else "multiclass"
    data = load_data(args, split=args.split, need_train=False,
                     classes=checkpoint.class_names if args.task in _sequence_tasks() else None)
    if data.class_names != checkpoint.class_names:
        raise CLIError(f"{args.model} was trained on {checkpoint.num_classes} classes "
                       f"{checkpoint.class_names[:6]} but --data has {len(data.class_names)} "
                       f"classes {data.class_names[:6]}")
    out = Path(args.out) if args.out is not None else Path(args.model).parent / "eval"
    _refuse_training_run(out)
    write_run_record(out, "eval", args, device)
    write_skipped(out, data.skipped)
    print(data.summary, flush=True)
    frontend = (hf_frontend(checkpoint.model_kwargs["path"], checkpoint.sample_rate)
                if checkpoint.model_name == "hf" else checkpoint.build_frontend(args.backend))
    if args.task == "multilabel":
        tagging_report(frontend, checkpoint.model,
                       data.evaluation, data.class_names, args.batch_size, device, out,
                       args.split, f"{checkpoint.model_name}: per-class AP, {args.split} split")
        return 0
    if args.task in _sequence_tasks():
        from kdcore import Trainer
        from kdcore.eval.tasks import task_report

        bind_task_data(data, checkpoint.model, args, checkpoint.model_name,
                       checkpoint.build_frontend("reference"))
        trainer = Trainer(checkpoint.model, task=args.task, frontend=frontend,
                          distance=checkpoint.meta.get("distance", "mse"),
                          metrics=task_metrics(args.task, checkpoint.class_names),
                          config=LoopConfig(device=str(device), progress=False))
        task_report(trainer, _loader(data.evaluation, args.batch_size, False, data.collate),
                    task=args.task, split=args.split, out=out)
        return 0
    labels, predictions = predict(frontend, checkpoint.model,
                                  data.evaluation, args.batch_size, device,
                                  not args.no_progress)
    write_report(labels, predictions, data.class_names, out,
                 f"{checkpoint.model_name}: {args.split} split")
    return 0


def command_eval_enhancement(args: argparse.Namespace) -> int:
    """``kdcore eval`` of a mask student file or the nsnet2 teacher on paired noisy,clean data:
    :func:`kdcore.enhance.evaluate_enhancement` (SI-SDRi, PESQ, STOI per SNR), report.json and
    report.md in ``--out``."""
    from kdcore.enhance import evaluate_enhancement

    model = Path(args.model)
    out = Path(args.out) if args.out is not None else (
        model.parent / "eval" if model.is_file() else Path(f"eval_{model.name}"))
    _refuse_training_run(out)
    teacher = args.teacher or "nsnet2"
    teacher = None if teacher.lower() == "none" else teacher
    try:
        report = evaluate_enhancement({str(args.model): str(args.model)}, args.data,
                                      teacher=teacher, out=out,
                                      split=None if args.split == "all" else args.split)
    except ValueError as error:  # a bad manifest, audio file or model file
        raise CLIError(str(error)) from error
    write_run_record(out, "eval", args, _device(args))
    print((out / "report.md").read_text(), flush=True)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'} ({report['clips']} clips)")
    return 0


def _speaker_eval(args: argparse.Namespace) -> int:
    from kdcore import speaker

    try:
        report = speaker.eval_command(args.model, args.data, split=args.split, out=args.out,
                                      batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as error:
        raise CLIError(str(error)) from error
    for name, row in (("student", report["student"]), ("teacher", report["teacher_scores"])):
        cosine = row.get("mean_cosine")
        print(f"{name}: EER {row['eer']:.4f} over {row['trials']} trials"
              + ("" if cosine is None else f", mean cosine to the teacher {cosine:.4f}"))
    return 0


CACHE_MARKERS = ("meta.json", "filled.u8", "run.json", "cli_data.json")
DEMO_MARKERS = ("results.json", "curves.png", "report.json", "student.pt")


def clear_out(out: Path, markers: tuple[str, ...], overwrite: bool) -> None:
    """Refuse an ``--out`` holding a finished demo (any of ``markers``) unless ``overwrite``,
    which empties it first."""
    for path in guard_out(out, markers, overwrite, "demo"):
        for name in os.listdir(path):
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def guard_out(out: Path, markers: tuple[str, ...], overwrite: bool, what: str) -> list[Path]:
    """Refuse an ``--out`` that holds a finished ``what`` (any of ``markers``) unless
    ``overwrite``; returns what ``--overwrite`` removes (written nothing yet)."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder")
    found = [name for name in markers if (out / name).exists()]
    if found and not overwrite:
        raise CLIError(f"--out {out} already holds a {what} ({', '.join(found)}); pass "
                       "--overwrite to replace it, or another --out")
    return [out] if found else []


def command_cache_teacher(args: argparse.Namespace) -> int:
    """Fill a teacher cache for ``distill --cache-dir DIR``: with ``--views K``, the
    teacher's outputs on K deterministic mixup views of every training clip
    (:func:`kdcore.engine.fill_view_cache`, function matching); without, on each item's
    clean view (centre crop, log-mel; :func:`kdcore.engine.fill_teacher_cache`, ``--recipe
    classic --teacher-mode cached``). Keyed as the distill run keys it."""
    _require(args, "data", "teacher", "out")
    from kdcore.data import SyntheticAudio, load_source
    from kdcore.engine import fill_teacher_cache

    out = Path(args.out)
    device = _device(args)
    check_task(args)
    remove = guard_out(out, CACHE_MARKERS, args.overwrite, "teacher cache")
    paths = teacher_paths(args)  # before the data loads: a missing checkpoint fails fast
    classes = (list(SyntheticAudio.classes) if str(args.data) == SYNTHETIC
               else load_source(args.data, skip_bad=args.skip_bad, check_audio=False,
                                allow_duplicates=args.allow_duplicates,
                                task=args.task).classes)
    teacher = _load_teacher(paths, args, classes)
    data = load_data(args, deterministic_train=True)
    print(data.summary, flush=True)
    for path in remove:
        shutil.rmtree(path)
        print(f"--overwrite: replaced the teacher cache in {out}", flush=True)
    write_skipped(out, data.skipped)
    frontend = model_frontend(args, augment=False)
    if args.views:  # function matching: K deterministic mixup views per clip
        args.recipe, args.mixup = "function_matching", 0.0
        views = view_set(data.train, args)
        fill_views(teacher.model, views, out, args, frontend, explicit=True)
        use = f"`kdcore distill --views {args.views} --cache-dir {out}` (same --seed)"
    else:
        loader = _loader(data.train, args.batch_size, shuffle=False)
        fill_teacher_cache(teacher.model, loader, out, teacher_frontend=frontend,
                           task=args.task, device=device)
        use = f"`kdcore distill --recipe classic --teacher-mode cached --cache-dir {out}`"
    (out / "cli_data.json").write_text(json.dumps(_jsonable(_data_key(args)), indent=1))
    write_run_record(out, "cache-teacher", args, device)
    print(f"cached teacher outputs of {len(data.train)} training items in {out}; use it with "
          f"{use}")
    return 0


def command_export(args: argparse.Namespace) -> int:
    _require(args, "model", "out")
    from kdcore.checkpoints import load_model_checkpoint
    from kdcore.export import export_model

    try:
        out = export_model(args.model, args.out, format=args.format)
    except (ImportError, FileNotFoundError) as error:
        raise CLIError(str(error)) from error
    checkpoint = load_model_checkpoint(args.model)
    print(f"wrote {out}: waveform (B, T) at {checkpoint.sample_rate} Hz -> logits "
          f"(B, {checkpoint.num_classes}), any T; checked against PyTorch")
    return 0


def command_enhance(args: argparse.Namespace) -> int:
    _require(args, "model")
    from kdcore.enhance import enhance_path

    output = Path(args.output)
    taken = output.is_file() or (output.is_dir() and any(output.iterdir()))
    if taken and not args.overwrite:
        raise CLIError(f"{output} already exists; pass --overwrite to replace it")
    try:
        written = enhance_path(args.model, args.input, args.output)
    except (ImportError, ValueError) as error:  # a missing package or a bad model/input file
        raise CLIError(str(error)) from error
    more = f" and {len(written) - 1} more" if len(written) > 1 else ""
    print(f"wrote {written[0]}{more}" if written else "no WAV files found")
    return 0


def command_data_digits(args: argparse.Namespace) -> int:
    """Write a connected-digit CTC set (:func:`kdcore.data.write_connected_digits_splits`)."""
    _require(args, "source", "out")
    from kdcore.data import write_connected_digits_splits

    out = Path(args.out)
    for path in guard_out(out, ("manifest.csv",), args.overwrite, "data set"):
        shutil.rmtree(path)
    held = [s.strip() for s in args.test_speakers.split(",")] if args.test_speakers else None
    try:
        manifest = write_connected_digits_splits(
            args.source, out, utterances={"train": args.train, "val": args.val,
                                          "test": args.test},
            test_speakers=held, digits=tuple(args.digits), sample_rate=args.sample_rate,
            seed=args.seed)
    except ValueError as error:
        raise CLIError(f"--source {args.source}: {error}") from None
    print(f"wrote {manifest}; train on it with `kdcore train --task ctc --data {manifest} "
          "--model ctc_conv ...`")
    return 0


def command_teachers(args: argparse.Namespace) -> int:
    from kdcore import teachers

    print(teachers.format_table(teachers.describe()))
    return 0


# ------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------


def _time_ms(function, repeats: int) -> float:
    """Median wall time of ``function()`` in ms after one warm-up (synchronising CUDA)."""
    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    function()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def _bench_cases(device: torch.device, quick: bool) -> list[tuple[str, object]]:
    """(label, make_step(backend) -> (step, output)) per op."""
    import kdcore

    rows, classes, width = (512, 527, 256) if quick else (4096, 527, 768)
    batch, seconds = (4, 2) if quick else (32, 10)
    generator = torch.Generator().manual_seed(0)
    teacher = (3 * torch.randn(rows, classes, generator=generator)).to(device)
    student0 = (3 * torch.randn(rows, classes, generator=generator)).to(device)
    labels = torch.randint(0, classes, (rows,), generator=generator).to(device)
    multi = (torch.rand(rows, classes, generator=generator) < 0.05).float().to(device)
    feats_t = torch.randn(rows, width, generator=generator).to(device)
    feats_s0 = torch.randn(rows, width, generator=generator).to(device)
    waves = (0.1 * torch.randn(batch, 16000 * seconds, generator=generator)).to(device)

    def loss_case(function, target, start, **kwargs):
        def make(backend):
            student = start.clone().requires_grad_()

            def step():
                student.grad = None
                loss = function(student, target, backend=backend, **kwargs)
                loss.backward()
                return student.grad
            return step
        return make

    def log_mel_case(backend):
        return lambda: kdcore.log_mel(waves, sample_rate=16000, n_fft=400, hop_length=160,
                                      n_mels=80, backend=backend)

    return [
        (f"kd_loss fwd+bwd ({rows}, {classes}) T=2 alpha=0.5",
         loss_case(kdcore.kd_loss, teacher, student0, temperature=2.0, labels=labels,
                   alpha=0.5)),
        (f"kd_bce_loss fwd+bwd ({rows}, {classes}) T=2 alpha=0.5",
         loss_case(kdcore.kd_bce_loss, teacher, student0, temperature=2.0, labels=multi,
                   alpha=0.5)),
        (f"feature_loss fwd+bwd ({rows}, {width}) mse",
         loss_case(kdcore.feature_loss, feats_t, feats_s0, kind="mse")),
        (f"log_mel fwd ({batch}, {16000 * seconds}) 16 kHz, 80 mels", log_mel_case),
    ]


def command_bench(args: argparse.Namespace) -> int:
    """Kernel micro-benchmarks of the kdcore ops on each backend available on this device."""
    from kdcore import _backends

    device = _device(args)
    backends = ["reference"]
    notes = []
    if device.type == "cpu":
        print("building the C++ kernels if needed (first run only) ...", flush=True)
        if _backends.cpp_ops() is not None:
            backends.append("cpp")
        notes.append("triton: not timed on the CPU (interpreter only)")
    else:
        reason = _backends.triton_unavailable_reason(device)
        if reason is None:
            backends.append("triton")
        else:
            notes.append(f"triton: {reason}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"kdcore bench on {device} ({name}); median of {args.repeats} runs")
    header = f"{'op':<52}{'backend':<11}{'ms':>10}{'x ref':>8}{'max |out - ref|':>17}"
    print(header)
    print("-" * len(header))
    for label, make in _bench_cases(device, args.quick):
        reference_ms, reference_out = None, None
        for backend in backends:
            step = make(backend)
            output = step().detach().float()
            milliseconds = _time_ms(step, args.repeats)
            if reference_ms is None:
                reference_ms, reference_out = milliseconds, output
            error = (output - reference_out).abs().max().item()
            print(f"{label:<52}{backend:<11}{milliseconds:>10.3f}"
                  f"{reference_ms / milliseconds:>7.2f}x{error:>17.2e}", flush=True)
    for note in notes:
        print(note)
    return 0


# ------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------


def _config_default(cls: type, name: str) -> object:
    """The default of field ``name`` of config dataclass ``cls`` (written once, there)."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default; hides ``(default: None)`` and ``(default: False)``, which
    say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or (
                action.default is argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


def _groups(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:  # noqa: SLF001
    titles = {"data": "data", "frontend": "frontend (log-mel)", "model": "model",
              "objective": "objective", "loop": "training loop", "output": "output and run"}
    return {key: parser.add_argument_group(title) for key, title in titles.items()}


def _add_common(groups: dict, *, loop: str = "loop") -> None:
    groups["output"].add_argument("--config", help="YAML file whose keys mirror these flags "
                                  "(flags win)")
    groups[loop].add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: "
                              "cuda when available)")
    groups["frontend"].add_argument("--backend", default="auto",
                                    choices=("auto", "reference", "cpp", "triton"),
                                    help="kernel backend of the losses and log-mel")
    groups[loop].add_argument("--batch-size", type=int, default=64, help="clips per batch")
    groups["output"].add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_data(groups: dict, *, frontend: bool = True) -> None:
    data = groups["data"]
    data.add_argument("--data", help="class-per-folder directory, CSV manifest "
                      "(path,label[,split][,group]; path,labels / transcript / frames / "
                      "target for --task multilabel / ctc / frame* / regression), a folder "
                      "of unlabelled audio (distill of those tasks) or 'synthetic'")
    data.add_argument("--skip-bad", action="store_true",
                      help="skip unreadable, empty, truncated or non-finite files and bad "
                           "rows (counted, listed in OUT/skipped.txt)")
    data.add_argument("--allow-duplicates", action="store_true",
                      help="a manifest may list a file twice (all copies in one split)")
    data.add_argument("--group-split", metavar="COLUMN", default=None,
                      help="group-disjoint split by this manifest column (e.g. speaker)")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="test share of a random split (no split column)")
    data.add_argument("--val-fraction", type=float, default=0.0,
                      help="val share of a random split, validated on each epoch")
    data.add_argument("--seed", type=int, default=_config_default(LoopConfig, "seed"),
                      help="seeds the split, model init, data order, augmentation, mixup "
                           "and dropout")
    data.add_argument("--synthetic-size", type=int, default=2048,
                      help="training clips of --data synthetic (test: a quarter)")
    data.add_argument("--sample-rate", type=int, default=defaults.SAMPLE_RATE,
                      help="sample rate the audio is resampled to (Hz)")
    data.add_argument("--clip-seconds", type=float, default=1.0,
                      help="clip length: random crops in training, centre crops otherwise")
    if frontend:
        fe = groups["frontend"]
        fe.add_argument("--n-mels", type=int, default=defaults.N_MELS, help="mel bands")
        fe.add_argument("--n-fft", type=int, default=defaults.N_FFT, help="FFT size")
        fe.add_argument("--hop-length", type=int, default=defaults.HOP_LENGTH,
                        help="samples between frames")


def _add_unlabelled(groups: dict) -> None:
    groups["data"].add_argument(
        "--unlabelled", metavar="PATH", default=None,
        help="audio without labels (a folder, searched recursively, or a CSV with a 'path' "
             "column) added to the training split; the student learns the teacher's outputs "
             "on it (KD term only)")


def _add_task(groups: dict) -> None:
    groups["objective"].add_argument(
        "--task", choices=TASKS, default=_config_default(ObjectiveConfig, "task"),
        help="what the model predicts: multiclass (a 'label' per clip), multilabel (a "
             "manifest 'labels' column of ';'-separated tags), ctc (a manifest 'transcript' "
             "column), frame / frame_multilabel (a manifest 'frames' column naming .npy "
             "per-frame labels) or regression (a 'target' column naming .npy targets); "
             "distill also takes a folder of unlabelled audio (docs/cli.md)")
    groups["objective"].add_argument(
        "--distance", choices=FEATURE_KINDS,
        default=_config_default(ObjectiveConfig, "distance"),
        help="--task regression: the distance to the teacher's output and to the targets")


def _add_training(groups: dict) -> None:
    loop, model, output = groups["loop"], groups["model"], groups["output"]
    loop.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    loop.add_argument("--lr", type=float, default=_config_default(LoopConfig, "lr"),
                      help="peak learning rate")
    loop.add_argument("--optimizer", choices=OPTIMIZERS,
                      default=_config_default(LoopConfig, "optimizer"),
                      help="adamw/adam (fused) or sgd (momentum 0.9)")
    loop.add_argument("--weight-decay", type=float,
                      default=_config_default(LoopConfig, "weight_decay"),
                      help="decoupled weight decay on weights (dim >= 2)")
    loop.add_argument("--schedule", choices=SCHEDULES,
                      default=_config_default(LoopConfig, "schedule"),
                      help="learning-rate schedule, per optimizer step (a resume may not "
                           "change --epochs of onecycle/cosine)")
    loop.add_argument("--grad-accum", type=int,
                      default=_config_default(LoopConfig, "grad_accum"),
                      help="micro-batches per optimizer step")
    loop.add_argument("--precision", choices=PRECISIONS,
                      default=_config_default(LoopConfig, "precision"),
                      help="autocast of the forward on CUDA (fp32 on the CPU)")
    loop.add_argument("--compile", action="store_true",
                      default=_config_default(LoopConfig, "compile"),
                      help="torch.compile the model")
    loop.add_argument("--clip-grad-norm", type=float, metavar="NORM",
                      default=_config_default(LoopConfig, "clip_grad_norm"),
                      help="clip the global gradient norm to NORM (default: off)")
    loop.add_argument("--ema", type=float, metavar="DECAY",
                      default=_config_default(LoopConfig, "ema"),
                      help="exponential moving average of the weights with this decay; the "
                           "EMA weights are evaluated and saved (default: off)")
    loop.add_argument("--best-metric", metavar="NAME",
                      default=_config_default(LoopConfig, "best_metric"),
                      help="validation metric that picks OUT/best.pt (default: val_loss "
                           "when there is a val split)")
    loop.add_argument("--best-mode", choices=("min", "max"),
                      default=_config_default(LoopConfig, "best_mode"),
                      help="min or max (default: min for names with loss/error/wer/cer)")
    loop.add_argument("--patience", type=int, metavar="EPOCHS",
                      default=_config_default(LoopConfig, "patience"),
                      help="stop after this many epochs without a better --best-metric "
                           "(default: off)")
    loop.add_argument("--deterministic", action="store_true",
                      help="PyTorch deterministic algorithms (bitwise repeats on a GPU)")
    model.add_argument("--width", type=int, default=None, help="model width")
    model.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                       help="extra model keyword (repeatable), e.g. dropout=0.2")
    groups["frontend"].add_argument("--no-augment", action="store_true",
                                    help="no gain/shift/SpecAugment during training")
    groups["objective"].add_argument(
        "--mixup", type=float, metavar="A", default=_config_default(ObjectiveConfig, "mixup"),
        help="mixup with lam ~ Beta(A, A) on the training waveforms, labels and teacher "
             "targets mixed alike (0 = off)")
    output.add_argument("--out", help="output folder")
    output.add_argument("--resume", action="store_true",
                        help="continue the run in --out from OUT/checkpoints/last.pt (same "
                             "settings; starts fresh when there is no checkpoint yet)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out")


def _add_view_flags(group: argparse._ArgumentGroup, *, views_default: object = None) -> None:
    group.add_argument("--views", type=int, metavar="K", default=views_default,
                       help="deterministic mixup views per clip the teacher cache stores "
                            "(function matching; K teacher passes to fill). distill's "
                            f"default: min({_config_default(ViewConfig, 'views')}, --epochs), "
                            "so that every stored view is trained on")
    group.add_argument("--cache-storage", choices=("float32", "float16"),
                       default=_config_default(TeacherConfig, "cache_storage"),
                       help="teacher cache storage; float16 halves it (relative error "
                            "<= 2^-11 per value)")


def _sub(commands, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
    return commands.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _sub(commands, "demo", "distil Silero VAD into a 25x smaller student on the speech "
                "shipped with kdcore: table, model, report, plots")
    demo.add_argument("--task", choices=("vad", "synthetic-kd"), default="vad",
                      help="vad: Silero VAD on real speech; synthetic-kd: teacher, student "
                      "alone and student + KD on the embedded SyntheticAudio set")
    demo.add_argument("--quick", action="store_true", help="smaller run")
    demo.add_argument("--out", default="kdcore_demo", help="output folder")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the demo already in --out")
    demo.add_argument("--quiet", action="store_true", help="print nothing")
    demo.add_argument("--seed", type=int, default=0, help="data, noise and init seed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=command_demo)

    train = _sub(commands, "train", "plain supervised training of any model (a teacher, or "
                 "a student alone)")
    groups = _groups(train)
    groups["model"].add_argument("--model", help="model name (kdcore.models."
                                 "available_models()), or hf with --model-arg path=DIR")
    _add_data(groups)
    _add_task(groups)
    _add_training(groups)
    _add_common(groups)
    train.set_defaults(handler=command_train)

    distill = _sub(commands, "distill", "distil a teacher into a student")
    groups = _groups(distill)
    groups["model"].add_argument(
        "--teacher", nargs="+", metavar="TEACHER",
        help="teacher checkpoint (model.pt of train; several make an ensemble teacher, the "
             "mean of their logits), a registered teacher name (kdcore teachers; crepe-full "
             "and crepe-tiny distil pitch from a folder of unlabelled audio, docs/pitch.md) "
             "or hf:PATH")
    groups["model"].add_argument("--student", help="student model name")
    obj = groups["objective"]
    obj.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                     help="softening temperature of the KD term")
    obj.add_argument("--alpha", type=float, default=defaults.ALPHA,
                     help="weight of the KD term (1 - alpha on the label term)")
    obj.add_argument("--recipe", choices=RECIPES, default=_config_default(ViewConfig, "recipe"),
                     help="function_matching: student and teacher on the same deterministic "
                          "mixup views of each clip, labels mixed alike; classic: KD and "
                          "labels on the student's own augmented clip (docs/recipes.md)")
    obj.add_argument("--teacher-mode", choices=TEACHER_MODES, default=None,
                     help="online: run the teacher every step; cached: once per item (view). "
                          "Default: cached for function matching with a checkpoint teacher, "
                          "else online")
    _add_view_flags(obj)
    obj.add_argument("--cache-dir", default=None,
                     help="teacher cache of cache-teacher (cached mode; default: "
                          "OUT/teacher_cache)")
    obj.add_argument("--feature-pair", action="append", metavar="S:T",
                     help="student:teacher module paths for feature distillation")
    obj.add_argument("--feature-weight", type=float, default=None,
                     help="weight of the feature loss (default: 1 with feature pairs)")
    _add_unlabelled(groups)
    _add_data(groups)
    _add_task(groups)
    _add_training(groups)
    _add_common(groups)
    distill.set_defaults(handler=command_distill)

    evaluate = _sub(commands, "eval", "classification report, JSON and confusion PNG of a "
                    "checkpoint; pitch scores of a pitch student.pt against its teacher or "
                    "--against a CREPE model; multilabel: mAP, micro AP, per-class AP and its PNG")
    groups = _groups(evaluate)
    groups["model"].add_argument("--model", help="model checkpoint (model.pt), pitch "
                                 "student (student.pt) or registered CREPE model")
    groups["model"].add_argument("--against", metavar="NAME", default=None,
                                 help="pitch: the reference model scored against, e.g. "
                                 "crepe-full (default: the teacher recorded in student.pt)")
    groups["data"].add_argument("--split", default="test",
                                choices=("test", "val", "train", "all"),
                                help="the split to score; all: every file")
    groups["output"].add_argument("--out", default=None, help="output folder (default: "
                                  "next to the checkpoint, eval/)")
    groups["model"].add_argument("--teacher", default=None,
                                 help="enhancement (paired noisy,clean --data): the teacher "
                                      "scored next to --model (default nsnet2; none: skip)")
    _add_data(groups, frontend=False)
    _add_common(groups)
    evaluate.set_defaults(handler=command_eval)

    cache = _sub(commands, "cache-teacher", "precompute teacher outputs for distill "
                 "--cache-dir OUT (--views K: on K mixup views per clip)")
    groups = _groups(cache)
    groups["model"].add_argument("--teacher", nargs="+", metavar="CKPT",
                                 help="teacher checkpoint; several make an ensemble teacher")
    groups["output"].add_argument("--out", help="cache folder")
    groups["output"].add_argument("--overwrite", action="store_true",
                                  help="replace the cache already in --out")
    _add_view_flags(groups["objective"], views_default=0)
    _add_unlabelled(groups)
    _add_data(groups)
    _add_task(groups)
    _add_common(groups)
    cache.set_defaults(handler=command_cache_teacher)

    export = _sub(commands, "export", "export a checkpoint with its frontend (waveform in, "
                  "logits out)")
    export.add_argument("--model", help="model checkpoint (model.pt)")
    export.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                        help="output format")
    export.add_argument("--out", help="output file")
    export.add_argument("--config", help="YAML file whose keys mirror these flags")
    export.set_defaults(handler=command_export)

    enhance = _sub(commands, "enhance", "denoise a WAV file or a folder of them with a trained "
                   "mask student (.pt) or a registered enhancement teacher (nsnet2)")
    enhance.add_argument("--model", help="student file (.pt) or teacher name, e.g. nsnet2")
    enhance.add_argument("--overwrite", action="store_true",
                         help="replace an output file or a non-empty output folder")
    enhance.add_argument("input", help="noisy WAV file or folder")
    enhance.add_argument("output", help="enhanced WAV file or folder (same rate and length)")
    enhance.set_defaults(handler=command_enhance)

    data = _sub(commands, "data", "write data sets to disk")
    kinds = data.add_subparsers(dest="data_command", required=True, metavar="KIND")
    digits = kinds.add_parser("digits", formatter_class=_HelpFormatter,
                              help="connected-digit utterances (CTC) from isolated digit clips",
                              description="connected-digit utterances (kdcore.data."
                              "ConnectedDigits) of the clips of an FSDD-style manifest, as "
                              "WAVs and a path,transcript,speaker,num_digits,split manifest")
    digits.add_argument("--source", help="manifest of isolated clips (path,label,speaker)")
    digits.add_argument("--out", help="output folder")
    digits.add_argument("--train", type=int, default=400, help="training utterances")
    digits.add_argument("--val", type=int, default=40, help="validation utterances")
    digits.add_argument("--test", type=int, default=120, help="test utterances")
    digits.add_argument("--test-speakers", metavar="A,B", default=None,
                        help="speakers held out for test (default: the last one, sorted)")
    digits.add_argument("--digits", type=int, nargs=2, metavar=("MIN", "MAX"), default=[2, 7],
                        help="digits per utterance")
    digits.add_argument("--sample-rate", type=int, default=8000, help="Hz")
    digits.add_argument("--seed", type=int, default=0, help="draw seed")
    digits.add_argument("--overwrite", action="store_true",
                        help="replace the data set already in --out")
    digits.set_defaults(handler=command_data_digits)

    teachers = _sub(commands, "teachers", "the registry of pretrained teachers: name, task, "
                    "sample rate, parameters, package, licence, installed")
    teachers.set_defaults(handler=command_teachers)

    bench = _sub(commands, "bench", "kernel micro-benchmarks on this device")
    bench.add_argument("--quick", action="store_true", help="smaller shapes")
    bench.add_argument("--repeats", type=int, default=10, help="timed runs per case")
    bench.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda "
                       "when available)")
    bench.set_defaults(handler=command_bench)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; keys of ``--config FILE.yaml`` become the subcommand's defaults."""
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is None:
        return args
    import yaml

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"config file does not exist: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CLIError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise CLIError(f"{path} must hold a mapping of flag names to values")
    subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
    actions = {action.dest: action for action in subparser._actions  # noqa: SLF001
               if action.dest not in ("help", "config")}
    defaults_ = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise CLIError(f"{path}: unknown key {key!r} for `kdcore {args.command}` "
                           f"(known: {', '.join(sorted(actions))})")
        defaults_[dest] = _typed_config_value(path, key, value, actions[dest])
    subparser.set_defaults(**defaults_)
    return parser.parse_args(argv)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _typed_config_value(path: Path, key: object, value: object,
                        action: argparse.Action) -> object:
    """``value`` of config key ``key`` checked against its flag: a switch takes a YAML
    boolean (``true``/``false``, not the string ``"false"``), a number flag a number, a text
    flag text, a repeatable or multi-value flag a list of text (or one text); choices hold."""
    where = f"{path}: key {key!r}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        if not isinstance(value, bool):
            raise CLIError(f"{where} is a switch and takes true or false, got "
                           f"{_type_name(value)} {value!r}")
        return value
    if value is None:
        return None
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")  # noqa: SLF001
    if many:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, str):
                raise CLIError(f"{where} takes text or a list of text, got "
                               f"{_type_name(item)} {item!r}")
        return items if isinstance(value, list) else (
            [value] if isinstance(action, argparse._AppendAction) else value)  # noqa: SLF001
    kind = action.type
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = {int: "an integer", float: "a number"}.get(kind, "text")
        raise CLIError(f"{where} takes {expected}, got {_type_name(value)} {value!r}")
    if action.choices is not None and value not in action.choices:
        raise CLIError(f"{where} must be one of {', '.join(map(str, action.choices))}, got "
                       f"{value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdcore`` console script and ``python -m kdcore``."""
    from kdcore.eval.metrics import MetricUnavailableError
    from kdcore.teachers import TeacherUnavailableError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _apply_config(parser, argv)
        args.argv = argv
        return int(args.handler(args) or 0)
    except (UserInputError, FileNotFoundError, TeacherUnavailableError,
            MetricUnavailableError) as error:
        # User mistakes only: any other exception is internal and keeps its traceback.
        if os.environ.get("KDCORE_DEBUG") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"kdcore: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kdcore: interrupted", file=sys.stderr)
        return 130
