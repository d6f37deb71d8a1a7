"""Evaluation of the ``frame``, ``frame_multilabel``, ``ctc`` and ``regression`` tasks with the
training objective itself (:meth:`kdcore.Trainer.evaluate` / :meth:`kdcore.Distiller.evaluate`):
the metrics each task registers and the ``report.json`` the command line writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["cosine_similarity", "task_metrics", "task_report"]


def cosine_similarity(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over rows of ``<s, t> / max(|s| |t|, 1e-8)``; (N, D) arrays (valid rows or frames)
    -> float. The regression task's registered metric."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, np.shape(scores)[-1])
    t = np.asarray(targets, dtype=np.float64).reshape(s.shape)
    norms = np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1), 1e-8)
    return float(np.mean(np.sum(s * t, axis=1) / norms)) if len(s) else float("nan")


def task_metrics(task: str, class_names: Sequence[str]) -> dict[str, Callable] | None:
    """Extra metrics of ``task`` for ``Trainer``/``Distiller(metrics=...)``, on top of the
    engine's own (accuracy and macro-F1 of the classification tasks, token error rate ``ter``
    of ctc):

    - ``multilabel``, ``frame_multilabel``: ``mAP`` (macro AP over the classes with a positive)
      and ``micro_ap``, over valid rows or frames;
    - ``ctc``: greedy corpus ``wer`` and ``cer`` (jiwer); ``class_names`` is
      ``["<blank>", word, ...]``, the blank at 0;
    - ``regression``: ``cosine`` (:func:`cosine_similarity`);
    - ``multiclass``, ``frame``: None."""
    if task in ("multilabel", "frame_multilabel"):
        from kdcore.eval.metrics import mean_average_precision, micro_average_precision

        return {"mAP": mean_average_precision, "micro_ap": micro_average_precision}
    if task == "ctc":
        from kdcore.asr import ctc_text_metrics

        return ctc_text_metrics(list(class_names)[1:], token_offset=1)
    if task == "regression":
        return {"cosine": cosine_similarity}
    return None


def task_report(engine: object, loader: Iterable, *, task: str, split: str,
                out: str | os.PathLike | None = None) -> dict:
    """``engine.evaluate(loader)`` (a :class:`kdcore.Trainer` or :class:`kdcore.Distiller`:
    the objective's terms and the task's metrics, EMA weights when there are some) as a report
    ``{"task", "split", "items", <metric>: value, ...}``; printed on one line and, with
    ``out`` [None], written to ``out/report.json``. NaN (no positive of any class) is written
    as null."""
    result = engine.evaluate(loader)
    report = {"task": task, "split": split, "items": int(result.pop("samples", 0))}
    report.update({name: (None if value != value else float(value))
                   for name, value in result.items()})
    shown = " ".join(f"{name} {value:.4f}" for name, value in report.items()
                     if isinstance(value, float))
    print(f"{shown} on {report['items']} {split} items")
    if out is not None:
        path = Path(out) / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".report.json.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(temporary, path)
        print(f"wrote {path}")
    return report
