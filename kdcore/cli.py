"""The ``kdcore`` command line: demo, train, distill, eval, cache-teacher, export, bench.

``--data`` is a folder with one subfolder per class, a CSV manifest (``path,label[,split]
[,group]``) or the word ``synthetic`` (the embedded :class:`kdcore.data.SyntheticAudio`).
``--config FILE.yaml`` holds defaults whose keys mirror the long flags (``clip-seconds`` or
``clip_seconds``); flags given on the command line win. Every run writes ``run.json`` in its
output folder: the resolved configuration, the environment and the git commit.
User mistakes end with one ``kdcore: error: ...`` line on stderr and exit code 2
(``KDCORE_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EXIT_USAGE = 2
SYNTHETIC = "synthetic"


class CLIError(ValueError):
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


def write_run_record(out: Path, command: str, args: argparse.Namespace,
                     device: torch.device) -> Path:
    """``out/run.json``: the command, its resolved configuration, environment, git commit."""
    config = {key: value for key, value in vars(args).items()
              if key not in ("handler", "command")}
    record = {"command": command, "config": _jsonable(config), "environment":
              environment(device), "git_commit": git_commit(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
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
    """The chosen split of ``--data`` as datasets of :class:`kdcore.data.AudioExample`."""

    class_names: list[str]
    train: torch.utils.data.Dataset | None
    evaluation: torch.utils.data.Dataset
    evaluation_split: str
    summary: str


def _data_key(args: argparse.Namespace) -> dict:
    """What fixes the item ids of the training split (checked by a reused teacher cache)."""
    key = {"data": str(args.data), "seed": args.seed, "test_fraction": args.test_fraction,
           "group_split": args.group_split, "skip_bad": args.skip_bad,
           "synthetic_size": args.synthetic_size, "sample_rate": args.sample_rate,
           "clip_seconds": args.clip_seconds}
    if getattr(args, "unlabelled", None):
        key["unlabelled"] = str(args.unlabelled)
    return key


def clip_samples(args: argparse.Namespace) -> int:
    return max(1, round(args.clip_seconds * args.sample_rate))


def load_data(args: argparse.Namespace, *, split: str = "test", need_train: bool = True,
              deterministic_train: bool = False) -> Data:
    """Datasets of ``args.data``: the training split (random crops unless
    ``deterministic_train``), followed by the clips of ``args.unlabelled`` without labels when
    given (:class:`kdcore.data.TransferSet`), and ``split`` (centre crops)."""
    data = _labelled_data(args, split=split, need_train=need_train,
                          deterministic_train=deterministic_train)
    if need_train and getattr(args, "unlabelled", None):
        from kdcore.data import AudioFileDataset, TransferSet, unlabelled_files

        files, skipped = unlabelled_files(args.unlabelled, skip_bad=args.skip_bad)
        unlabelled = AudioFileDataset(files, [0] * len(files), sample_rate=args.sample_rate,
                                      clip_samples=clip_samples(args),
                                      train=not deterministic_train, preload=True)
        data.train = TransferSet(data.train, unlabelled)
        data.summary += (f"; + {len(files)} unlabelled clips from {args.unlabelled} (KD term "
                         f"only{f', {len(skipped)} bad skipped' if skipped else ''})")
    return data


def _labelled_data(args: argparse.Namespace, *, split: str, need_train: bool,
                   deterministic_train: bool) -> Data:
    from kdcore.data import SyntheticAudio, load_source

    if args.sample_rate < 1000:
        raise CLIError(f"--sample-rate must be at least 1000 Hz, got {args.sample_rate}")
    if not args.clip_seconds > 0:
        raise CLIError(f"--clip-seconds must be > 0, got {args.clip_seconds}")
    samples = clip_samples(args)
    if str(args.data) == SYNTHETIC:
        sizes = {"train": args.synthetic_size, "val": max(16, args.synthetic_size // 4),
                 "test": max(16, args.synthetic_size // 4)}
        if split not in sizes:
            raise CLIError(f"--split for synthetic data must be one of {sorted(sizes)}, got "
                           f"{split!r}")
        common = {"seed": args.seed, "sample_rate": args.sample_rate,
                  "duration": args.clip_seconds}
        train = SyntheticAudio(sizes["train"], split="train", **common) if need_train else None
        evaluation = SyntheticAudio(sizes[split], split=split, **common)
        return Data(list(SyntheticAudio.classes), train, evaluation, split,
                    f"SyntheticAudio: {sizes['train']} train / {sizes[split]} {split} clips, "
                    f"{len(SyntheticAudio.classes)} classes")
    source = load_source(args.data, skip_bad=args.skip_bad)
    parts = source.split(group_column=args.group_split, test_fraction=args.test_fraction,
                         seed=args.seed)
    if split not in parts or not parts[split]:
        raise CLIError(f"--split {split!r} is empty or missing in {args.data} (splits: "
                       f"{', '.join(sorted(k for k, v in parts.items() if v))})")
    if need_train and not parts.get("train"):
        raise CLIError(f"{args.data} has no training items")
    options = {"sample_rate": args.sample_rate, "clip_samples": samples, "preload": True}
    train = (source.dataset(parts["train"], train=not deterministic_train, **options)
             if need_train else None)
    evaluation = source.dataset(parts[split], train=False, **options)
    summary = (f"{source.summary()}; {len(parts.get('train', []))} train / "
               f"{len(parts[split])} {split}")
    return Data(list(source.classes), train, evaluation, split, summary)


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

    kwargs = {"n_mels": args.n_mels, **parse_model_args(args.model_arg)}
    if args.width is not None:
        kwargs["width"] = args.width
    return create(name, num_classes, **kwargs)


def training_frontend(config: dict, args: argparse.Namespace, augment: bool) -> nn.Module:
    """Log-mel with waveform gain/shift and SpecAugment (``augment``), else log-mel only."""
    from kdcore.checkpoints import build_frontend
    from kdcore.data import SpecAugment, WaveAugment

    log_mel = build_frontend(config, args.backend)
    if not augment:
        return log_mel
    return nn.Sequential(
        WaveAugment(gain_db=(-6.0, 6.0), max_shift=args.sample_rate // 20), log_mel,
        SpecAugment(freq_masks=2, freq_width=max(1, args.n_mels // 8), time_masks=2,
                    time_width=8))


def _loader(dataset, batch_size: int, shuffle: bool):
    from torch.utils.data import DataLoader

    from kdcore.data import collate_audio

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      collate_fn=collate_audio)


def _device(args: argparse.Namespace) -> torch.device:
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def _fit(teacher: nn.Module, student: nn.Module, data: Data, args: argparse.Namespace,
         out: Path, *, alpha: float, temperature: float, augment: bool,
         teacher_mode: str = "online", feature_pairs: list[tuple[str, str]] | None = None,
         feature_weight: float = 0.0, cache_dir: Path | None = None) -> nn.Module:
    """Train ``student`` with :class:`kdcore.Distiller`; returns the frontend used."""
    from kdcore import Distiller

    device = _device(args)
    frontend = training_frontend(frontend_config(args), args, augment)
    distiller = Distiller(teacher, student, frontend=frontend, temperature=temperature,
                          alpha=alpha, lr=args.lr, schedule="onecycle", seed=args.seed,
                          device=device, checkpoint_every=0, progress=not args.no_progress,
                          teacher_mode=teacher_mode, feature_pairs=feature_pairs,
                          feature_weight=feature_weight, cache_dir=cache_dir,
                          loss_backend=args.backend, mixup=args.mixup)
    train_loader = _loader(data.train, args.batch_size, shuffle=True)
    val_loader = _loader(data.evaluation, args.batch_size, shuffle=False)
    history = distiller.fit(train_loader, val_loader, epochs=args.epochs, out_dir=out,
                            resume=args.resume)
    last = history.epochs[-1] if history.epochs else {}
    shown = {k: round(v, 4) for k, v in last.items() if isinstance(v, float)}
    print(f"last epoch: {shown}")
    return frontend


def _finish_training(model: nn.Module, data: Data, args: argparse.Namespace, out: Path,
                     kind: str, meta: dict) -> None:
    from kdcore.checkpoints import build_frontend, save_model_checkpoint

    path = save_model_checkpoint(out / "model.pt", model, class_names=data.class_names,
                                 frontend=frontend_config(args), clip_samples=clip_samples(args),
                                 meta=meta)
    print(f"saved {kind} checkpoint {path}")
    labels, predictions = predict(build_frontend(frontend_config(args), args.backend), model,
                                  data.evaluation, args.batch_size, _device(args),
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
    """Teacher, student alone and student with KD on SyntheticAudio (:mod:`kdcore.demo`)."""
    from kdcore.demo import run_demo

    run_demo(quick=args.quick, out_dir=args.out, progress=not args.no_progress)
    return 0


def command_train(args: argparse.Namespace) -> int:
    _require(args, "data", "model", "out")
    _check_model_name(args.model)
    out = Path(args.out)
    write_run_record(out, "train", args, _device(args))
    data = load_data(args)
    print(data.summary, flush=True)
    model = build_model(args.model, len(data.class_names), args)
    print(f"{args.model}: {model.num_parameters():,} parameters", flush=True)
    from kdcore.demo import ConstantTeacher

    _fit(ConstantTeacher(len(data.class_names)), model, data, args, out, alpha=0.0,
         temperature=1.0, augment=not args.no_augment)
    _finish_training(model, data, args, out, "model", {"command": "train"})
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


def _load_teacher(paths: list[str], args: argparse.Namespace, data_classes: list[str]):
    """The ``--teacher`` checkpoint (``paths``, from :func:`teacher_paths`); with several,
    one whose ``model`` is a :class:`kdcore.models.TeacherEnsemble` (mean of the members'
    logits). The members must share class names, frontend and clip length. ``args``' frontend
    follows the teacher's."""
    import dataclasses

    from kdcore.checkpoints import load_model_checkpoint
    from kdcore.models import TeacherEnsemble

    teachers = [load_model_checkpoint(path) for path in paths]
    for path, teacher in zip(paths, teachers, strict=True):
        if teacher.class_names != data_classes:
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


