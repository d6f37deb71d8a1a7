"""The Distiller on tiny CPU models and generated data: training reduces the loss in every
mode, the normalisation is global, caches/checkpoints/guards behave, bad configs fail early.
References are float64 numpy written here."""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcore.engine import CacheMismatchError, Distiller, History, NonFiniteLossError
from tests.engine_script import (
    NUM_CLASSES,
    ClusterDataset,
    ConvFrameModel,
    loss_backend,
    make_pair,
    trainable_state,
)

QUIET = {"progress": False, "loss_backend": loss_backend()}


def loader(dataset, batch=16, shuffle=True):
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle)


def log_softmax64(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def kd_rows64(student: np.ndarray, teacher: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row ``T^2 * KL(softmax(t/T) || softmax(s/T))`` in float64."""
    log_p_t = log_softmax64(teacher / temperature)
    log_p_s = log_softmax64(student / temperature)
    return temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1)


def macro_f1_64(truth: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = np.sum((truth == c) & (predicted == c))
        fp = np.sum((truth != c) & (predicted == c))
        fn = np.sum((truth == c) & (predicted != c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def outputs64(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """The model's outputs from a float64 copy (the model itself is left as it is)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(inputs.double()).numpy()


# ------------------------------------------------------------------------------------------
# Training works in each mode
# ------------------------------------------------------------------------------------------


def test_online_kd_reduces_loss_and_evaluate_matches_float64_reference(tmp_path):
    teacher, student = make_pair()
    train, val = ClusterDataset(160, seed=1), ClusterDataset(64, seed=2)
    distiller = Distiller(teacher, student, temperature=2.0, alpha=0.5, lr=3e-2, log_every=5,
                          **QUIET)
    before = distiller.evaluate(loader(val, 32, False))
    history = distiller.fit(loader(train), loader(val, 32, False), epochs=6, out_dir=tmp_path)
    after = distiller.evaluate(loader(val, 32, False))
    assert isinstance(history, History) and len(history.epochs) == 6
    assert after["kd_loss"] < 0.5 * before["kd_loss"]
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert after["accuracy"] > before["accuracy"]

    # evaluate() against float64 formulas on the same models
    student_logits = outputs64(distiller.student, val.inputs)
    teacher_logits = outputs64(distiller.teacher, val.inputs)
    labels = val.labels.numpy()
    kd = kd_rows64(student_logits, teacher_logits, 2.0)
    ce = -np.take_along_axis(log_softmax64(student_logits), labels[:, None], 1)[:, 0]
    predicted = student_logits.argmax(-1)
    assert after["kd_loss"] == pytest.approx(kd.mean(), rel=1e-4)
    assert after["ce_loss"] == pytest.approx(ce.mean(), rel=1e-4)
    assert after["loss"] == pytest.approx((0.5 * kd + 0.5 * ce).mean(), rel=1e-4)
    assert after["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert after["macro_f1"] == pytest.approx(macro_f1_64(labels, predicted, NUM_CLASSES))
    assert after["samples"] == len(val)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["event"] for r in records} == {"step", "epoch"}
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == list(range(6))
    assert all(math.isfinite(r["loss"]) for r in records if r["event"] == "step")

    # A fresh run into the same folder replaces the record instead of appending to it.
    again = Distiller(*make_pair(), temperature=2.0, alpha=0.5, lr=3e-2, log_every=5, **QUIET)
    again.fit(loader(train), epochs=2, out_dir=tmp_path, resume=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1]


def test_teacher_frozen_sees_the_students_view_and_stays_out_of_checkpoints(tmp_path):
    teacher, student = make_pair()
    seen = {"teacher": [], "student": []}
    teacher.register_forward_hook(lambda m, i, o: seen["teacher"].append(i[0].clone()))
    student.register_forward_hook(lambda m, i, o: seen["student"].append(i[0].clone()))

    class NoisyFrontend(nn.Module):  # a random augmentation: each call draws a new view
        def forward(self, x):
            return x + (torch.randn_like(x) if self.training else 0.0)

    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(teacher, student, frontend=NoisyFrontend(), lr=1e-2, **QUIET)
    distiller.fit(loader(ClusterDataset(48)), epochs=1, out_dir=tmp_path)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key])
    # After the probe batch, every training step fed the same augmented tensor to both.
    assert len(seen["teacher"]) == len(seen["student"]) == 1 + 3
    for t_view, s_view in zip(seen["teacher"][1:], seen["student"][1:], strict=True):
        assert torch.equal(t_view, s_view)

    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"student", "projectors", "optimizer", "scheduler", "scaler", "rng", "epoch",
            "step", "config", "teacher_fingerprint"} <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["teacher_fingerprint"] == distiller.teacher_fingerprint
    assert not any(key.startswith("teacher") for key in state if key != "teacher_fingerprint")
    assert state["epoch"] == 1 and state["batches_done"] == 0
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_cached_mode_fills_once_reads_back_and_rebuilds_when_stale(tmp_path):
    teacher, student = make_pair()
    dataset = ClusterDataset(40)
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    distiller = Distiller(teacher, student, teacher_mode="cached", lr=1e-2, **QUIET)
    distiller.fit(loader(dataset, 8), epochs=3, out_dir=tmp_path)
    # probe + one pass over the items in epoch 1; epochs 2 and 3 read the cache only
    assert sum(calls) == 8 + len(dataset)
    stored = np.memmap(tmp_path / "teacher_cache" / "logits.f32", dtype=np.float32, mode="r",
                       shape=(len(dataset), 1, NUM_CLASSES))
    np.testing.assert_allclose(stored[:, 0], outputs64(teacher, dataset.inputs), rtol=1e-5,
                               atol=1e-5)
    handle.remove()

    # another teacher in the same out_dir: the cache is stale and rebuilt with its outputs
    new_teacher, _ = make_pair(seed=7)
    with pytest.warns(RuntimeWarning, match="stale"):
        Distiller(new_teacher, student, teacher_mode="cached", **QUIET).fit(
            loader(dataset, 8), epochs=1, out_dir=tmp_path, resume=False)
    stored = np.memmap(tmp_path / "teacher_cache" / "logits.f32", dtype=np.float32, mode="r",
                       shape=(len(dataset), 1, NUM_CLASSES))
    np.testing.assert_allclose(stored[:, 0], outputs64(new_teacher, dataset.inputs),
                               rtol=1e-5, atol=1e-5)

    # a cache the user points at explicitly that belongs to another teacher is an error
    with pytest.raises(CacheMismatchError, match="another teacher"):
        Distiller(teacher, student, teacher_mode="cached",
                  cache_dir=tmp_path / "teacher_cache", **QUIET).fit(
            loader(dataset, 8), epochs=1, out_dir=tmp_path / "other")


