"""Pitch distillation from a CREPE teacher in one call (what ``kdcore distill --teacher
crepe-full --data DIR`` runs): frames of unlabelled clips, a cached teacher, ``kd_bce_loss``
over the 360 bins. See ``docs/pitch.md``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdcore.engine import Distiller, History
from kdcore.eval.pitch import Clip, clip_frames, load_clips
from kdcore.models.pitch import CrepeLogits, FrameSet, PitchStudent


def distill_pitch(teacher: Any, clips: Sequence[Clip], out_dir: str | os.PathLike, *,
                  student: torch.nn.Module | None = None, hop: int = 160, epochs: int = 10,
                  batch_size: int = 64, lr: float = 3e-3, temperature: float = 1.0,
                  sample_rate: int = 16000, **distiller_kwargs: Any,
                  ) -> tuple[torch.nn.Module, History]:
    """Distil a CREPE teacher into ``student`` frame by frame.

    Args:
        teacher: a CREPE :class:`kdcore.teachers.TeacherBundle` or its name (``"crepe-full"``).
        clips: waveforms (T,) at ``sample_rate`` (default 16000) or audio paths; no labels.
        out_dir: run directory (teacher cache, checkpoints, ``metrics.jsonl``, and
            ``student.pt`` with ``{"model": "pitch_student", "config", "state_dict", "teacher"
            (its name, the default ``--against``), "hop"}``).
        student: default a fresh :class:`kdcore.models.PitchStudent`; any module taking frames
            (N, 1024) and returning (N, 360) logits.
        hop: samples at 16 kHz between training frames (default 160 = 10 ms).
        epochs, batch_size, lr, temperature: defaults 10, 64, 3e-3, 1.0.
        distiller_kwargs: further :class:`kdcore.Distiller` keywords (``seed``, ``device``...).

    The teacher runs once per frame (``teacher_mode="cached"``, filled in the first epoch).
    Returns ``(student, history)``."""
    if isinstance(teacher, str):
        from kdcore import teachers

        teacher = teachers.load(teacher)
    if getattr(getattr(teacher, "output", None), "size", None) != 360:
        raise ValueError("teacher must be a CREPE bundle (360 pitch bins), e.g. 'crepe-full'")
    student = PitchStudent() if student is None else student
    frames = clip_frames(load_clips(clips, sample_rate=sample_rate), hop)
    options = {"progress": False, **distiller_kwargs}
    distiller = Distiller(CrepeLogits(teacher.model), student, task="multilabel",
                          temperature=temperature, alpha=1.0, teacher_mode="cached", lr=lr,
                          **options)
    loader = DataLoader(FrameSet(frames), batch_size=batch_size, shuffle=True)
    history = distiller.fit(loader, epochs=epochs, out_dir=out_dir)
    student.eval()
    config = student.config() if hasattr(student, "config") else {}
    torch.save({"model": getattr(student, "model_name", type(student).__name__),
                "config": config, "state_dict": student.state_dict(), "teacher": teacher.name,
                "hop": hop},
               Path(out_dir) / "student.pt")
    return student, history