def command_distill(args: argparse.Namespace) -> int:
    _require(args, "data", "teacher", "student", "out")
    from kdcore.data import SyntheticAudio, load_source

    _check_model_name(args.student)
    out = Path(args.out)
    paths = teacher_paths(args)  # before the data loads: a missing checkpoint fails fast
    classes = (list(SyntheticAudio.classes) if str(args.data) == SYNTHETIC
               else load_source(args.data, skip_bad=args.skip_bad, check_audio=False).classes)
    teacher = _load_teacher(paths, args, classes)
    write_run_record(out, "distill", args, _device(args))
    cached = args.teacher_mode == "cached"
    data = load_data(args, deterministic_train=cached)
    print(data.summary, flush=True)
    student = build_model(args.student, len(data.class_names), args)
    pairs = parse_feature_pairs(args.feature_pair)
    weight = args.feature_weight if args.feature_weight is not None else (1.0 if pairs else 0.0)
    cache_dir = Path(args.cache_dir) if args.cache_dir is not None else None
    if cached and cache_dir is not None:
        _check_cache_dir(cache_dir, args)
    print(f"teacher {teacher.model_name}: {teacher.model.num_parameters():,} parameters; "
          f"student {args.student}: {student.num_parameters():,} parameters", flush=True)
    _fit(teacher.model, student, data, args, out, alpha=args.alpha,
         temperature=args.temperature, augment=not (args.no_augment or cached),
         teacher_mode=args.teacher_mode, feature_pairs=pairs, feature_weight=weight,
         cache_dir=cache_dir)
    _finish_training(student, data, args, out, "student",
                     {"command": "distill", "teacher": ", ".join(paths),
                      "temperature": args.temperature, "alpha": args.alpha})
    return 0


