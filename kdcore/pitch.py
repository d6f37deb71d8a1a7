"""Pitch distillation from a CREPE teacher in one call (what ``kdcore distill --teacher
crepe-full --data DIR`` runs): frames of unlabelled clips, a cached teacher, ``kd_bce_loss``
over the 360 bins. See ``docs/pitch.md``.

- :func:`distill_pitch`: everything in one call (build, fit, save ``student.pt``).
- :func:`prepare_pitch_distillation` returns a :class:`PitchDistillation` (the built
  :class:`kdcore.Distiller`, student and loader) whose ``fit`` and ``save`` are the two later
  steps, for a caller that checks something in between (the command line checks a resume).
- :func:`compare_cost`: parameters, MACs per frame and frames/s of the teacher and student.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcore.engine import Distiller, History
from kdcore.eval.pitch import FRAME, Clip, clip_frames, load_clips
from kdcore.models.pitch import CrepeLogits, FrameSet, PitchStudent

STUDENT_FILE = "student.pt"


def load_crepe_teacher(teacher: Any) -> Any:
    """``teacher`` as a CREPE :class:`kdcore.teachers.TeacherBundle`: a bundle is checked, a
    name (``"crepe-full"``, ``"crepe-tiny"``) is loaded. ValueError when it is not a CREPE-style
    model (360 pitch bins at 16 kHz)."""
    if isinstance(teacher, str):
        from kdcore import teachers

        teacher = teachers.load(teacher)
    if getattr(getattr(teacher, "output", None), "size", None) != 360 \
            or getattr(teacher, "sample_rate", None) != 16000:
        raise ValueError("teacher must be a CREPE bundle (360 pitch bins at 16 kHz), e.g. "
                         "'crepe-full'")
    return teacher


@dataclass
class PitchDistillation:
    """A built pitch distillation: ``teacher`` (the CREPE bundle), ``student``, ``distiller``
    (:class:`kdcore.Distiller`, ``task="multilabel"``, cached teacher), ``loader`` (shuffled
    training frames), ``frames`` (N, 1024) float32, ``clips`` (how many clips they came from)
    and ``hop`` (samples at 16 kHz between frames)."""

    teacher: Any
    student: nn.Module
    distiller: Distiller
    loader: DataLoader
    frames: torch.Tensor
    clips: int
    hop: int

    def fit(self, epochs: int, out_dir: str | os.PathLike, *, resume: bool = True) -> History:
        """:meth:`kdcore.Distiller.fit` for ``epochs`` into ``out_dir`` (teacher cache under
        ``out_dir/teacher_cache``, ``checkpoints/``, ``metrics.jsonl``); ``resume`` (default
        True) continues from ``out_dir/checkpoints/last.pt`` when it exists."""
        return self.distiller.fit(self.loader, epochs=epochs, out_dir=out_dir, resume=resume)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/student.pt``: ``{"model": name, "config", "state_dict", "teacher"
        (its registry name, the default reference of ``kdcore eval``), "hop"}``, the student
        in eval mode (with ``ema``, the EMA weights). Returns the path."""
        student = self.student
        ema = getattr(self.distiller.loop, "ema", None)
        if ema is not None:
            student.load_state_dict(getattr(ema, "student", ema).state_dict())
        student.eval()
        config = student.config() if hasattr(student, "config") else {}
        path = Path(out_dir) / STUDENT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu() for key, value in student.state_dict().items()}
        torch.save({"model": getattr(student, "model_name", type(student).__name__),
                    "config": config, "state_dict": state, "teacher": self.teacher.name,
                    "hop": self.hop}, path)
        return path


