"""Every task's objective against a float64 re-derivation written out here: the loss sum, the
count it is normalised by and the gradient of ``loss / count``; and one SGD step of the whole
loop over two micro-batches for the sequence tasks (global valid-count normalisation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdcore.engine import Distiller, ObjectiveConfig, Trainer, make_objective
from kdcore.engine.batches import Batch, to_device

T, ALPHA = 2.0, 0.3


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return -torch.log1p(torch.exp(-x.abs())) + torch.clamp(x, max=0)


def kl_rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per row, float64."""
    log_q = t / T - torch.logsumexp(t / T, -1, keepdim=True)
    log_p = s / T - torch.logsumexp(s / T, -1, keepdim=True)
    q = log_q.exp()
    return T * T * torch.where(q > 0, q * (log_q - log_p), 0.0).sum(-1)


def soft_bce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """T^2 * BCE(sigmoid(s/T); sigmoid(t/T)) per element, float64."""
    q = torch.sigmoid(t / T)
    return -T * T * (q * _log_sigmoid(s / T) + (1 - q) * _log_sigmoid(-s / T))


def hard_bce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * _log_sigmoid(s) + (1 - y) * _log_sigmoid(-s))


def ce_rows(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    log_p = s - torch.logsumexp(s, -1, keepdim=True)
    return -log_p.gather(-1, y.clamp(min=0)[..., None])[..., 0]


def ctc_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> torch.Tensor:
    """-log p(target | log_probs (T, C)) by the forward recursion over the blank-extended
    target, float64."""
    extended = [blank]
    for token in target:
        extended += [token, blank]
    states = len(extended)
    neg_inf = torch.tensor(-1e30, dtype=torch.float64)  # finite: no NaN gradients
    alpha = [log_probs[0, blank]] + ([log_probs[0, extended[1]]] if states > 1 else [])
    alpha += [neg_inf] * (states - len(alpha))
    for t in range(1, log_probs.shape[0]):
        new = []
        for s in range(states):
            paths = [alpha[s]]
            if s >= 1:
                paths.append(alpha[s - 1])
            if s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]:
                paths.append(alpha[s - 2])
            new.append(torch.logsumexp(torch.stack(paths), 0) + log_probs[t, extended[s]])
        alpha = new
    ends = [alpha[-1]] + ([alpha[-2]] if states > 1 else [])
    return -torch.logsumexp(torch.stack(ends), 0)


def run_objective(task: str, student: torch.Tensor, teacher: torch.Tensor | None,
                  batch: Batch, **config: object):
    objective = make_objective(ObjectiveConfig(task=task, temperature=T, alpha=ALPHA,
                                               **config))
    leaf = student.clone().float().requires_grad_(True)
    terms = objective(leaf, None if teacher is None else teacher.float(), batch)
    (terms.loss / terms.count).backward()
    return terms, leaf.grad


def check(terms, grad, reference_sum: torch.Tensor, reference_count: float,
          leaf: torch.Tensor) -> None:
    assert float(terms.count) == reference_count
    torch.testing.assert_close(terms.loss.double(), reference_sum.detach(), rtol=2e-5, atol=1e-5)
    (reference_sum / reference_count).backward()
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=2e-4, atol=1e-6)


def test_multiclass_with_unlabelled_ignored_and_masked_rows():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    t = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    t[2, 1] = -math.inf  # a class the teacher rules out
    labels = torch.tensor([0, 4, -1, 2, -100, 3, 1])
    mask = torch.tensor([True, True, True, True, True, False, True])
    batch = Batch(inputs=s, labels=labels, mask=mask)
    terms, grad = run_objective("multiclass", s, t, batch)
    leaf = s.clone().requires_grad_(True)
    valid = mask & (labels != -100)
    labelled = valid & (labels >= 0)
    kd = kl_rows(leaf, t)
    per_row = torch.where(labelled, ALPHA * kd + (1 - ALPHA) * ce_rows(leaf, labels), kd)
    check(terms, grad, torch.where(valid, per_row, 0.0).sum(), float(valid.sum()), leaf)
    torch.testing.assert_close(terms.sums["kd_loss"].double(),
                               torch.where(valid, kd, 0.0).sum().detach(), rtol=2e-5, atol=1e-5)


def test_multiclass_supervised_counts_labelled_rows_only():
    s = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([1, -1, 3, -100, 0])
    terms, grad = run_objective("multiclass", s, None, Batch(inputs=s, labels=labels))
    leaf = s.clone().requires_grad_(True)
    labelled = labels >= 0
    check(terms, grad, torch.where(labelled, ce_rows(leaf, labels), 0.0).sum(), 3.0, leaf)