def command_eval(args: argparse.Namespace) -> int:
    _require(args, "data", "model")
    from kdcore.checkpoints import load_model_checkpoint

    checkpoint = load_model_checkpoint(args.model)
    args.sample_rate = checkpoint.sample_rate
    args.clip_seconds = checkpoint.clip_samples / checkpoint.sample_rate
    data = load_data(args, split=args.split, need_train=False)
    if data.class_names != checkpoint.class_names:
        raise CLIError(f"{args.model} was trained on {checkpoint.num_classes} classes "
                       f"{checkpoint.class_names[:6]} but --data has {len(data.class_names)} "
                       f"classes {data.class_names[:6]}")
    out = Path(args.out) if args.out is not None else Path(args.model).parent / "eval"
    write_run_record(out, "eval", args, _device(args))
    print(data.summary, flush=True)
    labels, predictions = predict(checkpoint.build_frontend(args.backend), checkpoint.model,
                                  data.evaluation, args.batch_size, _device(args),
                                  not args.no_progress)
    write_report(labels, predictions, data.class_names, out,
                 f"{checkpoint.model_name}: {args.split} split")
    return 0


def command_cache_teacher(args: argparse.Namespace) -> int:
    """Fill a teacher cache for ``distill --teacher-mode cached --cache-dir DIR``: teacher
    logits of every training item's deterministic view (centre crop, log-mel)."""
    _require(args, "data", "teacher", "out")
    from tqdm import tqdm

    from kdcore.data import SyntheticAudio, load_source
    from kdcore.engine import TeacherCache
    from kdcore.engine.checkpoint import fingerprint

    out = Path(args.out)
    paths = teacher_paths(args)  # before the data loads: a missing checkpoint fails fast
    classes = (list(SyntheticAudio.classes) if str(args.data) == SYNTHETIC
               else load_source(args.data, skip_bad=args.skip_bad, check_audio=False).classes)
    teacher = _load_teacher(paths, args, classes)
    data = load_data(args, deterministic_train=True)
    print(data.summary, flush=True)
    device = _device(args)
    frontend = training_frontend(frontend_config(args), args, augment=False)
    key = {"teacher": fingerprint(teacher.model), "frontend": fingerprint(frontend),
           "taps": [], "task": "multiclass"}
    cache = TeacherCache(out, key, len(data.train), 1, {"logits": (teacher.num_classes,)})
    cache.prepare(explicit=True)
    cache.open()
    model = teacher.model.to(device).eval()
    frontend = frontend.to(device).eval()
    loader = _loader(data.train, args.batch_size, shuffle=False)
    with torch.inference_mode():
        for batch in tqdm(loader, desc="teacher cache", disable=args.no_progress):
            logits = model(frontend(batch.waveforms.to(device)))
            cache.store(batch.indices, None, {"logits": logits})
    cache.flush()
    (out / "cli_data.json").write_text(json.dumps(_jsonable(_data_key(args)), indent=1))
    write_run_record(out, "cache-teacher", args, device)
    print(f"cached teacher logits of {len(data.train)} training items in {out} "
          f"(filled {100 * cache.filled_fraction():.0f} %); use it with "
          f"`kdcore distill --teacher-mode cached --cache-dir {out}`")
    return 0


