"""``kdcore demo``: on :class:`kdcore.data.SyntheticAudio`, train a teacher, the student alone
and the same student with distillation, then print a comparison table and write reports.
:func:`compare` does the same on any dataset (``benchmarks/quality.py`` runs it on FSDD).

Plain training (the teacher, the student alone) uses :class:`kdcore.Trainer`, distillation
:class:`kdcore.Distiller`: the same loop (AdamW, one-cycle LR, same batch size and seed; the
students share epochs, learning rate and initialisation) and one frontend: random gain and
shift on the waveform, log-mel, SpecAugment. The frontend output is shared by teacher and
student, so the teacher always sees the student's exact augmented view. With ``mixup > 0``
the KD student trains on mixed clips and a
"student alone + mixup" control joins the table; the KD gain is then taken over the better
student alone."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcore.data import SpecAugment, SyntheticAudio, TransferSet, WaveAugment, collate_audio
from kdcore.models import TeacherEnsemble, create


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and recipe of one demo run (see ``QUICK`` and ``FULL``). With ``teachers`` > 1
    the teacher is a :class:`kdcore.models.TeacherEnsemble` of that many ``teacher_cnn``
    members; member k >= 1 is initialised and trained with seed ``seed + k``. With
    ``transfer_clips`` > 0 the KD student also trains on that many unlabelled clips
    (:class:`kdcore.data.TransferSet`: the teacher labels them, the KD term alone) and takes
    fewer epochs over the larger set, as many optimizer steps as the students alone.
    ``student_pooling`` is the students' :class:`kdcore.models.StudentDSCNN` ``pooling``."""

    train_clips: int
    test_clips: int
    epochs: int
    teacher_epochs: int
    sample_rate: int = 8000
    duration: float = 1.0
    speakers: int = 6
    n_mels: int = 40
    n_fft: int = 256
    hop_length: int = 128
    teacher_width: int = 16
    teachers: int = 1
    student_width: int = 16
    student_pooling: str = "mean"
    batch_size: int = 64
    lr: float = 5e-3
    teacher_lr: float = 3e-3
    temperature: float = 2.0
    alpha: float = 0.9
    mixup: float = 0.0
    teacher_mixup: float = 0.0
    mixup_control: bool = True
    transfer_clips: int = 0
    seed: int = 0


QUICK = DemoConfig(train_clips=1536, test_clips=384, epochs=20, teacher_epochs=15, duration=0.5,
                   mixup_control=False)
# The full demo: students 120 epochs, KD on mixup 0.4 views (teacher on the same mixed view), a
# student alone with and without mixup as controls (benchmarks/quality.py runs it on 3 seeds).
FULL = DemoConfig(train_clips=2048, test_clips=512, epochs=120, teacher_epochs=60, mixup=0.4)


def synthetic_transfer_set(config: DemoConfig, data_seed: int) -> SyntheticAudio:
    """``config.transfer_clips`` SyntheticAudio clips of data seed ``data_seed + 1`` with a new
    voice per clip: none of them is a speaker of any split of ``data_seed``. Used unlabelled."""
    return SyntheticAudio(config.transfer_clips, split="train", seed=data_seed + 1,
                          sample_rate=config.sample_rate, duration=config.duration,
                          speakers=None)


def synthetic_sets(config: DemoConfig, data_seed: int
                   ) -> tuple[SyntheticAudio, SyntheticAudio, SyntheticAudio | None]:
    """The train and test splits of data seed ``data_seed`` and, with
    ``config.transfer_clips``, the unlabelled transfer set (:func:`synthetic_transfer_set`).
    Clips are generated on first access; :func:`generate_all` does it up front."""
    data_args = {"seed": data_seed, "sample_rate": config.sample_rate,
                 "duration": config.duration, "speakers": config.speakers}
    train_set = SyntheticAudio(config.train_clips, split="train", **data_args)
    test_set = SyntheticAudio(config.test_clips, split="test", **data_args)
    transfer_set = (synthetic_transfer_set(config, data_seed) if config.transfer_clips
                    else None)
    return train_set, test_set, transfer_set


def generate_all(*datasets: SyntheticAudio | None) -> None:
    """Generate every clip once (``None`` entries are skipped); the cache serves each epoch."""
    for dataset in datasets:
        for index in range(len(dataset or [])):
            dataset[index]