@pytest.mark.parametrize("task", ["multilabel", "frame_multilabel"])
def test_multilabel_and_frame_multilabel(task):
    g = torch.Generator().manual_seed(1)
    shape = (4, 3) if task == "multilabel" else (3, 6, 3)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(*shape, generator=g) > 0.5).double()
    if task == "multilabel":
        mask, batch_mask, lengths = torch.tensor([True, False, True, True]), None, None
        batch_mask = mask
    else:
        lengths = torch.tensor([6, 2, 4])
        mask = torch.arange(6)[None] < lengths[:, None]
        batch_mask = None
    batch = Batch(inputs=s, labels=y, mask=batch_mask, lengths=lengths)
    terms, grad = run_objective(task, s, t, batch)
    leaf = s.clone().requires_grad_(True)
    per = ALPHA * soft_bce(leaf, t) + (1 - ALPHA) * hard_bce(leaf, y)
    keep = mask[..., None].expand_as(per)
    check(terms, grad, torch.where(keep, per, 0.0).sum(), float(keep.sum()), leaf)


def test_frame_uses_lengths_and_ignores_padding_garbage():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 1])
    mask = torch.arange(5)[None] < lengths[:, None]
    labels = torch.randint(0, 4, (3, 5), generator=g)
    s[~mask] = 1e4  # padding garbage
    batch = Batch(inputs=s, labels=labels, lengths=lengths)
    terms, grad = run_objective("frame", s, t, batch)
    leaf = s.clone().requires_grad_(True)
    per = ALPHA * kl_rows(leaf, t) + (1 - ALPHA) * ce_rows(leaf, labels)
    check(terms, grad, torch.where(mask, per, 0.0).sum(), float(mask.sum()), leaf)
    assert torch.all(grad[~mask] == 0)


def test_ctc_kd_per_frame_plus_ctc_nll_by_the_forward_recursion():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 6])
    targets = torch.tensor([[1, 2, 2], [3, 4, -1], [4, -1, -1]])
    batch = to_device(Batch(inputs=s, labels=targets, lengths=lengths), torch.device("cpu"))
    terms, grad = run_objective("ctc", s, t, batch)
    leaf = s.clone().requires_grad_(True)
    mask = torch.arange(7)[None] < lengths[:, None]
    kd = torch.where(mask, kl_rows(leaf, t), 0.0).sum()
    log_probs = leaf - torch.logsumexp(leaf, -1, keepdim=True)
    nll = sum(ctc_nll(log_probs[b, :int(lengths[b])], [v for v in targets[b].tolist() if v >= 0],
                      blank=0) for b in range(3))
    check(terms, grad, ALPHA * kd + (1 - ALPHA) * nll, float(mask.sum()), leaf)
    torch.testing.assert_close(terms.sums["ctc_loss"].double(), nll.detach(), rtol=2e-5,
                               atol=1e-5)


@pytest.mark.parametrize("distance", ["mse", "l1", "cosine"])
def test_regression_distance_to_teacher_and_targets(distance):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    batch = Batch(inputs=s, labels=y, mask=mask)
    terms, grad = run_objective("regression", s, t, batch, distance=distance)
    leaf = s.clone().requires_grad_(True)

    def dist(a, b):
        if distance == "mse":
            return ((a - b) ** 2).sum(-1)
        if distance == "l1":
            return (a - b).abs().sum(-1)
        return 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    per = ALPHA * dist(leaf, t) + (1 - ALPHA) * dist(leaf, y)
    width = 1 if distance == "cosine" else 3
    check(terms, grad, torch.where(mask, per, 0.0).sum(), float(mask.sum()) * width, leaf)


# ---------------------------------------------------------------------------------------------
# One SGD step of the whole loop: two micro-batches normalised by the window's valid count
# ---------------------------------------------------------------------------------------------

class SequenceSet(Dataset):
    def __init__(self, task: str) -> None:
        g = torch.Generator().manual_seed(5)
        self.task = task
        self.inputs = torch.randn(6, 8, 4, generator=g)
        self.lengths = torch.tensor([8, 3, 5, 8, 2, 6])
        if task == "ctc":
            self.labels = torch.tensor([[1, 2], [2, -1], [1, -1], [2, 1], [1, -1], [2, 2]])
        elif task == "frame_multilabel":
            self.labels = (torch.rand(6, 8, 3, generator=g) > 0.5).float()
        else:
            self.labels = torch.randn(6, 8, 3, generator=g)

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"input": self.inputs[i], "label": self.labels[i], "lengths": self.lengths[i],
                "index": i}