def prepare_pitch_distillation(teacher: Any, clips: Sequence[Clip], *,
                               student: nn.Module | None = None, hop: int = 160,
                               batch_size: int = 64, lr: float = 3e-3,
                               temperature: float = 1.0, sample_rate: int = 16000,
                               **distiller_kwargs: Any) -> PitchDistillation:
    """Build (and so check) a pitch distillation without training; the arguments are
    :func:`distill_pitch`'s. Every clip is cut into overlapping CREPE frames (1024 samples =
    64 ms every ``hop`` samples; a clip shorter than a frame gives one zero-padded frame):
    each frame is one training item, so a clip of any length is used whole."""
    teacher = load_crepe_teacher(teacher)
    if isinstance(hop, bool) or not isinstance(hop, int) or hop < 1:
        raise ValueError(f"hop must be a positive number of samples, got {hop!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    waves = load_clips(clips, sample_rate=sample_rate)
    student = PitchStudent() if student is None else student
    frames = clip_frames(waves, hop)
    options = {"progress": False, **distiller_kwargs}
    distiller = Distiller(CrepeLogits(teacher.model), student, task="multilabel",
                          temperature=temperature, alpha=1.0, teacher_mode="cached", lr=lr,
                          teacher_fingerprint=teacher.fingerprint, **options)
    loader = DataLoader(FrameSet(frames), batch_size=batch_size, shuffle=True)
    return PitchDistillation(teacher, student, distiller, loader, frames, len(waves), hop)


def distill_pitch(teacher: Any, clips: Sequence[Clip], out_dir: str | os.PathLike, *,
                  student: torch.nn.Module | None = None, hop: int = 160, epochs: int = 10,
                  batch_size: int = 64, lr: float = 3e-3, temperature: float = 1.0,
                  sample_rate: int = 16000, resume: bool = True, **distiller_kwargs: Any,
                  ) -> tuple[torch.nn.Module, History]:
    """Distil a CREPE teacher into ``student`` frame by frame.

    Args:
        teacher: a CREPE :class:`kdcore.teachers.TeacherBundle` or its name (``"crepe-full"``).
        clips: waveforms (T,) at ``sample_rate`` (default 16000) or audio paths (any rate);
            resampled to 16 kHz with :class:`kdcore.Resample`. No labels.
        out_dir: run directory (teacher cache, checkpoints, ``metrics.jsonl``, and
            ``student.pt``, see :meth:`PitchDistillation.save`).
        student: default a fresh :class:`kdcore.models.PitchStudent`; any module taking frames
            (N, 1024) and returning (N, 360) logits.
        hop: samples at 16 kHz between training frames (default 160 = 10 ms).
        epochs, batch_size, lr, temperature: defaults 10, 64, 3e-3, 1.0.
        resume: default True: continue from ``out_dir/checkpoints/last.pt`` when present.
        distiller_kwargs: further :class:`kdcore.Distiller` keywords (``seed``, ``device``...).

    The teacher runs once per frame (``teacher_mode="cached"``, filled in the first epoch).
    Returns ``(student, history)``."""
    run = prepare_pitch_distillation(teacher, clips, student=student, hop=hop,
                                     batch_size=batch_size, lr=lr, temperature=temperature,
                                     sample_rate=sample_rate, **distiller_kwargs)
    history = run.fit(epochs, out_dir, resume=resume)
    run.save(out_dir)
    return run.student, history


def _frames_per_second(model: nn.Module, frames: torch.Tensor, repeats: int) -> float:
    """Frames/s of a no-grad eval forward on ``frames``: the best of ``repeats`` timed calls
    after one warm-up call (CUDA synchronised)."""
    def run() -> None:
        model(frames)
        if frames.device.type == "cuda":
            torch.cuda.synchronize(frames.device)

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
    finally:
        model.train(training)
    return frames.shape[0] / max(best, 1e-9)


def compare_cost(teacher: nn.Module, student: nn.Module, *, frames: int = 32,
                 device: str | torch.device = "cpu", repeats: int = 2) -> dict[str, Any]:
    """Parameters, MACs per frame (:func:`kdcore.models.count_macs`) and frames/s (batched
    no-grad forward of ``frames`` random normalised frames (default 32) on ``device``
    (default cpu), the best of ``repeats`` (default 2) after a warm-up) of ``teacher`` and
    ``student``, both nn.Modules on frames (N, 1024).

    Returns ``{"teacher": {...}, "student": {...}, "parameter_ratio", "mac_ratio",
    "speedup", "device", "timed_frames"}`` (ratios are student / teacher; ``speedup`` is the
    student's frames/s over the teacher's)."""
    from kdcore.models import count_macs

    device = torch.device(device)
    probe = torch.randn(frames, FRAME, generator=torch.Generator().manual_seed(0))
    rows = {}
    for role, model in (("teacher", teacher), ("student", student)):
        parameter = next(iter(model.parameters()), None)
        home = parameter.device if parameter is not None else torch.device("cpu")
        model.to(device)
        try:
            rows[role] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "macs_per_frame": count_macs(model, probe[:1].to(device)),
                "frames_per_s": _frames_per_second(model, probe.to(device), repeats)}
        finally:
            model.to(home)
    return {**rows, "parameter_ratio": rows["student"]["parameters"]
            / max(rows["teacher"]["parameters"], 1),
            "mac_ratio": rows["student"]["macs_per_frame"]
            / max(rows["teacher"]["macs_per_frame"], 1),
            "speedup": rows["student"]["frames_per_s"] / rows["teacher"]["frames_per_s"],
            "device": str(device), "timed_frames": frames}