def kd_epochs(config: DemoConfig, train_clips: int) -> int:
    """Epochs of the KD student over ``train_clips + config.transfer_clips`` clips that give
    it the optimizer steps of ``config.epochs`` epochs over ``train_clips``; ValueError naming
    ``transfer_clips`` when they cannot be equal."""
    steps = math.ceil(train_clips / config.batch_size) * config.epochs
    per_epoch = math.ceil((train_clips + config.transfer_clips) / config.batch_size)
    if steps % per_epoch:
        raise ValueError(f"transfer_clips={config.transfer_clips}: {per_epoch} batches per "
                         f"epoch do not divide the {steps} optimizer steps of the students "
                         "alone; choose a multiple of the training clips")
    return steps // per_epoch


def _frontend(config: DemoConfig) -> nn.Module:
    from kdcore.frontend import LogMel

    return nn.Sequential(
        WaveAugment(gain_db=(-6.0, 6.0), max_shift=config.sample_rate // 20),
        LogMel(sample_rate=config.sample_rate, n_fft=config.n_fft,
               hop_length=config.hop_length, n_mels=config.n_mels, log="ln", log_eps=1e-6),
        SpecAugment(freq_masks=2, freq_width=config.n_mels // 8, time_masks=2,
                    time_width=8))


def _train(name: str, teacher: nn.Module | None, student: nn.Module, alpha: float,
           train_set: Dataset, test_set: Dataset, config: DemoConfig,
           out: Path, progress: bool, *, epochs: int, lr: float, mixup: float,
           seed: int | None = None):
    """Distil ``teacher`` into ``student``, or train ``student`` alone (``teacher=None``, with
    :class:`kdcore.Trainer`)."""
    from kdcore import Distiller, Trainer

    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate_audio)
    test_loader = DataLoader(test_set, batch_size=256, collate_fn=collate_audio)
    common = dict(frontend=_frontend(config), lr=lr, schedule="onecycle",
                  seed=config.seed if seed is None else seed, device="cpu", mixup=mixup,
                  checkpoint_every=0, progress=progress)
    if teacher is None:
        runner = Trainer(student, **common)
    else:
        runner = Distiller(teacher, student, temperature=config.temperature, alpha=alpha,
                           **common)
    started = time.perf_counter()
    history = runner.fit(train_loader, test_loader, epochs=epochs,
                         out_dir=out / name, resume=False)
    return runner, history, time.perf_counter() - started


@torch.no_grad()
def _predict(frontend: nn.Module, model: nn.Module, dataset: Dataset
             ) -> tuple[torch.Tensor, torch.Tensor]:
    frontend.eval()
    model.eval()
    labels, predictions = [], []
    for batch in DataLoader(dataset, batch_size=256, collate_fn=collate_audio):
        predictions.append(model(frontend(batch.waveforms)).argmax(dim=-1))
        labels.append(batch.labels)
    return torch.cat(labels), torch.cat(predictions)