@pytest.mark.parametrize("task", ["ctc", "frame_multilabel", "regression"])
def test_one_sgd_step_over_two_micro_batches_equals_the_float64_window_loss(task):
    data = SequenceSet(task)
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(teacher, student, task=task, alpha=ALPHA, temperature=T, lr=0.5,
                          optimizer="sgd", schedule="constant", weight_decay=0.0, grad_accum=2,
                          progress=False, device="cpu")
    distiller.fit(DataLoader(data, batch_size=3, shuffle=False), epochs=1)

    s_model = nn.Linear(4, 3).double()
    s_model.load_state_dict({k: v.double() for k, v in initial.items()})
    x = data.inputs.double()
    s = s_model(x)
    with torch.no_grad():
        t = teacher.double()(x)
    mask = torch.arange(8)[None] < data.lengths[:, None]
    if task == "ctc":
        kd = torch.where(mask, kl_rows(s, t), 0.0).sum()
        log_probs = s - torch.logsumexp(s, -1, keepdim=True)
        nll = sum(ctc_nll(log_probs[b, :int(data.lengths[b])],
                          [v for v in data.labels[b].tolist() if v >= 0], 0) for b in range(6))
        total, count = ALPHA * kd + (1 - ALPHA) * nll, mask.sum()
    elif task == "frame_multilabel":
        per = ALPHA * soft_bce(s, t) + (1 - ALPHA) * hard_bce(s, data.labels.double())
        total, count = torch.where(mask[..., None], per, 0.0).sum(), mask.sum() * 3
    else:
        per = ALPHA * ((s - t) ** 2).sum(-1) + (1 - ALPHA) * ((s - data.labels.double()) ** 2
                                                               ).sum(-1)
        total, count = torch.where(mask, per, 0.0).sum(), mask.sum() * 3
    (total / count).backward()
    for name, parameter in s_model.named_parameters():
        expected = parameter.detach() - 0.5 * parameter.grad
        torch.testing.assert_close(student.state_dict()[name].double(), expected, rtol=1e-4,
                                   atol=1e-6)


def test_ctc_evaluation_reports_token_error_rate_and_registered_metrics():
    data = SequenceSet("ctc")
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    seen = {}

    def count_refs(references, hypotheses):
        seen["refs"] = references
        return float(len(hypotheses))

    trainer = Trainer(model, task="ctc", progress=False, device="cpu",
                      metrics={"utterances": count_refs})
    trainer.fit(DataLoader(data, batch_size=3), epochs=1)
    result = trainer.evaluate(DataLoader(data, batch_size=3))
    assert result["utterances"] == 6.0
    assert seen["refs"][1] == [2] and seen["refs"][0] == [1, 2]
    assert 0.0 <= result["ter"] and "ctc_loss" in result


@pytest.mark.parametrize("task, shape", [("multiclass", (6, 5)), ("frame", (3, 4, 5))])
def test_softmax_training_step_on_labelled_rows_is_one_fused_call(task: str, shape: tuple):
    """``Batch.all_labelled`` (a training step whose rows all have labels): the fused
    ``kd_loss(labels=, alpha=)`` path gives the float64 ``a*KD + (1-a)*CE`` over valid rows
    and its gradient, without the evaluation sums; without the flag, or under no_grad, the
    sums are back and the loss is the same."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
    labels.view(-1)[1] = -100  # an ignored row
    lengths = torch.tensor([4, 2, 3]) if task == "frame" else None
    fused = Batch(inputs=s, labels=labels, lengths=lengths, all_labelled=True)
    terms, grad = run_objective(task, s, t, fused)
    assert terms.sums == {}
    leaf = s.clone().requires_grad_(True)
    valid = labels != -100
    if lengths is not None:
        valid &= torch.arange(shape[1])[None, :] < lengths[:, None]
    per_row = ALPHA * kl_rows(leaf, t) + (1 - ALPHA) * ce_rows(leaf, labels)
    check(terms, grad, torch.where(valid, per_row, 0.0).sum(), float(valid.sum()), leaf)
    apart, grad_apart = run_objective(task, s, t, Batch(inputs=s, labels=labels,
                                                        lengths=lengths))
    assert set(apart.sums) == {"kd_loss", "ce_loss"}
    torch.testing.assert_close(apart.loss, terms.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_apart, grad, rtol=1e-5, atol=1e-7)
    objective = make_objective(ObjectiveConfig(task=task, temperature=T, alpha=ALPHA))
    with torch.no_grad():
        assert set(objective(s.float(), t.float(), fused).sums) == {"kd_loss", "ce_loss"}
