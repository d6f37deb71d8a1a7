"""The loop's features: plain supervised training, validation, best.pt and patience, gradient
clipping, EMA, the resume policy of planned schedules, and config validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcore import defaults
from kdcore.engine import Distiller, LoopConfig, ObjectiveConfig, TeacherConfig, Trainer, train
from tests.engine_script import NUM_CLASSES, NUM_FEATURES, ClusterDataset, make_pair

QUIET = {"progress": False, "device": "cpu"}


def loader(dataset, batch=8, shuffle=True):
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle)


def test_trainer_learns_labels_alone_and_saves_the_model_under_its_own_key(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
    trainer = Trainer(model, lr=1e-2, **QUIET)
    history = trainer.fit(loader(ClusterDataset(64)), loader(ClusterDataset(32, seed=9)),
                          epochs=4, out_dir=tmp_path)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.last["val_accuracy"] > 0.6
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert "model" in state and "student" not in state and "teacher_fingerprint" not in state
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    # the functional form trains the same way
    torch.manual_seed(0)
    again = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
    history2 = train(again, loader(ClusterDataset(64)), epochs=4, lr=1e-2, **QUIET)
    assert history2.last["train_loss"] == pytest.approx(history.last["train_loss"], rel=1e-6)


def test_one_sgd_step_of_the_trainer_is_the_float64_cross_entropy_step():
    data = ClusterDataset(16, seed=3)
    torch.manual_seed(0)
    model = nn.Linear(NUM_FEATURES, NUM_CLASSES)
    reference = nn.Linear(NUM_FEATURES, NUM_CLASSES).double()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    Trainer(model, optimizer="sgd", lr=0.3, schedule="constant", weight_decay=0.0,
            grad_accum=2, **QUIET).fit(loader(data, 8, shuffle=False), epochs=1)
    logits = reference(data.inputs.double())
    log_p = logits - torch.logsumexp(logits, -1, keepdim=True)
    (-log_p.gather(1, data.labels[:, None]).mean()).backward()
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(model.state_dict()[name].double(),
                                   parameter.detach() - 0.3 * parameter.grad, rtol=1e-5,
                                   atol=1e-7)


def test_best_checkpoint_by_a_chosen_metric_and_patience_stops_early(tmp_path):
    teacher, student = make_pair()
    # lr 0 after warm-up-free constant schedule: nothing improves, so patience 2 stops at 3
    distiller = Distiller(teacher, student, lr=1e-9, schedule="constant", patience=2,
                          best_metric="val_accuracy", **QUIET)
    history = distiller.fit(loader(ClusterDataset(32)), loader(ClusterDataset(16, seed=4)),
                            epochs=10, out_dir=tmp_path)
    assert len(history.epochs) == 3
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["metric"] == "val_accuracy" and best["epoch"] == 0
    assert best["value"] == history.epochs[0]["val_accuracy"]
    assert "student" in best and best["ema"] is False


def test_clip_grad_norm_bounds_the_normalised_gradient_of_one_sgd_step():
    data = ClusterDataset(16, seed=2)
    steps = {}
    for clip in (None, "half"):
        if clip == "half":
            clip = float(steps[None].norm()) / 2
        teacher, student = make_pair()
        before = {k: v.clone() for k, v in student.state_dict().items()}
        Distiller(teacher, student, optimizer="sgd", lr=1.0, schedule="constant",
                  weight_decay=0.0, clip_grad_norm=clip, **QUIET).fit(
            loader(data, 16, shuffle=False), epochs=1)
        # SGD with momentum: the first step is -lr * grad
        steps[clip] = torch.cat([(before[k] - v).reshape(-1)
                                 for k, v in student.state_dict().items()])
    clipped = steps[float(steps[None].norm()) / 2]
    torch.testing.assert_close(clipped.norm(), steps[None].norm() / 2, rtol=1e-4, atol=0)
    torch.testing.assert_close(clipped, steps[None] / 2, rtol=1e-3, atol=1e-6)


def test_ema_weights_follow_the_recurrence_are_evaluated_and_saved(tmp_path):
    data = ClusterDataset(24, seed=1)
    teacher, student = make_pair()
    snapshots = []
    distiller = Distiller(teacher, student, optimizer="sgd", lr=0.1, schedule="constant",
                          ema=0.5, **QUIET)
    initial = {k: v.clone().double() for k, v in student.state_dict().items()}
    original = distiller.loop._window_step

    def recording(window, meter):
        result = original(window, meter)
        snapshots.append({k: v.clone().double() for k, v in student.state_dict().items()})
        return result

    distiller.loop._window_step = recording
    distiller.fit(loader(data, 8, shuffle=False), loader(data, 8), epochs=1, out_dir=tmp_path)
    expected = initial
    for snapshot in snapshots:
        expected = {k: 0.5 * expected[k] + 0.5 * snapshot[k] for k in expected}
    ema = distiller.loop.ema.student.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(ema[key].double(), value, rtol=1e-6, atol=1e-7)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["ema"] is True
    for key in expected:
        assert torch.equal(best["student"][key], ema[key])
    with_ema = distiller.evaluate(loader(data, 8))
    without = distiller.evaluate(loader(data, 8), use_ema=False)
    assert with_ema["loss"] != without["loss"]


def test_resuming_a_onecycle_run_with_more_epochs_names_epochs(tmp_path):
    teacher, student = make_pair()
    Distiller(teacher, student, **QUIET).fit(loader(ClusterDataset(16)), epochs=1,
                                             out_dir=tmp_path)
    teacher, student = make_pair()
    with pytest.raises(ValueError, match="epochs=3"):
        Distiller(teacher, student, **QUIET).fit(loader(ClusterDataset(16)), epochs=3,
                                                 out_dir=tmp_path)
    # a constant schedule has no plan: more epochs continue the run
    out = tmp_path / "constant"
    teacher, student = make_pair()
    Distiller(teacher, student, schedule="constant", **QUIET).fit(
        loader(ClusterDataset(16)), epochs=1, out_dir=out)
    teacher, student = make_pair()
    history = Distiller(teacher, student, schedule="constant", **QUIET).fit(
        loader(ClusterDataset(16)), epochs=2, out_dir=out)
    assert [r["epoch"] for r in history.epochs] == [0, 1]


def test_configs_take_their_defaults_from_kdcore_defaults_and_validate_once():
    assert LoopConfig().lr == defaults.LR
    assert ObjectiveConfig().temperature == defaults.TEMPERATURE
    assert ObjectiveConfig().alpha == defaults.ALPHA
    assert set(LoopConfig().to_dict()) == set(LoopConfig.fields())
    for bad, match in (({"ema": 1.0}, "ema"), ({"clip_grad_norm": 0.0}, "clip_grad_norm"),
                       ({"patience": 0}, "patience"), ({"best_mode": "up"}, "best_mode")):
        with pytest.raises(ValueError, match=match):
            LoopConfig(**bad)
    with pytest.raises(ValueError, match="mixup"):
        ObjectiveConfig(task="ctc", mixup=0.2)
    with pytest.raises(ValueError, match="feature_pairs"):
        TeacherConfig(feature_weight=1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        Distiller(*make_pair(), learning_rate=1.0)


def test_on_epoch_entries_join_the_record_and_the_callback_changes_nothing_trained(tmp_path):
    import json

    def run(callback, out):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(NUM_FEATURES, 16), nn.Dropout(0.3),
                              nn.Linear(16, NUM_CLASSES))
        best = {"best_metric": "probe", "best_mode": "max"} if callback is not None else {}
        trainer = Trainer(model, lr=1e-2, **best, **QUIET)
        history = trainer.fit(loader(ClusterDataset(48)), epochs=3, out_dir=out,
                              on_epoch=callback)
        return model, history

    seen = []

    def callback(record):
        seen.append(dict(record))
        record["train_loss"] = -1.0  # a copy: the run's record is untouched
        torch.rand(100)  # draws from the global RNG, which the loop restores
        return {"probe": float(len(seen)), "epoch_seen": record["epoch"]}

    model, history = run(callback, tmp_path / "a")
    plain, _ = run(None, tmp_path / "b")
    for key, value in plain.state_dict().items():  # dropout draws unchanged: bitwise equal
        assert torch.equal(model.state_dict()[key], value), key
    assert [r["epoch"] for r in seen] == [0, 1, 2]
    assert [r["probe"] for r in history.epochs] == [1.0, 2.0, 3.0]
    assert all(r["train_loss"] > 0 and r["epoch_seen"] == r["epoch"] for r in history.epochs)
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text()
              .splitlines()]
    assert [r["probe"] for r in logged if r["event"] == "epoch"] == [1.0, 2.0, 3.0]
    best = torch.load(tmp_path / "a" / "checkpoints" / "best.pt", weights_only=True)
    assert best["metric"] == "probe" and best["value"] == 3.0 and best["epoch"] == 2

    with pytest.raises(ValueError, match="train_loss"):
        run(lambda record: {"train_loss": 0.0}, tmp_path / "c")
    with pytest.raises(TypeError, match="on_epoch"):
        run(lambda record: [1.0], tmp_path / "d")