def _accuracy(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    return (labels == predictions).double().mean().item()


@torch.no_grad()
def _throughput(frontend: nn.Module, model: nn.Module, waveforms: torch.Tensor) -> float:
    """Clips per second through frontend and model (eval, batch of ``len(waveforms)``),
    best of 3 after a warm-up."""
    frontend.eval()
    model.eval()
    model(frontend(waveforms))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model(frontend(waveforms))
        best = min(best, time.perf_counter() - start)
    return waveforms.shape[0] / best


def _plot_curves(histories: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        # Optimizer steps, not epochs: a KD student with a transfer set takes fewer epochs.
        steps = [record["step"] for record in history.epochs]
        loss_axes.plot(steps, history.metric("train_loss"), label=name)
        accuracy_axes.plot(steps, [100 * a for a in history.metric("val_accuracy")],
                           label=name)
    loss_axes.set(xlabel="optimizer step", ylabel="training loss", title="training loss")
    accuracy_axes.set(xlabel="optimizer step", ylabel="test accuracy (%)",
                      title="test accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _format_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def run_demo(*, quick: bool = False, out_dir: str | Path = "kdcore_demo",
             config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Run the demo on :class:`SyntheticAudio`; returns the results dict also written to
    ``out_dir/results.json`` (see :func:`compare`)."""
    config = config or (QUICK if quick else FULL)
    started = time.perf_counter()
    train_set, test_set, transfer_set = synthetic_sets(config, config.seed)
    print(f"SyntheticAudio: {len(train_set)} train / {len(test_set)} test clips, "
          f"{train_set.num_classes} classes, {config.duration} s at {config.sample_rate} Hz"
          + (f", {config.transfer_clips} unlabelled clips for KD" if transfer_set else ""),
          flush=True)
    generate_all(train_set, test_set, transfer_set)
    results = compare(train_set, test_set, list(train_set.classes), config, out_dir,
                      progress=progress, started=started, transfer_set=transfer_set)
    print()
    print(format_table(results))
    print(f"\nreports, confusion matrices and curves in {Path(out_dir)}/ "
          f"({results['total_seconds']:.0f} s in all)")
    return results


def compare(train_set: Dataset, test_set: Dataset, class_names: list[str],
            config: DemoConfig, out_dir: str | Path, *, progress: bool = True,
            started: float | None = None, teacher: nn.Module | None = None,
            transfer_set: Dataset | None = None,
            alone_rows: list[dict] | None = None) -> dict:
    """Train a teacher, the student alone and the same student (same initialisation, epochs,
    learning rate, augmentation) with distillation on one dataset of :class:`AudioExample`
    items with fixed-length waveforms, then evaluate all three on ``test_set``.

    Writes per model ``report_*.json`` and ``confusion_*.png``, ``curves.png`` and
    ``results.json`` to ``out_dir``; returns the results dict: ``rows`` (model, parameters,
    MACs, accuracy, macro-F1, clips/s, training seconds), ``kd_gain_points``,
    ``gap_points`` (teacher minus the better student alone) and ``gap_closed`` (the KD gain
    over that gap). With ``config.teachers`` > 1 the teacher is an ensemble: members train
    into ``teacher``, ``teacher_1``, ... and ``teacher_members_accuracy`` lists their own test
    accuracies. A trained ``teacher``
    (a ``teacher_cnn`` of ``config``'s width, e.g. ``results["teacher"]`` of an earlier call)
    is evaluated and reused instead of trained; the returned ``results["teacher"]`` is the
    teacher used. ``transfer_set`` (``config.transfer_clips`` items, their labels unused) joins
    the KD student's training set unlabelled, for ``results["kd_epochs"]`` epochs (the same
    optimizer steps as the students alone, :func:`kd_epochs`). ``alone_rows``, the
    students-alone rows of an earlier call with the same recipe for them, seed, data and
    teacher argument (so the same initialisation), are taken instead of training those
    students again: only the KD student trains (``benchmarks/quality.py --alone-from``)."""
    from kdcore.eval import classification_report

    if (transfer_set is not None) != (config.transfer_clips > 0) or (
            transfer_set is not None and len(transfer_set) != config.transfer_clips):
        raise ValueError(f"transfer_set: expected {config.transfer_clips} clips "
                         f"(config.transfer_clips), got "
                         f"{None if transfer_set is None else len(transfer_set)}")
    distil_epochs = kd_epochs(config, len(train_set))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter() if started is None else started
    classes = len(class_names)
    torch.manual_seed(config.seed)
    trained = teacher is not None
    members = [] if trained else [create("teacher_cnn", classes, n_mels=config.n_mels,
                                         width=config.teacher_width)]
    student_alone = create("student_dscnn", classes, n_mels=config.n_mels,
                           width=config.student_width, pooling=config.student_pooling)
    student_kd = copy.deepcopy(student_alone)  # same initialisation
    uniform = None  # trained alone: kdcore.Trainer
    alone_runs = [("student alone", uniform, student_alone, 0.0, 0.0, train_set, config.epochs)]
    if config.mixup > 0 and config.mixup_control:
        alone_runs.append(("alone + mixup", uniform, copy.deepcopy(student_alone), 0.0,
                           config.mixup, train_set, config.epochs))
    if alone_rows is not None:
        expected = [run[0] for run in alone_runs]
        given = [row.get("model") for row in alone_rows]
        sizes = [row.get("parameters") for row in alone_rows]
        if given != expected or set(sizes) != {student_kd.num_parameters()}:
            raise ValueError(f"alone_rows: expected rows of {expected} with "
                             f"{student_kd.num_parameters()} parameters each, got {given} "
                             f"with {sizes}")
    if not trained:
        for index in range(1, config.teachers):
            torch.manual_seed(config.seed + index)
            members.append(create("teacher_cnn", classes, n_mels=config.n_mels,
                                  width=config.teacher_width))
    histories, rows, extra = {}, [], {}
    probe = torch.stack([test_set[i].waveform for i in range(min(64, len(test_set)))])

    def evaluate(name: str, model: nn.Module, frontend: nn.Module, seconds: float) -> dict:
        slug = name.replace(" + ", "_").replace(" ", "_")
        labels, predictions = _predict(frontend, model, test_set)
        report = classification_report(labels, predictions, class_names)
        report.save_json(out / f"report_{slug}.json")
        report.save_confusion_png(out / f"confusion_{slug}.png", title=f"{name}: confusion")
        return {"model": name, "parameters": model.num_parameters(),
                "macs": model.macs(int(frontend[1].frames(probe.shape[1]))),
                "accuracy": report.accuracy, "macro_f1": report.macro_f1,
                "clips_per_s": _throughput(frontend, model, probe), "train_seconds": seconds}

    teacher_seconds = 0.0
    for index, member in enumerate(members):
        name = "teacher" if index == 0 else f"teacher {index}"
        print(f"\n== {name}: {_format_count(member.num_parameters())} parameters, "
              f"{config.teacher_epochs} epochs, seed {config.seed + index}", flush=True)
        _, history, seconds = _train(name.replace(" ", "_"), uniform, member, 0.0, train_set,
                                     test_set, config, out, progress,
                                     epochs=config.teacher_epochs, lr=config.teacher_lr,
                                     mixup=config.teacher_mixup, seed=config.seed + index)
        histories[name] = history
        teacher_seconds += seconds
    if not trained:
        teacher = members[0] if len(members) == 1 else TeacherEnsemble(members)
    teacher.eval()
    if isinstance(teacher, TeacherEnsemble):
        extra["teacher_members_accuracy"] = [
            _accuracy(*_predict(_frontend(config), member, test_set))
            for member in teacher.members]
    if trained:
        print(f"\n== teacher: {_format_count(teacher.num_parameters())} parameters "
              "(trained earlier: evaluated only)", flush=True)
    rows.append(evaluate("teacher", teacher, _frontend(config), teacher_seconds))

    runs = alone_runs if alone_rows is None else []
    if alone_rows is not None:
        rows.extend(alone_rows)
    kd_set = train_set if transfer_set is None else TransferSet(train_set, transfer_set)
    runs.append(("student + KD", teacher, student_kd, config.alpha, config.mixup, kd_set,
                 distil_epochs))
    if transfer_set is not None:
        extra |= {"kd_epochs": distil_epochs, "transfer_clips": len(transfer_set)}
    for name, guide, model, alpha, mixup, data, epochs in runs:
        unlabelled = (f" (+ {len(transfer_set)} unlabelled clips)"
                      if data is not train_set else "")
        print(f"\n== {name}: {_format_count(model.num_parameters())} parameters, "
              f"{epochs} epochs{unlabelled}", flush=True)
        slug = name.replace(" + ", "_").replace(" ", "_")
        distiller, history, seconds = _train(slug, guide, model, alpha, data, test_set,
                                             config, out, progress, epochs=epochs,
                                             lr=config.lr, mixup=mixup)
        histories[name] = history
        rows.append(evaluate(name, model, distiller.frontend, seconds))
    _plot_curves(histories, out / "curves.png")

    teacher_row, kd_row = rows[0], rows[-1]
    # Against the better student-alone run (with or without mixup): the conservative baseline.
    alone_row = max(rows[1:-1], key=lambda row: row["accuracy"])
    gain = kd_row["accuracy"] - alone_row["accuracy"]
    gap = teacher_row["accuracy"] - alone_row["accuracy"]
    results = {"config": asdict(config), "rows": rows, "baseline": alone_row["model"],
               "kd_gain_points": 100 * gain, "gap_points": 100 * gap,
               "gap_closed": gain / gap if gap > 0 else None,
               "total_seconds": time.perf_counter() - started} | extra
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results | {"teacher": teacher}


def format_table(results: dict) -> str:
    """The demo's comparison table as text."""
    header = (f"{'model':<15}{'params':>9}{'MACs':>9}{'accuracy':>10}{'macro-F1':>10}"
              f"{'clips/s':>10}{'KD gain':>10}")
    lines = [header, "-" * len(header)]
    for row in results["rows"]:
        gain = f"{results['kd_gain_points']:+.1f} pt" if row["model"] == "student + KD" else ""
        lines.append(f"{row['model']:<15}{_format_count(row['parameters']):>9}"
                     f"{row['macs'] / 1e6:>8.1f}M{100 * row['accuracy']:>9.1f}%"
                     f"{100 * row['macro_f1']:>9.1f}%{row['clips_per_s']:>10.0f}{gain:>10}")
    baseline = results.get("baseline", "student alone")
    if sum(row["model"] != "teacher" for row in results["rows"]) > 2:
        lines.append(f"KD gain: over {baseline!r}, the better student trained without a "
                     "teacher.")
    if results["gap_points"] < 1.0:
        lines.append(f"The teacher is {results['gap_points']:.1f} points above that student: "
                     "too close to measure how much of the gap KD closes.")
    elif results["gap_closed"] is not None:
        lines.append(f"KD closes {100 * results['gap_closed']:.0f} % of the gap between that "
                     "student and the teacher.")
    return "\n".join(lines)