class _ExportLogMel(nn.Module):
    """The frontend of an exported model: :class:`kdcore.LogMel` in plain torch ops (framing,
    a float64 DFT as two matrix products instead of ``rfft``, which ONNX lacks, mel matrix,
    log), so the file needs neither kdcore nor its custom ops.
    Waveforms (B, T) float32 to log-mel (B, n_mels, frames) float32."""

    def __init__(self, log_mel: nn.Module) -> None:
        from kdcore.ops.log_mel import _tables, dft_basis

        super().__init__()
        if log_mel.waveform_preemphasis or log_mel.floor_below_max is not None or \
                log_mel.drop_last_frame:
            raise CLIError("export supports LogMel frontends without waveform_preemphasis, "
                           "floor_below_max or drop_last_frame")
        self.config = config = log_mel.config
        window, filterbank = _tables(config.key(), torch.device("cpu"), torch.float64)
        basis = dft_basis(window, config.n_fft, preemphasis=config.preemphasis,
                          remove_dc_offset=config.remove_dc_offset)
        self.register_buffer("cosine", basis[0].clone())  # (win, n_freqs) float64
        self.register_buffer("sine", basis[1].clone())
        self.register_buffer("filterbank", filterbank.clone())  # (n_freqs, n_mels) float64

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        from kdcore.ops.log_mel import _apply_log, fold_index

        config = self.config
        samples = waveforms.shape[-1]
        n_frames = int(config.frames(torch.as_tensor(samples, dtype=torch.int64)))
        # One gather with a constant (frames, win) index: the legacy ONNX exporter
        # mis-shapes Tensor.unfold on the last dimension.
        position = (config.hop_length * torch.arange(n_frames)[:, None]
                    + torch.arange(config.win_length)[None, :] - config.lead)
        length = torch.as_tensor(samples, dtype=torch.int64)
        frames = waveforms.double()[:, fold_index(position, length, config.pad_mode)]
        if config.pad_mode == "constant":
            frames = torch.where((position >= 0) & (position < samples), frames, 0.0)
        power = (frames @ self.cosine).square() + (frames @ self.sine).square()
        if config.power != 2.0:
            power = power.pow(config.power / 2.0)
        return _apply_log(power @ self.filterbank, config).transpose(1, 2).float()