def test_feature_pairs_train_projectors_on_linear_and_conv_taps(tmp_path):
    teacher, student = make_pair()
    distiller = Distiller(teacher, student, feature_pairs=[("body", "body")],
                          feature_weight=1.0, lr=1e-2, **QUIET)
    distiller.fit(loader(ClusterDataset(64)), epochs=1)
    projector = distiller.bundle.projectors[0]
    assert isinstance(projector, nn.Linear)
    assert tuple(projector.weight.shape) == (48, 8)  # student width 8 -> teacher width 48

    # Feature loss goes down; conv taps are channel-first and projected per time step.
    torch.manual_seed(0)
    conv_teacher, conv_student = ConvFrameModel(24), ConvFrameModel(6)
    frames = ClusterDataset(48, task="frame")
    distiller = Distiller(conv_teacher, conv_student, task="frame", alpha=1.0,
                          feature_pairs=[("conv", "conv")], feature_weight=1.0,
                          feature_kind="cosine", lr=2e-2, schedule="constant", **QUIET)
    distiller.evaluate(loader(frames, 16, False))  # builds the projector (first batch)
    projected_before = _feature_gap(distiller, frames)
    distiller.fit(loader(frames, 8), epochs=4)
    assert tuple(distiller.bundle.projectors[0].weight.shape) == (24, 6)
    assert _feature_gap(distiller, frames) < 0.7 * projected_before


