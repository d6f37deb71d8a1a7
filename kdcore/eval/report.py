"""Classification reports from scikit-learn metrics (``pip install kdcore[report]``).

Single-label: accuracy, per-class precision/recall/F1/support, micro/macro/weighted averages,
the confusion matrix (rows = true class, columns = predicted). Multi-label: per-class average
precision and mAP (macro), plus micro AP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


def _sklearn_metrics():
    try:
        from sklearn import metrics
    except ImportError:
        raise ImportError("reports need scikit-learn: pip install 'kdcore[report]'") from None
    return metrics


def _as_int_array(name: str, values: object) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape "
                         f"{array.shape} and dtype {array.dtype}")
    return array.astype(np.int64)


@dataclass
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ClassificationReport:
    """Single-label report. ``averages`` maps ``micro``/``macro``/``weighted`` to scores
    (support = total); ``confusion[i][j]`` counts true class i predicted as j."""

    class_names: list[str]
    accuracy: float
    per_class: dict[str, ClassScores]
    averages: dict[str, ClassScores]
    confusion: list[list[int]]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float:
        return self.averages["macro"].f1

    def to_text(self, digits: int = 4) -> str:
        """The familiar layout: one row per class, then accuracy and the three averages."""
        width = max([len(name) for name in self.class_names] + [len("weighted avg")])
        head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
        row = "{:>{w}} {:>9.{d}f} {:>9.{d}f} {:>9.{d}f} {:>9}"
        lines = [head, ""]
        for name in self.class_names:
            s = self.per_class[name]
            lines.append(row.format(name, s.precision, s.recall, s.f1, s.support,
                                    w=width, d=digits))
        total = self.averages["macro"].support
        lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {self.accuracy:>9.{digits}f} "
                      f"{total:>9}"]
        for kind in ("micro", "macro", "weighted"):
            s = self.averages[kind]
            lines.append(row.format(f"{kind} avg", s.precision, s.recall, s.f1, s.support,
                                    w=width, d=digits))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target

    def save_confusion_png(self, path: str | os.PathLike, *, normalize: bool = False,
                           title: str | None = None) -> Path:
        """Draw the confusion matrix (row-normalised when ``normalize``) to a PNG."""
        return save_confusion_png(np.asarray(self.confusion), self.class_names, path,
                                  normalize=normalize, title=title)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int],
                          class_names: Sequence[str] | None = None) -> ClassificationReport:
    """Report for integer labels ``y_true`` and predictions ``y_pred`` (same length, values
    in ``range(len(class_names))``). Classes with no predictions get precision 0 (and no
    warning). Metrics come from ``sklearn.metrics``."""
    metrics = _sklearn_metrics()
    true = _as_int_array("y_true", y_true)
    pred = _as_int_array("y_pred", y_pred)
    if true.shape != pred.shape or true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and the same length, got "
                         f"{true.size} and {pred.size}")
    if class_names is None:
        class_names = [str(i) for i in range(int(max(true.max(), pred.max())) + 1)]
    names = [str(name) for name in class_names]
    if true.min() < 0 or pred.min() < 0 or max(true.max(), pred.max()) >= len(names):
        raise ValueError(f"labels must lie in [0, {len(names)}) for {len(names)} class_names")
    labels = list(range(len(names)))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true, pred, labels=labels, zero_division=0)
    per_class = {name: ClassScores(float(p), float(r), float(f), int(s))
                 for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)}
    averages = {}
    for kind in ("micro", "macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            true, pred, labels=labels, average=kind, zero_division=0)
        averages[kind] = ClassScores(float(p), float(r), float(f), int(true.size))
    confusion = metrics.confusion_matrix(true, pred, labels=labels)
    return ClassificationReport(names, float(metrics.accuracy_score(true, pred)), per_class,
                                averages, confusion.tolist())


@dataclass
class MultiLabelReport:
    """Multi-label report: ``mAP`` is the mean over classes with at least one positive of
    their average precision; ``micro_ap`` pools every (item, class) pair."""

    class_names: list[str]
    mAP: float
    micro_ap: float
    per_class_ap: dict[str, float | None]

    def to_text(self, digits: int = 4) -> str:
        width = max([len(name) for name in self.class_names] + [len("micro AP")])
        lines = [f"{'':>{width}} {'AP':>9}", ""]
        for name in self.class_names:
            ap = self.per_class_ap[name]
            lines.append(f"{name:>{width}} " + (f"{ap:>9.{digits}f}" if ap is not None
                                                 else f"{'n/a':>9}"))
        lines += ["", f"{'mAP':>{width}} {self.mAP:>9.{digits}f}",
                  f"{'micro AP':>{width}} {self.micro_ap:>9.{digits}f}"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | os.PathLike) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target


def multilabel_report(targets: object, scores: object,
                      class_names: Sequence[str] | None = None) -> MultiLabelReport:
    """mAP report for binary ``targets`` (N, C) in {0, 1} and real ``scores`` (N, C) (logits
    or probabilities: AP depends only on their order). Classes without positives are left out
    of mAP (their AP is None)."""
    metrics = _sklearn_metrics()
    truth = np.asarray(targets.detach().cpu() if hasattr(targets, "detach") else targets)
    score = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores,
                       dtype=np.float64)
    if truth.ndim != 2 or truth.shape != score.shape:
        raise ValueError(f"targets and scores must both be (N, C), got {truth.shape} and "
                         f"{score.shape}")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("targets must contain only 0 and 1")
    names = [str(n) for n in (class_names or range(truth.shape[1]))]
    if len(names) != truth.shape[1]:
        raise ValueError(f"class_names has {len(names)} names for {truth.shape[1]} columns")
    per_class: dict[str, float | None] = {}
    for column, name in enumerate(names):
        positives = truth[:, column].sum()
        per_class[name] = (float(metrics.average_precision_score(truth[:, column],
                                                                  score[:, column]))
                           if positives > 0 else None)
    present = [ap for ap in per_class.values() if ap is not None]
    if not present:
        raise ValueError("targets have no positive labels; mAP is undefined")
    micro = float(metrics.average_precision_score(truth, score, average="micro"))
    return MultiLabelReport(names, float(np.mean(present)), micro, per_class)


def save_confusion_png(confusion: np.ndarray, class_names: Sequence[str],
                       path: str | os.PathLike, *, normalize: bool = False,
                       title: str | None = None) -> Path:
    """Plot a (C, C) confusion matrix (rows true, columns predicted) with counts (or row
    fractions) in the cells, using matplotlib's Agg backend. Returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'kdcore[report]'") from None
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or \
            matrix.shape[0] != len(class_names):
        raise ValueError(f"confusion must be (C, C) with C = {len(class_names)} class names, "
                         f"got {matrix.shape}")
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(matrix, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names), rotation=90)
    axes.set_yticks(ticks, labels=list(class_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or ("confusion matrix (row-normalised)" if normalize
                             else "confusion matrix"))
    if len(class_names) <= 30:
        threshold = matrix.max() / 2 if matrix.max() > 0 else 1
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                text = f"{matrix[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
                axes.text(j, i, text, ha="center", va="center", fontsize=7,
                          color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def save_average_precision_png(per_class_ap: Mapping[str, float | None],
                               path: str | os.PathLike, *, title: str | None = None,
                               mean_ap: float | None = None) -> Path:
    """Plot per-class average precision as horizontal bars (x: AP in [0, 1], y: class, in the
    given order) with each value written at its bar's end, using matplotlib's Agg backend.
    A class whose AP is None or NaN (no positive) is drawn as "n/a". ``mean_ap`` [None: the
    mean of the defined values] is drawn as a dashed line; ``title`` [None: "per-class
    average precision"]. Returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'kdcore[report]'") from None
    names = [str(name) for name in per_class_ap]
    if not names:
        raise ValueError("per_class_ap is empty: nothing to plot")
    values = [None if value is None or value != value else float(value)
              for value in per_class_ap.values()]
    defined = [value for value in values if value is not None]
    if mean_ap is None and defined:
        mean_ap = float(np.mean(defined))
    figure, axes = plt.subplots(figsize=(6.4, max(2.5, 0.38 * len(names) + 1.4)))
    rows = np.arange(len(names))
    axes.barh(rows, [value or 0.0 for value in values], color="tab:blue", height=0.6)
    for row, value in zip(rows, values, strict=True):
        axes.text((value or 0.0) + 0.01, row, "n/a" if value is None else f"{value:.3f}",
                  va="center", fontsize=8, zorder=3,
                  bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})
    xlabel = "average precision"
    if mean_ap is not None:
        axes.axvline(mean_ap, color="tab:red", linestyle="--", zorder=2)
        xlabel += f" (dashed red line: mAP {mean_ap:.3f})"
    axes.set_yticks(rows, labels=names)
    axes.invert_yaxis()  # first class on top
    axes.set_xlim(0.0, 1.12)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("class")
    axes.set_title(title or "per-class average precision")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target