class _ExportedClassifier(nn.Module):
    """Waveforms (B, clip_samples) float32 -> logits (B, num_classes): frontend then model."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend, self.model = frontend, model

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.model(self.frontend(waveforms))


def command_export(args: argparse.Namespace) -> int:
    _require(args, "model", "out")
    import importlib.util

    from kdcore.checkpoints import load_model_checkpoint

    if args.format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise CLIError("--format onnx needs the onnx package (pip install onnx onnxruntime)")
    checkpoint = load_model_checkpoint(args.model)
    network = _ExportedClassifier(_ExportLogMel(checkpoint.build_frontend("reference")),
                                  checkpoint.model).eval()
    generator = torch.Generator().manual_seed(0)
    example = 0.1 * torch.randn(2, checkpoint.clip_samples, generator=generator)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = checkpoint.model(checkpoint.build_frontend("reference")(example))
    if args.format == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(out))
        with torch.no_grad():
            got = torch.jit.load(str(out))(example)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(out), input_names=["waveform"],
                              output_names=["logits"], dynamic_axes={
                                  "waveform": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=18, dynamo=False)
        if importlib.util.find_spec("onnxruntime") is None:
            got = None
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out),
                                                   providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"waveform": example.numpy()})[0])
    if got is None:
        print(f"wrote {out} (onnxruntime is not installed: outputs not checked)")
        return 0
    error = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    if not error <= 1e-4 * max(1.0, scale):
        raise RuntimeError(f"exported model disagrees with PyTorch: max |diff| {error:.3g}")
    print(f"wrote {out}: waveform (B, {checkpoint.clip_samples}) at {checkpoint.sample_rate} Hz "
          f"-> logits (B, {checkpoint.num_classes}); max |exported - PyTorch| = {error:.2e}")
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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file whose keys mirror these flags (flags win)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda "
                        "when available)")
    parser.add_argument("--backend", default="auto", choices=("auto", "reference", "cpp",
                        "triton"), help="kernel backend of the losses and log-mel")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_data(parser: argparse.ArgumentParser, *, frontend: bool = True) -> None:
    parser.add_argument("--data", help="class-per-folder directory, CSV manifest "
                        "(path,label[,split][,group]) or 'synthetic'")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable/empty files and bad rows (counted, reported)")
    parser.add_argument("--group-split", metavar="COLUMN", default=None,
                        help="group-disjoint split by this manifest column (e.g. speaker)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-size", type=int, default=2048,
                        help="training clips of --data synthetic (test: a quarter)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--clip-seconds", type=float, default=1.0)
    if frontend:
        parser.add_argument("--n-mels", type=int, default=64)
        parser.add_argument("--n-fft", type=int, default=512)
        parser.add_argument("--hop-length", type=int, default=160)


def _add_unlabelled(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unlabelled", metavar="PATH", default=None,
                        help="audio without labels (a folder, searched recursively, or a CSV "
                             "with a 'path' column) added to the training split; the student "
                             "learns the teacher's outputs on it (KD term only)")


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--width", type=int, default=None, help="model width")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                        help="extra model keyword (repeatable), e.g. dropout=0.2")
    parser.add_argument("--no-augment", action="store_true",
                        help="no gain/shift/SpecAugment during training")
    parser.add_argument("--mixup", type=float, default=0.0, metavar="A",
                        help="mixup with lam ~ Beta(A, A) on the training waveforms, labels "
                             "and teacher targets mixed alike (0 = off)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/last.pt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="teacher, student alone and student + KD on the "
                               "embedded SyntheticAudio set: table, reports, plots")
    demo.add_argument("--quick", action="store_true", help="smaller run (about 2 minutes)")
    demo.add_argument("--out", default="kdcore_demo", help="output folder")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=command_demo)

    train = commands.add_parser("train", help="plain training (a teacher, or any model)")
    train.add_argument("--model", help="model name (kdcore.models.available_models())")
    _add_data(train)
    _add_training(train)
    _add_common(train)
    train.set_defaults(handler=command_train)

    distill = commands.add_parser("distill", help="distil a teacher checkpoint into a student")
    distill.add_argument("--teacher", nargs="+", metavar="CKPT",
                         help="teacher checkpoint (model.pt of train); several make an "
                              "ensemble teacher (mean of their logits)")
    distill.add_argument("--student", help="student model name")
    distill.add_argument("--temperature", type=float, default=2.0)
    distill.add_argument("--alpha", type=float, default=0.9,
                         help="weight of the KD term (1 - alpha on cross-entropy)")
    distill.add_argument("--teacher-mode", choices=("online", "cached"), default="online")
    distill.add_argument("--cache-dir", default=None,
                         help="teacher cache of cache-teacher (cached mode)")
    distill.add_argument("--feature-pair", action="append", metavar="S:T",
                         help="student:teacher module paths for feature distillation")
    distill.add_argument("--feature-weight", type=float, default=None,
                         help="weight of the feature loss (default 1 with feature pairs)")
    _add_unlabelled(distill)
    _add_data(distill)
    _add_training(distill)
    _add_common(distill)
    distill.set_defaults(handler=command_distill)

    evaluate = commands.add_parser("eval", help="classification report, JSON and confusion "
                                   "PNG of a checkpoint")
    evaluate.add_argument("--model", help="model checkpoint (model.pt)")
    evaluate.add_argument("--split", default="test", help="train, val or test (default test)")
    evaluate.add_argument("--out", default=None, help="output folder (default: "
                          "next to the checkpoint, eval/)")
    _add_data(evaluate, frontend=False)
    _add_common(evaluate)
    evaluate.set_defaults(handler=command_eval)

    cache = commands.add_parser("cache-teacher", help="precompute teacher logits for "
                                "distill --teacher-mode cached")
    cache.add_argument("--teacher", nargs="+", metavar="CKPT",
                       help="teacher checkpoint; several make an ensemble teacher")
    cache.add_argument("--out", help="cache folder")
    _add_unlabelled(cache)
    _add_data(cache)
    _add_common(cache)
    cache.set_defaults(handler=command_cache_teacher)

    export = commands.add_parser("export", help="export a checkpoint with its frontend "
                                 "(waveform in, logits out)")
    export.add_argument("--model", help="model checkpoint (model.pt)")
    export.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    export.add_argument("--out", help="output file")
    export.add_argument("--config", help="YAML file whose keys mirror these flags")
    export.set_defaults(handler=command_export)

    bench = commands.add_parser("bench", help="kernel micro-benchmarks on this device")
    bench.add_argument("--quick", action="store_true", help="smaller shapes")
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--device", default=None)
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
    known = {action.dest for action in subparser._actions} - {"help", "config"}  # noqa: SLF001
    defaults = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known:
            raise CLIError(f"{path}: unknown key {key!r} for `kdcore {args.command}` "
                           f"(known: {', '.join(sorted(known))})")
        defaults[dest] = value
    subparser.set_defaults(**defaults)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdcore`` console script and ``python -m kdcore``."""
    from kdcore.data import AudioReadError, ManifestError
    from kdcore.engine import CacheMismatchError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _apply_config(parser, argv)
        return int(args.handler(args) or 0)
    except (CLIError, FileNotFoundError, AudioReadError, ManifestError, CacheMismatchError,
            ValueError, TypeError) as error:
        if os.environ.get("KDCORE_DEBUG") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"kdcore: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("kdcore: interrupted", file=sys.stderr)
        return 130
