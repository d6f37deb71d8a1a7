"""Teacher sources (a callable teacher in cached mode), the cache key (data content, frontend
settings, task), the refusal of a randomly augmenting cached frontend, separate teacher and
student frontends, and the frame-centre alignment rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcore.engine import CacheMismatchError, Distiller, align_frames
from kdcore.engine.teachers import data_fingerprint, module_config
from kdcore.frontend import LogMel
from tests.engine_script import NUM_CLASSES, ClusterDataset, make_pair

QUIET = {"progress": False, "device": "cpu"}


def loader(dataset, batch=8):
    return DataLoader(dataset, batch_size=batch, shuffle=False)


def stored_logits(directory, items):
    return np.memmap(directory / "logits.f32", dtype=np.float32, mode="r",
                     shape=(items, 1, NUM_CLASSES)).copy()


def test_a_callable_teacher_runs_cached_and_its_fingerprint_keys_the_cache(tmp_path):
    teacher, student = make_pair()
    calls = []

    def session(features):  # e.g. an onnxruntime session behind a function: numpy in and out
        calls.append(features.shape[0])
        with torch.no_grad():
            return teacher(torch.as_tensor(features)).numpy()

    data = ClusterDataset(24)
    distiller = Distiller(session, student, teacher_fingerprint="model.onnx:v1", **QUIET)
    distiller.fit(loader(data), epochs=2, out_dir=tmp_path)
    assert sum(calls) == 8 + len(data)  # the probe, then each item once
    with torch.no_grad():
        expected = teacher(data.inputs).numpy()
    np.testing.assert_allclose(stored_logits(tmp_path / "teacher_cache", 24)[:, 0], expected,
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="teacher_fingerprint"):
        Distiller(session, student, **QUIET)


def test_the_cache_is_rebuilt_for_other_data_of_the_same_length(tmp_path):
    teacher, student = make_pair()
    first, second = ClusterDataset(24, seed=1), ClusterDataset(24, seed=2)
    Distiller(teacher, student, teacher_mode="cached", **QUIET).fit(
        loader(first), epochs=1, out_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="stale"):
        Distiller(teacher, student, teacher_mode="cached", **QUIET).fit(
            loader(second), epochs=1, out_dir=tmp_path, resume=False)
    with torch.no_grad():
        expected = teacher(second.inputs).numpy()
    np.testing.assert_allclose(stored_logits(tmp_path / "teacher_cache", 24)[:, 0], expected,
                               rtol=1e-5, atol=1e-5)
    # a named cache directory built on other data is an error naming the differing field
    with pytest.raises(CacheMismatchError, match="data"):
        Distiller(teacher, student, teacher_mode="cached", cache_dir=tmp_path / "teacher_cache",
                  **QUIET).fit(loader(first), epochs=1, resume=False)


def test_data_and_frontend_fingerprints_see_what_state_dicts_miss(tmp_path):
    assert data_fingerprint(ClusterDataset(8, seed=1)) != data_fingerprint(
        ClusterDataset(8, seed=2))
    assert data_fingerprint(ClusterDataset(8, seed=1)) == data_fingerprint(
        ClusterDataset(8, seed=1))
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)

    class Files:
        def __init__(self) -> None:
            self.paths = [audio]

    before = data_fingerprint(Files())
    audio.write_bytes(b"x" * 11)
    assert data_fingerprint(Files()) != before

    class Declared:
        def fingerprint(self) -> str:
            return "v7"

    assert data_fingerprint(Declared()) == "v7"
    # LogMel's filterbank is computed, not stored: the settings tell 32 from 80 mels
    a, b = LogMel(n_mels=32), LogMel(n_mels=80)
    c = LogMel(n_mels=32, hop_length=64)
    assert module_config(a) != module_config(b) != module_config(c)
    assert module_config(a) != module_config(c)


def test_a_randomly_augmenting_teacher_frontend_is_refused_in_cached_mode(tmp_path):
    class Jitter(nn.Module):
        def forward(self, x):
            return x + 0.1 * torch.randn_like(x) if self.training else x

    teacher, student = make_pair()
    with pytest.raises(ValueError, match="augments at random"):
        Distiller(teacher, student, frontend=Jitter(), teacher_mode="cached", **QUIET).fit(
            loader(ClusterDataset(16)), epochs=1, out_dir=tmp_path)
    declared = Jitter()
    declared.deterministic_views = True
    teacher, student = make_pair()
    Distiller(teacher, student, frontend=declared, teacher_mode="cached", **QUIET).fit(
        loader(ClusterDataset(16)), epochs=1, out_dir=tmp_path / "declared")
    # a deterministic teacher frontend beside a random student one is fine
    teacher, student = make_pair()
    Distiller(teacher, student, teacher_frontend=nn.Identity(), student_frontend=Jitter(),
              teacher_mode="cached", **QUIET).fit(loader(ClusterDataset(16)), epochs=1,
                                                  out_dir=tmp_path / "split")


def test_teacher_and_student_see_their_own_frontends():
    seen = {}

    class Scale(nn.Module):
        def __init__(self, factor: float, name: str) -> None:
            super().__init__()
            self.factor, self.name = factor, name

        def forward(self, x):
            seen[self.name] = x.clone()
            return x * self.factor

    teacher, student = make_pair()
    inputs = []
    teacher.register_forward_hook(lambda m, i, o: inputs.append(("teacher", i[0].clone())))
    student.register_forward_hook(lambda m, i, o: inputs.append(("student", i[0].clone())))
    data = ClusterDataset(8)
    Distiller(teacher, student, teacher_frontend=Scale(2.0, "t"),
              student_frontend=Scale(-1.0, "s"), **QUIET).fit(loader(data), epochs=1)
    last = dict(inputs[-2:])
    torch.testing.assert_close(last["teacher"], 2.0 * data.inputs)
    torch.testing.assert_close(last["student"], -1.0 * data.inputs)


def test_frame_centre_alignment_rule_and_the_rate_mismatch_error():
    # teacher at 50 frames/s, student at 100 frames/s over 0.1 s: student frame j (centre
    # (j + 0.5) / 100 s) takes teacher frame floor((j + 0.5) / 2)
    teacher = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    aligned = align_frames(teacher, 10, 50.0, 100.0)
    assert aligned[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # teacher faster than the student: 3 teacher frames per student frame, centres pick the
    # middle one
    teacher = torch.arange(12, dtype=torch.float32).reshape(1, 12, 1)
    assert align_frames(teacher, 4, 300.0, 100.0)[0, :, 0].tolist() == [1, 4, 7, 10]
    # equal counts without rates pass through; unequal counts without rates are an error
    assert align_frames(teacher, 12, None, None) is teacher
    with pytest.raises(ValueError, match="teacher_frame_rate"):
        align_frames(teacher, 4, None, None)
    # 2 s of student audio at 100/s needs ~100 teacher frames at 50/s; 97 is off by 3 > 2
    with pytest.raises(ValueError, match=r"50/s.*100/s"):
        align_frames(torch.zeros(1, 97, 3), 200, 50.0, 100.0)
    align_frames(torch.zeros(1, 99, 3), 200, 50.0, 100.0)  # within one frame per second


def test_a_frame_teacher_at_another_rate_distils_through_alignment():
    class Pool(nn.Module):  # the teacher sees half the frames
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(12, NUM_CLASSES)

        def forward(self, x):
            return self.head(x[:, ::2])

    torch.manual_seed(0)
    teacher, student = Pool(), nn.Linear(12, NUM_CLASSES)
    data = ClusterDataset(8, task="frame", frames=8)
    distiller = Distiller(teacher, student, task="frame", teacher_frame_rate=50.0,
                          student_frame_rate=100.0, **QUIET)
    history = distiller.fit(loader(data), epochs=1)
    assert np.isfinite(history.last["train_loss"])
    with pytest.raises(ValueError, match="teacher_frame_rate"):
        Distiller(Pool(), nn.Linear(12, NUM_CLASSES), task="frame", **QUIET).fit(
            loader(data), epochs=1)


def test_fill_teacher_cache_ahead_of_time_is_read_back_by_the_distiller(tmp_path):
    from kdcore.engine import fill_teacher_cache

    teacher, student = make_pair()
    data = ClusterDataset(16, seed=3)
    fill_teacher_cache(teacher, loader(data), tmp_path / "cache")
    with torch.no_grad():
        expected = teacher(data.inputs).numpy()
    np.testing.assert_allclose(stored_logits(tmp_path / "cache", 16)[:, 0], expected,
                               rtol=1e-6, atol=1e-6)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    Distiller(teacher, student, teacher_mode="cached", cache_dir=tmp_path / "cache",
              **QUIET).fit(loader(data), epochs=1)
    assert sum(calls) == 8  # the probe batch only: every training item came from the cache


def test_fill_teacher_cache_continues_an_interrupted_fill_and_shows_one_bar(tmp_path, capsys):
    from kdcore.engine import fill_teacher_cache

    teacher, _ = make_pair()
    data = ClusterDataset(24, seed=4)
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))

    class Interrupted(Exception):
        pass

    def stopping(batches):  # the first two of three batches, then a crash
        for position, batch in enumerate(batches):
            if position == 2:
                raise Interrupted
            yield batch

    class Stops:
        dataset = data

        def __iter__(self):
            return stopping(loader(data))

        def __len__(self):
            return 3

    with pytest.raises(Interrupted):
        fill_teacher_cache(teacher, Stops(), tmp_path / "cache")
    assert calls == [8, 8]
    calls.clear()
    fill_teacher_cache(teacher, loader(data), tmp_path / "cache", progress=True,
                       description="filling")
    assert calls == [8, 8]  # the first batch (output shapes), then only the missing third
    handle.remove()
    with torch.no_grad():
        expected = teacher(data.inputs).numpy()
    np.testing.assert_allclose(stored_logits(tmp_path / "cache", 24)[:, 0], expected,
                               rtol=1e-6, atol=1e-6)
    assert "filling" in capsys.readouterr().err