def _feature_gap(distiller: Distiller, frames: ClusterDataset) -> float:
    """Mean float64 cosine distance between projected student and teacher conv features over
    valid frames."""
    with torch.no_grad():
        captured = {}
        hooks = [m.conv.register_forward_hook(
            lambda mod, i, o, key=key: captured.__setitem__(key, o.transpose(1, 2)))
            for key, m in (("s", distiller.student), ("t", distiller.teacher))]
        distiller.student(frames.inputs)
        distiller.teacher(frames.inputs)
        for hook in hooks:
            hook.remove()
        projector = distiller.bundle.projectors[0]
        student = projector(captured["s"]).double().numpy()
        teacher = captured["t"].double().numpy()
    valid = (np.arange(frames.inputs.shape[1])[None] < frames.lengths.numpy()[:, None])
    cosine = (student * teacher).sum(-1) / (np.linalg.norm(student, axis=-1)
                                            * np.linalg.norm(teacher, axis=-1))
    return float((1 - cosine)[valid].mean())


def test_multilabel_reduces_loss_and_metrics_match_reference():
    teacher, student = make_pair()
    train, val = ClusterDataset(128, task="multilabel"), ClusterDataset(48, task="multilabel",
                                                                        seed=3)
    distiller = Distiller(teacher, student, task="multilabel", alpha=0.5, lr=1e-2, **QUIET)
    before = distiller.evaluate(loader(val, 16, False))
    distiller.fit(loader(train), epochs=5)
    after = distiller.evaluate(loader(val, 16, False))
    assert after["kd_loss"] < 0.8 * before["kd_loss"]

    s = outputs64(distiller.student, val.inputs)
    t = outputs64(distiller.teacher, val.inputs)
    y = val.labels.numpy()
    softplus = lambda x: np.logaddexp(0.0, x)
    q = 1 / (1 + np.exp(-t / 2.0))
    kd = 4.0 * (q * softplus(-s / 2.0) + (1 - q) * softplus(s / 2.0))
    bce = y * softplus(-s) + (1 - y) * softplus(s)
    predicted = s > 0
    truth = y > 0.5
    tp = (predicted & truth).sum(0)
    fp = (predicted & ~truth).sum(0)
    fn = (~predicted & truth).sum(0)
    support = tp + fp + fn > 0
    assert after["kd_loss"] == pytest.approx(kd.mean(), rel=1e-4)
    assert after["ce_loss"] == pytest.approx(bce.mean(), rel=1e-4)
    assert after["accuracy"] == pytest.approx(np.mean(predicted == truth))
    assert after["macro_f1"] == pytest.approx(
        np.mean((2 * tp / np.maximum(2 * tp + fp + fn, 1))[support]))