def read_student(path: str | os.PathLike) -> dict[str, Any] | None:
    """The dict of a pitch ``student.pt`` written by :meth:`PitchDistillation.save`, or None
    when ``path`` holds something else (another kdcore checkpoint, any other file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one that is no plain state: not a pitch student
        return None
    keys = {"model", "config", "state_dict", "teacher", "hop"}
    if not isinstance(state, dict) or not keys <= set(state):
        return None
    return state


def load_student(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The student of a pitch ``student.pt`` (rebuilt with :func:`kdcore.models.create` from
    its name and config, weights loaded, eval mode) and the file's other entries
    (``model``, ``config``, ``teacher``, ``hop``). ValueError naming ``path`` when it is not
    such a file."""
    from kdcore.models import create

    state = read_student(path)
    if state is None:
        raise ValueError(f"{path} is not a pitch student file (student.pt of kdcore distill "
                         "--teacher crepe-full / kdcore.pitch.distill_pitch)")
    try:
        model = create(str(state["model"]), 360, **dict(state["config"]))
        model.load_state_dict(state["state_dict"])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(f"{path}: cannot rebuild its {state['model']!r} student "
                         f"({error})") from None
    return model.eval(), {k: v for k, v in state.items() if k != "state_dict"}


REPORT_METRICS = (("rpa", "raw pitch accuracy (50 cents)"),
                  ("rca", "raw chroma accuracy (50 cents)"),
                  ("cents_rmse", "cents RMSE, reference-voiced frames"),
                  ("voicing_precision", "voicing precision"),
                  ("voicing_recall", "voicing recall"),
                  ("voicing_f1", "voicing F1"))


def write_pitch_report(report: dict[str, Any], out_dir: str | os.PathLike
                       ) -> tuple[Path, Path]:
    """Write ``report`` (a dict with ``model``, ``reference``, ``data``, ``clips`` and
    ``scores``, the dict of :func:`kdcore.eval.pitch.evaluate_pitch`) as ``report.json`` and
    a Markdown table ``report.md`` in ``out_dir``; NaN scores become null / "n/a". Returns
    both paths."""
    import json
    import math

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    report = clean(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    temporary = json_path.with_name(f".{json_path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, json_path)
    scores = report["scores"]
    lines = [f"# Pitch of {report['model']} against {report['reference']}", "",
             f"{report['clips']} clips from `{report['data']}`, one frame every "
             f"{scores.get('hop')} samples at 16 kHz: {scores.get('frames')} frames, "
             f"{scores.get('reference_voiced_frames')} voiced in the reference (confidence >= "
             f"{scores.get('threshold')}).", "", "| metric | value |", "|---|---|"]
    for key, label in REPORT_METRICS:
        value = scores.get(key)
        shown = "n/a" if value is None else (f"{value:.2f}" if key == "cents_rmse"
                                             else f"{value:.4f}")
        lines.append(f"| {label} | {shown} |")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
