"""Metrics accumulated on the device; read (one host sync) only when asked."""

from __future__ import annotations

import torch

from kdcore.engine.distributed import DistContext, all_reduce_


class ClassificationMeter:
    """Running loss sums, accuracy and macro-F1 for one task, all as device tensors.

    - ``multiclass`` / ``frame``: a (C, C) confusion matrix over valid rows (argmax of logits).
    - ``multilabel``: per-class TP/FP/FN at logit > 0; accuracy is per element.

    Macro-F1 averages ``2TP / (2TP + FP + FN)`` over classes that occur in the labels or the
    predictions (the convention of scikit-learn's ``f1_score(average="macro")``).
    """

    def __init__(self, task: str, num_classes: int, device: torch.device) -> None:
        self.task = task
        self.num_classes = num_classes
        self.device = device
        self.reset()

    def reset(self) -> None:
        classes = self.num_classes
        self.sums: dict[str, torch.Tensor] = {}
        self.rows = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.task == "multilabel":
            self.counts = torch.zeros(4, classes, dtype=torch.int64, device=self.device)
        else:
            self.counts = torch.zeros(classes * classes, dtype=torch.int64, device=self.device)
        self.labelled = False

    def add_sum(self, name: str, value: torch.Tensor) -> None:
        """Add a summed loss term (divided by ``rows`` when read)."""
        value = value.detach().to(torch.float64)
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()

    def add_rows(self, rows: torch.Tensor) -> None:
        self.rows += rows.to(torch.float64)

    @torch.no_grad()
    def add_predictions(self, logits: torch.Tensor, labels: torch.Tensor,
                        valid: torch.Tensor | None) -> None:
        """logits (..., C); labels (...) int (multiclass/frame) or (..., C) (multilabel);
        valid (...) bool or None."""
        self.labelled = True
        classes = self.num_classes
        if self.task == "multilabel":
            predicted = logits > 0
            truth = labels > 0.5
            keep = (torch.ones_like(predicted) if valid is None
                    else valid[..., None].expand_as(predicted))
            flat = lambda t: (t & keep).reshape(-1, classes).sum(0)
            self.counts[0] += flat(predicted & truth)
            self.counts[1] += flat(predicted & ~truth)
            self.counts[2] += flat(~predicted & truth)
            self.counts[3] += flat(predicted == truth)
            return
        predicted = logits.argmax(-1).reshape(-1)
        truth = labels.reshape(-1).long()
        keep = (truth >= 0) & (truth < classes)
        if valid is not None:
            keep &= valid.reshape(-1)
        codes = torch.where(keep, truth * classes + predicted, classes * classes)
        self.counts += torch.bincount(codes, minlength=classes * classes + 1)[:-1]

    def all_reduce(self, context: DistContext) -> None:
        if not context.enabled:
            return
        for name in sorted(self.sums):
            all_reduce_(self.sums[name], context)
        all_reduce_(self.rows, context)
        all_reduce_(self.counts, context)

    def state_dict(self) -> dict:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "rows": self.rows.cpu(),
                "counts": self.counts.cpu(), "labelled": self.labelled}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self.rows = state["rows"].to(self.device)
        self.counts = state["counts"].to(self.device)
        self.labelled = bool(state["labelled"])

    def compute(self) -> dict[str, float]:
        """Host values (one sync): every ``sums`` entry per row, plus accuracy and macro-F1."""
        rows = self.rows.clamp(min=1)
        result = {name: float(value / rows) for name, value in self.sums.items()}
        if not self.labelled:
            return result
        classes = self.num_classes
        if self.task == "multilabel":
            tp, fp, fn, agree = self.counts.to(torch.float64)
            elements = (tp + fp + fn + (agree - tp)).sum()  # every element agrees or not
            accuracy = agree.sum() / elements.clamp(min=1)
        else:
            confusion = self.counts.reshape(classes, classes).to(torch.float64)
            tp = confusion.diagonal()
            fp = confusion.sum(0) - tp
            fn = confusion.sum(1) - tp
            accuracy = tp.sum() / confusion.sum().clamp(min=1)
        support = (tp + fp + fn) > 0
        f1 = torch.where(support, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
        macro_f1 = f1.sum() / support.sum().clamp(min=1)
        result["accuracy"] = float(accuracy)
        result["macro_f1"] = float(macro_f1)
        return result