def test_frame_task_ignores_padded_frames(tmp_path):
    frames = ClusterDataset(48, task="frame")
    results = []
    for garbage_scale in (1.0, -3.0):  # only the padded frames differ between the runs
        data = ClusterDataset(48, task="frame")
        padded = torch.arange(data.inputs.shape[1])[None] >= data.lengths[:, None]
        data.inputs[padded] *= garbage_scale
        torch.manual_seed(0)
        teacher, student = ConvFrameModel(24), ConvFrameModel(6)
        distiller = Distiller(teacher, student, task="frame", lr=1e-2, **QUIET)
        history = distiller.fit(loader(data, 8), loader(data, 16, False), epochs=3)
        results.append((trainable_state(distiller), history.last))
    for key, value in results[0][0].items():
        torch.testing.assert_close(results[1][0][key], value, rtol=0, atol=1e-6)
    assert results[0][1]["val_samples"] == len(frames)

    # evaluate() averages over valid frames only
    metrics = distiller.evaluate(loader(frames, 16, False))
    s = outputs64(distiller.student, frames.inputs)
    t = outputs64(distiller.teacher, frames.inputs)
    valid = frames.labels.numpy() != -100
    kd = kd_rows64(s, t, 2.0)[valid]
    labels = frames.labels.numpy()[valid]
    assert metrics["kd_loss"] == pytest.approx(kd.mean(), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(np.mean(s[valid].argmax(-1) == labels))


def test_grad_accumulation_normalises_by_the_global_valid_frame_count():
    """One step over 16 items as 1x16 or 4x4 micro-batches with different valid-frame counts
    equals a float64 step on the loss averaged over all valid frames of the window: SGD (the
    unfused path) moves by exactly ``-lr * grad``; fused AdamW divides the summed gradients by
    the global count in its kernel (``grad_scale``), leaving the normalised gradient behind."""
    data = ClusterDataset(16, task="frame", seed=5)
    params, grads = {}, {}
    for optimizer in ("sgd", "adamw"):
        for accum, batch in ((1, 16), (4, 4)):
            torch.manual_seed(0)
            teacher, student = ConvFrameModel(16), ConvFrameModel(6)
            distiller = Distiller(teacher, student, task="frame", alpha=0.5, optimizer=optimizer,
                                  lr=0.1, weight_decay=0.0, schedule="constant",
                                  grad_accum=accum, **QUIET)
            distiller.fit(loader(data, batch, shuffle=False), epochs=1)
            params[optimizer, accum] = trainable_state(distiller)
            grads[optimizer, accum] = {name: p.grad.clone()
                                       for name, p in distiller.student.named_parameters()}

    torch.manual_seed(0)
    teacher, student = ConvFrameModel(16), ConvFrameModel(6)
    teacher, student = teacher.double(), student.double()
    valid = data.labels != -100
    with torch.no_grad():
        t = teacher(data.inputs.double())
    s = student(data.inputs.double())
    log_p_t, log_p_s = torch.log_softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    kd = 4 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    ce = torch.nn.functional.cross_entropy(s.transpose(1, 2), data.labels, ignore_index=-100,
                                           reduction="none")
    loss = torch.where(valid, 0.5 * kd + 0.5 * ce, 0.0).sum() / valid.sum()
    loss.backward()
    for name, parameter in student.named_parameters():
        expected = parameter.detach() - 0.1 * parameter.grad
        for accum in (1, 4):
            torch.testing.assert_close(params["sgd", accum][f"student.{name}"].double(),
                                       expected, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(grads["adamw", accum][name].double(), parameter.grad,
                                       rtol=1e-4, atol=1e-6)


def _recording_mixup(monkeypatch) -> list:
    """Wrap the engine's mixup so a test sees each draw ``(mixed, lam, perm)``."""
    from kdcore.engine import trainer as trainer_module

    draws = []
    real = trainer_module.mixup

    def recorded(*args, **kwargs):
        draws.append(real(*args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(trainer_module, "mixup", recorded)
    return draws


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_mixup_online_teacher_sees_the_mixed_view_and_labels_mix(monkeypatch, alpha):
    """One SGD step with mixup equals a float64 step on
    ``alpha*T^2*KL(teacher(x')||student(x')) + (1-alpha)*(lam*CE(y_a) + (1-lam)*CE(y_b))``
    with ``x' = lam*x_a + (1-lam)*x_b`` fed to both models."""
    draws = _recording_mixup(monkeypatch)
    data = ClusterDataset(16, seed=4)
    teacher, student = make_pair()
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    start = {name: p.detach().double().clone() for name, p in student.named_parameters()}
    distiller = Distiller(teacher, student, temperature=2.0, alpha=alpha, mixup=0.4,
                          optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="constant",
                          **QUIET)
    distiller.fit(loader(data, 16, shuffle=False), epochs=1)
    assert len(draws) == 1 and len(seen) == 2  # the probe batch, then the mixed step
    _, lam, perm = draws[0]
    lam64 = lam.double()[:, None]
    mixed64 = lam64 * data.inputs.double() + (1 - lam64) * data.inputs.double()[perm]
    assert not torch.allclose(mixed64, data.inputs.double())
    torch.testing.assert_close(seen[1].double(), mixed64, rtol=1e-6, atol=1e-6)

    reference_teacher, reference_student = make_pair()
    reference_student.double()
    with torch.no_grad():
        t = reference_teacher.double()(mixed64)
    s = reference_student(mixed64)
    log_p_t, log_p_s = torch.log_softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    kd = 4 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    log_q = torch.log_softmax(s, -1)
    ce_a = -log_q.gather(1, data.labels[:, None])[:, 0]
    ce_b = -log_q.gather(1, data.labels[perm][:, None])[:, 0]
    mixed_ce = lam.double() * ce_a + (1 - lam.double()) * ce_b
    (alpha * kd + (1 - alpha) * mixed_ce).mean().backward()
    for name, parameter in reference_student.named_parameters():
        torch.testing.assert_close(distiller.student.get_parameter(name).double(),
                                   start[name] - 0.1 * parameter.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.4])
def test_unlabelled_rows_train_on_the_distillation_term_alone(monkeypatch, mix):
    """Rows labelled ``UNLABELLED`` (-1) add ``T^2*KL`` with weight 1 and no CE term; an
    ignored row (-100) drops out; the mean runs over the rows that count. With mixup a row
    whose partner is unlabelled is distilled only, one whose partner is ignored drops out.
    One SGD step against a float64 step."""
    from kdcore.data import UNLABELLED

    draws = _recording_mixup(monkeypatch)
    data = ClusterDataset(16, seed=5)
    data.labels[[1, 6, 7, 12]] = UNLABELLED
    data.labels[3] = -100
    teacher, student = make_pair()
    start = {name: p.detach().double().clone() for name, p in student.named_parameters()}
    alpha = 0.3
    distiller = Distiller(teacher, student, temperature=2.0, alpha=alpha, mixup=mix,
                          optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="constant",
                          **QUIET)
    distiller.fit(loader(data, 16, shuffle=False), epochs=1)

    labels = data.labels.clone()
    inputs64 = data.inputs.double()
    lam64 = torch.ones(16, dtype=torch.float64)
    partner = labels.clone()
    if mix:
        _, lam, perm = draws[0]
        lam64 = lam.double()
        partner = labels[perm]
        inputs64 = lam64[:, None] * inputs64 + (1 - lam64[:, None]) * inputs64[perm]
    dropped = (labels == -100) | (partner == -100)
    distil_only = ~dropped & ((labels == UNLABELLED) | (partner == UNLABELLED))
    labelled = ~dropped & ~distil_only
    assert labelled.sum() >= 4 and distil_only.sum() >= 2 and dropped.sum() >= 1

    reference_teacher, reference_student = make_pair()
    reference_student.double()
    with torch.no_grad():
        t = reference_teacher.double()(inputs64)
    s = reference_student(inputs64)
    log_p_t, log_p_s = torch.log_softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
    kd = 4 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    log_q = torch.log_softmax(s, -1)
    ce_a = -log_q.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    ce_b = -log_q.gather(1, partner.clamp(min=0)[:, None])[:, 0]
    ce = lam64 * ce_a + (1 - lam64) * ce_b
    per_row = torch.where(labelled, alpha * kd + (1 - alpha) * ce,
                          torch.where(distil_only, kd, 0.0))
    (per_row.sum() / (~dropped).sum()).backward()
    for name, parameter in reference_student.named_parameters():
        torch.testing.assert_close(distiller.student.get_parameter(name).double(),
                                   start[name] - 0.1 * parameter.grad, rtol=1e-4, atol=1e-6)

    metrics = distiller.evaluate(loader(data, 16, shuffle=False))
    with torch.no_grad():
        s_after = copy.deepcopy(distiller.student).double()(data.inputs.double())
        t_clean = reference_teacher(data.inputs.double())
    kept = labels != -100
    known = kept & (labels != UNLABELLED)
    kd_after = kd_rows64(s_after.numpy(), t_clean.numpy(), 2.0)
    assert metrics["kd_loss"] == pytest.approx(kd_after[kept.numpy()].mean(), rel=1e-4)
    predicted = s_after.argmax(-1)
    assert metrics["accuracy"] == pytest.approx(
        (predicted[known] == labels[known]).double().mean().item())


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_mixup_cached_stores_clean_outputs_and_mixes_distributions(tmp_path, task):
    """The cache holds the teacher's outputs of the clean items; a mixed step's targets are
    ``lam*p_a + (1-lam)*p_b`` of those at the temperature (sigmoids for multilabel)."""
    from kdcore.engine.distiller import Mix

    dataset = ClusterDataset(24, task=task)
    teacher, student = make_pair()
    distiller = Distiller(teacher, student, task=task, teacher_mode="cached", mixup=0.4,
                          temperature=3.0, lr=1e-2, **QUIET)
    distiller.fit(loader(dataset, 8), epochs=2, out_dir=tmp_path)
    stored = np.memmap(tmp_path / "teacher_cache" / "logits.f32", dtype=np.float32, mode="r",
                       shape=(len(dataset), 1, NUM_CLASSES))
    clean = outputs64(teacher, dataset.inputs)
    np.testing.assert_allclose(stored[:, 0], clean, rtol=1e-5, atol=1e-5)

    lam = torch.tensor([0.5, 0.7, 0.99, 1.0, 0.6, 0.8])
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    logits = torch.from_numpy(clean[:6]).float()
    logits[4, 2] = -math.inf if task == "multiclass" else logits[4, 2]
    mixed = distiller._mix_teacher({"logits": logits}, Mix(lam, perm))["logits"].double()
    scaled = logits.double() / 3.0
    weight = lam.double()[:, None]
    if task == "multiclass":
        expected = (weight * torch.softmax(scaled, -1)
                    + (1 - weight) * torch.softmax(scaled, -1)[perm])
        got = torch.softmax(mixed / 3.0, -1)
    else:
        expected = weight * torch.sigmoid(scaled) + (1 - weight) * torch.sigmoid(scaled)[perm]
        got = torch.sigmoid(mixed / 3.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(mixed).all()  # a class -inf in one row only stays reachable


# ------------------------------------------------------------------------------------------
# Faults
# ------------------------------------------------------------------------------------------


class PoisonedDataset(ClusterDataset):
    """Items whose id is in ``poisoned`` are NaN."""

    def __init__(self, size: int, poisoned: set[int]) -> None:
        super().__init__(size)
        self.poisoned = poisoned

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        if index in self.poisoned:
            item["input"] = torch.full_like(item["input"], float("nan"))
        return item


def test_nonfinite_loss_skips_the_step_then_stops_with_the_checkpoint_intact(tmp_path):
    teacher, student = make_pair()
    # batch 8, no shuffle: batch 2 (items 16..23) is poisoned; the others are clean
    data = PoisonedDataset(48, poisoned={17})
    distiller = Distiller(teacher, student, lr=1e-2, log_every=1, checkpoint_every=1,
                          max_nonfinite=3, **QUIET)
    snapshots = []
    original_step = distiller.loop._window_step

    def recording_step(window, meter):
        result = original_step(window, meter)
        snapshots.append(trainable_state(distiller))
        return result

    distiller.loop._window_step = recording_step
    with pytest.warns(RuntimeWarning, match="skipped 1 optimizer step"):
        history = distiller.fit(loader(data, 8, shuffle=False), epochs=1, out_dir=tmp_path)
    for key, value in snapshots[1].items():  # the poisoned step left every parameter alone
        assert torch.equal(snapshots[2][key], value)
        assert torch.all(torch.isfinite(snapshots[-1][key]))
    assert history.last["skipped_steps"] == 1
    assert not torch.equal(snapshots[3]["student.head.weight"], snapshots[2]["student.head.weight"])

    # Every batch poisoned after the first two steps: stop after 3 in a row.
    out = tmp_path / "stop"
    teacher, student = make_pair()
    distiller = Distiller(teacher, student, lr=1e-2, log_every=1, checkpoint_every=1,
                          max_nonfinite=3, **QUIET)
    data = PoisonedDataset(48, poisoned=set(range(16, 48)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row"):
            distiller.fit(loader(data, 8, shuffle=False), epochs=1, out_dir=out)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4  # two good steps, then two skipped ones that changed nothing
    for key, value in state["student"].items():
        assert torch.all(torch.isfinite(value))
        assert torch.equal(value, distiller.student.state_dict()[key])


# ------------------------------------------------------------------------------------------
# Configuration errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"feature_pairs": [("body.7", "body")], "feature_weight": 1.0}, ValueError,
     "student has no module 'body.7'"),
    ({"feature_pairs": [("body", "nope")], "feature_weight": 1.0}, ValueError,
     "teacher has no module 'nope'"),
    ({"alpha": 1.5}, ValueError, "alpha"),
    ({"alpha": -0.1}, ValueError, "alpha"),
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"task": "sequence"}, ValueError, "task"),
    ({"teacher_mode": "offline"}, ValueError, "teacher_mode"),
    ({"grad_accum": 0}, ValueError, "grad_accum"),
    ({"feature_weight": 1.0}, ValueError, "feature_pairs"),
    ({"cuda_graphs": True, "device": "cpu"}, ValueError, "CUDA"),
    ({"precision": "int8"}, ValueError, "precision"),
    ({"mixup": -0.2}, ValueError, "mixup"),
    ({"mixup": 0.4, "task": "frame"}, ValueError, "mixup"),
])
def test_bad_configuration_raises_before_training(kwargs, error, match):
    teacher, student = make_pair()
    with pytest.raises(error, match=match):
        Distiller(teacher, student, **kwargs)


def test_class_count_mismatch_and_missing_item_ids_raise(tmp_path):
    teacher, _ = make_pair()
    student = nn.Linear(12, NUM_CLASSES + 1)
    with pytest.raises(ValueError, match="same number of classes, got 6 .student. and 5"):
        Distiller(teacher, student, **QUIET).fit(loader(ClusterDataset(16)), epochs=1)

    teacher, student = make_pair()
    data = ClusterDataset(16)
    unindexed = DataLoader([(data.inputs[i], data.labels[i]) for i in range(16)], batch_size=8)
    with pytest.raises(ValueError, match="needs item ids"):
        Distiller(teacher, student, teacher_mode="cached", **QUIET).fit(
            unindexed, epochs=1, out_dir=tmp_path)
    with pytest.raises(TypeError, match="teacher must be a torch.nn.Module"):
        Distiller(lambda x: x, student)


def test_out_of_range_labels_are_refused_on_the_host(tmp_path):
    teacher, student = make_pair()
    data = ClusterDataset(16)
    bad = DataLoader([(data.inputs[i], torch.tensor(NUM_CLASSES + 2), i) for i in range(16)],
                     batch_size=8)
    with pytest.raises(ValueError, match="batch 'label' must hold class ids"):
        Distiller(teacher, student, **QUIET).fit(bad, epochs=1, out_dir=tmp_path)


@pytest.mark.slow
def test_compile_true_matches_eager_training_through_hooks_and_fused_ops():
    states = {}
    for compiled in (False, True):
        teacher, student = make_pair()
        distiller = Distiller(teacher, student, compile=compiled, lr=3e-2,
                              feature_pairs=[("body", "body")], feature_weight=0.5, **QUIET)
        history = distiller.fit(loader(ClusterDataset(96), 16), epochs=2)
        assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
        states[compiled] = trainable_state(distiller)
    assert isinstance(distiller._train_call, torch._dynamo.eval_frame.OptimizedModule)
    for name, value in states[False].items():
        torch.testing.assert_close(states[True][name], value, rtol=1e-3, atol=1e-4)


def test_block_taps_of_zoo_models_are_channel_first_and_projected():
    """Tapping whole conv blocks (nn.Sequential ending in BN/ReLU/pool) projects channels, and
    the feature loss on them matches a float64 MSE of the 1x1-projected student block."""
    from kdcore.engine.hooks import is_channel_first
    from kdcore.models import create

    torch.manual_seed(0)
    teacher = create("teacher_cnn", 5, n_mels=16, width=4).eval()
    student = create("student_dscnn", 5, n_mels=16, width=4)
    assert is_channel_first(student.blocks[3]) and is_channel_first(teacher.blocks[3])
    assert not is_channel_first(student) and not is_channel_first(nn.ReLU())
    assert not is_channel_first(nn.Sequential(nn.Linear(4, 4), nn.GELU()))

    features = torch.randn(6, 16, 33)
    labels = torch.randint(0, 5, (6,))
    distiller = Distiller(teacher, student, feature_pairs=[("blocks.3", "blocks.3")],
                          feature_weight=1.0, alpha=1.0, **QUIET)
    distiller.evaluate([(features, labels)])  # builds the projector on the first batch
    projector = distiller.bundle.projectors[0]
    assert tuple(projector.weight.shape) == (32, 16)  # channels 4*4 -> 8*4

    captured = {}
    hooks = [model.blocks[3].register_forward_hook(
        lambda module, inputs, output, key=key: captured.__setitem__(key, output))
        for key, model in (("student", student), ("teacher", teacher))]
    student.eval()
    with torch.no_grad():
        student(features)
        teacher(features)
    for hook in hooks:
        hook.remove()
    student_map = captured["student"].double()  # (B, 16, F', T')
    teacher_map = captured["teacher"].double()  # (B, 32, F', T')
    assert student_map.shape[2:] == teacher_map.shape[2:]
    projected = (torch.einsum("bcft,dc->bdft", student_map, projector.weight.double())
                 + projector.bias.double()[None, :, None, None])
    expected = ((projected - teacher_map) ** 2).mean().item()
    measured = distiller.evaluate([(features, labels)])
    # alpha=1: the objective is the KD term plus feature_weight (1) times the feature MSE.
    assert measured["loss"] - measured["kd_loss"] == pytest.approx(expected, rel=1e-4)
