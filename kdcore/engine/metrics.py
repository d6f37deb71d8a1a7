"""Metrics accumulated on the device; read (one host sync) only when asked."""

from __future__ import annotations

import numpy as np
import torch

from kdcore.engine.distributed import DistContext, all_reduce_


class Meter:
    """Running loss sums and the task's metrics, all as device tensors until :meth:`compute`.

    - ``multiclass`` / ``frame``: a (C, C) confusion matrix over valid rows (argmax):
      ``accuracy`` and ``macro_f1``.
    - ``multilabel`` / ``frame_multilabel``: per-class TP/FP/FN at logit > 0 (F1 at 0.5):
      ``accuracy`` per element and ``macro_f1``.
    - ``ctc``: greedy decoding (argmax per valid frame, repeats merged, blanks dropped), only
      when ``collect`` is set (evaluation): ``ter``, the token error rate (edit distance over
      reference tokens, summed over utterances).
    - ``regression``: the summed terms only.

    Macro-F1 averages ``2TP / (2TP + FP + FN)`` over classes that occur in the labels or the
    predictions (scikit-learn's ``f1_score(average="macro")``).

    ``metrics`` [None]: extra metrics ``name -> fn``, called at :meth:`compute` on the host
    values of every collected batch (evaluation only): ``fn(scores, targets)`` with numpy
    arrays of the valid rows/frames (``scores`` (N, C) logits or outputs, ``targets`` (N,) or
    (N, C)) for the classification and regression tasks, ``fn(references, hypotheses)`` with
    lists of token-id lists for ``ctc``; each returns a float (e.g. mAP, WER via jiwer).
    """

    def __init__(self, task: str, num_classes: int, device: torch.device, *,
                 metrics: dict | None = None, blank: int = 0) -> None:
        self.task = task
        self.num_classes = num_classes
        self.device = device
        self.metrics = dict(metrics or {})
        self.blank = blank
        self.collect = False
        self.reset()

    @property
    def multilabel(self) -> bool:
        return self.task in ("multilabel", "frame_multilabel")

    def reset(self) -> None:
        classes = self.num_classes
        self.sums: dict[str, torch.Tensor] = {}
        self.rows = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.multilabel:
            self.counts = torch.zeros(4, classes, dtype=torch.int64, device=self.device)
        else:
            self.counts = torch.zeros(classes * classes, dtype=torch.int64, device=self.device)
        self.labelled = False
        self.collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

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
        """logits (..., C); labels (...) int (multiclass/frame), (..., C) (multilabel, frame
        multilabel, regression) or (B, S) transcripts (ctc); valid (...) bool or None."""
        self.labelled = True
        if self.collect and (self.metrics or self.task == "ctc"):
            self.collected.append((logits.detach().float(), labels.detach(),
                                   None if valid is None else valid.detach()))
        if self.task in ("ctc", "regression"):
            return
        classes = self.num_classes
        if self.multilabel:
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
        # scatter_add, not bincount: bincount reads the largest code on the host (a sync)
        tally = torch.zeros(classes * classes + 1, dtype=torch.int64, device=codes.device)
        self.counts += tally.scatter_add_(0, codes, torch.ones_like(codes))[:-1]

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
        """Host values (one sync): every ``sums`` entry per row, plus the task's metrics."""
        rows = self.rows.clamp(min=1)
        result = {name: float(value / rows) for name, value in self.sums.items()}
        if not self.labelled:
            return result
        if self.task == "ctc":  # decoded at evaluation only
            return result | (self._sequence_metrics() if self.collected else {})
        if self.task != "regression":
            result |= self._classification_metrics()
        for name, fn in self.metrics.items() if self.collected else ():
            scores, targets = self._rows()
            result[name] = float(fn(scores, targets))
        return result

    def _classification_metrics(self) -> dict[str, float]:
        classes = self.num_classes
        if self.multilabel:
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
        return {"accuracy": float(accuracy), "macro_f1": float(macro_f1)}

    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        scores, targets = [], []
        for logits, labels, valid in self.collected:
            if valid is None:
                valid = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
            if not self.multilabel and self.task != "regression":
                valid = valid & (labels >= 0)
            scores.append(logits[valid].cpu())
            targets.append(labels[valid].cpu())
        return torch.cat(scores).numpy(), torch.cat(targets).numpy()

    def _sequence_metrics(self) -> dict[str, float]:
        references, hypotheses = [], []
        for logits, labels, valid in self.collected:
            best = logits.argmax(-1).cpu()
            lengths = (torch.full((best.shape[0],), best.shape[1]) if valid is None
                       else valid.sum(1).cpu())
            for row, length, label in zip(best, lengths.tolist(), labels.cpu(), strict=True):
                hypotheses.append(greedy_ctc_decode(row[:length].tolist(), self.blank))
                references.append([int(v) for v in label.tolist() if v >= 0])
        errors = sum(edit_distance(r, h) for r, h in zip(references, hypotheses, strict=True))
        total = sum(len(r) for r in references)
        result = {"ter": errors / max(total, 1)}
        for name, fn in self.metrics.items():
            result[name] = float(fn(references, hypotheses))
        return result


ClassificationMeter = Meter  # the earlier name


def greedy_ctc_decode(best_path: list[int], blank: int) -> list[int]:
    """Merge repeated ids, then drop ``blank``: ``[1, 1, 0, 1, 2, 2] -> [1, 1, 2]``."""
    out, previous = [], None
    for token in best_path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def edit_distance(reference: list[int], hypothesis: list[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]
