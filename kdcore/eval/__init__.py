"""Evaluation reports: classification report (text, JSON), confusion-matrix PNG, multi-label
mAP and its per-class AP plot. Needs the ``report`` extra (scikit-learn, matplotlib)."""

from kdcore.eval.report import (
    ClassificationReport,
    ClassScores,
    MultiLabelReport,
    classification_report,
    multilabel_report,
    save_average_precision_png,
    save_confusion_png,
)

__all__ = [
    "ClassScores",
    "ClassificationReport",
    "MultiLabelReport",
    "classification_report",
    "multilabel_report",
    "save_average_precision_png",
    "save_confusion_png",
]
