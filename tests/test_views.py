"""Deterministic views and the view cache (kdcore.engine.views): regeneration, KD equivalence
between cached and online teachers on the same views, mixed labels, resume, keys, fp16."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdcore.data import UNLABELLED
from kdcore.engine import (
    CacheMismatchError,
    Distiller,
    ViewConfig,
    ViewSet,
    fill_view_cache,
    make_objective,
)
from kdcore.engine.batches import parse_batch
from kdcore.engine.cache import TeacherCache
from kdcore.engine.config import ObjectiveConfig
from kdcore.engine.objectives import Mix

LENGTH, CLASSES, RATE = 96, 4, 800


class Clips(torch.utils.data.Dataset):
    """Fixed random clips with class ids (deterministic items)."""

    def __init__(self, count: int = 10, seed: int = 0, labels: list[int] | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.waves = torch.randn(count, LENGTH, generator=generator)
        self.labels = torch.tensor(labels if labels is not None
                                   else [i % CLASSES for i in range(count)])

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int):
        return self.waves[index], int(self.labels[index]), index


class Recorder(nn.Module):
    """A linear teacher that records every input row it sees; its logits are float32
    values (computed in float64, then rounded), so a float32 cache stores them exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(LENGTH, CLASSES).double()
        self.seen: list[bytes] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += [row.numpy().tobytes() for row in x.detach().float().cpu()]
        return self.linear(x.double()).float()


def views_of(dataset, **config) -> ViewSet:
    return ViewSet(dataset, ViewConfig(views=3, **config), sample_rate=RATE, seed=5)


def test_view_is_regenerated_bitwise_and_is_what_the_teacher_saw(tmp_path):
    views = views_of(Clips())
    teacher = Recorder()
    fill_view_cache(teacher, views, tmp_path / "cache", batch_size=4, progress=False)
    seen = set(teacher.seen)
    assert len(seen) >= len(views) * 3
    for view in range(3):
        for index in range(len(views)):
            first = views.item(index, view)["waveform"]
            again = ViewSet(Clips(), ViewConfig(views=3), sample_rate=RATE,
                            seed=5).item(index, view)["waveform"]
            assert torch.equal(first, again)
            assert first.numpy().tobytes() in seen
    # every epoch the student's rows are rows the teacher saw, and the epochs cycle views
    student_rows = []
    for epoch in range(4):
        views.set_epoch(epoch)
        student_rows += [views[i]["waveform"].numpy().tobytes() for i in range(len(views))]
    assert set(student_rows) <= seen
    assert [views.view_of(0, e) for e in range(4)] == [
        (views.view_of(0, 0) + e) % 3 for e in range(4)]


def test_view_mixes_waveforms_and_labels_alike():
    clips = Clips()
    views = views_of(clips, gain_db=(0.0, 0.0), max_shift_s=0.0, noise_snr_db=None)
    for index in range(len(views)):
        item = views.item(index, 1)
        params = views.params(index, 1)
        j, lam = params.partner, params.lam
        assert j is not None and j != index and 0.5 <= lam <= 1.0
        lam32 = np.float32(lam)
        expected = lam32 * clips.waves[index].numpy() + (np.float32(1) - lam32) * \
            clips.waves[j].numpy()
        np.testing.assert_array_equal(item["waveform"].numpy(), expected)
        assert item["label"] == int(clips.labels[index])
        assert item["partner_label"] == int(clips.labels[j])
        assert float(item["lam"]) == pytest.approx(lam, rel=1e-7)
    # gain, shift and noise against a numpy re-derivation
    views = views_of(clips, view_mixup=0.0)
    item, params = views.item(3, 2), views.params(3, 2)
    x = clips.waves[3].double().numpy() * 10 ** (params.gain_db / 20)
    x = np.roll(x, params.shift)
    if params.shift > 0:
        x[:params.shift] = 0
    elif params.shift < 0:
        x[params.shift:] = 0
    noise = torch.randn(LENGTH, generator=torch.Generator().manual_seed(params.noise_seed))
    x = x + np.sqrt(np.mean(x ** 2) / 10 ** (params.snr_db / 10)) * noise.double().numpy()
    np.testing.assert_allclose(item["waveform"].numpy(), x, rtol=1e-5, atol=1e-6)


def _reference_loss(student, teacher, labels, partner, lam, temperature, alpha):
    """alpha * T^2 KL(p_t || p_s) + (1 - alpha) * (lam CE(y) + (1 - lam) CE(y')), float64."""
    s, t = student.double(), teacher.double()
    log_ps = torch.log_softmax(s / temperature, -1)
    log_pt = torch.log_softmax(t / temperature, -1)
    kd = temperature ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    log_p = torch.log_softmax(s, -1)
    rows = torch.arange(len(labels))
    ce = -(lam.double() * log_p[rows, labels] + (1 - lam.double()) * log_p[rows, partner])
    return (alpha * kd + (1 - alpha) * ce).sum()


def test_kd_on_cached_views_equals_online_kd_on_the_same_views(tmp_path):
    views = views_of(Clips(12))
    teacher = Recorder()
    fill_view_cache(teacher, views, tmp_path / "cache", batch_size=5, progress=False)

    # the objective on cached rows equals a float64 re-derivation of online KD on the views
    loader = DataLoader(views, batch_size=6, shuffle=False)
    batch = parse_batch(next(iter(loader)))
    cache = TeacherCache(tmp_path / "cache", {}, len(views), 3, {"logits": (CLASSES,)})
    cache.open()
    cached = cache.lookup(batch.index, batch.view, batch.size)["logits"]
    online = teacher.linear(batch.inputs.double())  # float64, independent of the cache
    torch.testing.assert_close(cached.double(), online, rtol=1e-6, atol=1e-6)
    student = torch.randn(batch.size, CLASSES, dtype=torch.float64)
    config = ObjectiveConfig(temperature=2.0, alpha=0.9, loss_backend="reference")
    terms = make_objective(config)(student.float(), cached, batch,
                                   Mix(batch.lam, None, batch.partner_labels))
    reference = _reference_loss(student.float(), online, batch.labels, batch.partner_labels,
                                batch.lam, 2.0, 0.9)
    torch.testing.assert_close(terms.loss.double(), reference, rtol=1e-5, atol=1e-5)

    # whole runs: the cached view cache and the online teacher give the same student
    def run(mode: str, out):
        torch.manual_seed(0)
        student = nn.Linear(LENGTH, CLASSES)
        kwargs = {"cache_dir": tmp_path / "cache"} if mode == "cached" else {}
        distiller = Distiller(teacher, student, teacher_mode=mode, progress=False,
                              device="cpu", seed=3, loss_backend="reference", **kwargs)
        distiller.fit(DataLoader(views, batch_size=4, shuffle=True), epochs=4, out_dir=out)
        return student, distiller

    teacher.seen.clear()
    cached_student, _ = run("cached", tmp_path / "a")
    assert len(teacher.seen) == 4  # the probe batch only: no teacher pass in training
    online_student, online = run("online", tmp_path / "b")
    for a, b in zip(cached_student.parameters(), online_student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert online.history.epochs[-1]["train_loss"] > 0


def test_partial_fill_resumes_and_fp16_storage_error(tmp_path):
    views = views_of(Clips())
    teacher = Recorder()

    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = teacher, 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 4:  # the probe, then 3 batches
                raise KeyboardInterrupt
            return self.inner(x)

    fingerprint = "teacher-v1"
    with pytest.raises(KeyboardInterrupt):
        fill_view_cache(Failing(), views, tmp_path / "part", batch_size=4, progress=False,
                        teacher_fingerprint=fingerprint)
    teacher.seen.clear()
    fill_view_cache(teacher, views, tmp_path / "part", batch_size=4, progress=False,
                    teacher_fingerprint=fingerprint)
    # the first 3 batches (4 + 4 + 2 rows: all of view 0) were stored; the probe and the
    # two views still missing run now
    assert math.ceil(len(views) / 4) == 3
    assert len(teacher.seen) == 1 + 2 * len(views)
    fill_view_cache(teacher, views, tmp_path / "full", batch_size=4, progress=False,
                    teacher_fingerprint=fingerprint)
    part = np.fromfile(tmp_path / "part" / "logits.f32", dtype=np.float32)
    full = np.fromfile(tmp_path / "full" / "logits.f32", dtype=np.float32)
    np.testing.assert_array_equal(part, full)
    assert (np.fromfile(tmp_path / "part" / "filled.u8", dtype=np.uint8) == 1).all()

    fill_view_cache(teacher, views, tmp_path / "half", batch_size=4, progress=False,
                    teacher_fingerprint=fingerprint, storage="float16")
    half = np.fromfile(tmp_path / "half" / "logits.f16", dtype=np.float16).astype(np.float64)
    assert np.all(np.abs(half - full) <= np.abs(full) * 2.0 ** -11 + 1e-12)
    assert np.any(half != full)


def test_view_cache_key_holds_views_and_recipe(tmp_path):
    teacher = Recorder()
    fill_view_cache(teacher, views_of(Clips()), tmp_path / "c", progress=False)
    for other in (ViewSet(Clips(), ViewConfig(views=4), sample_rate=RATE, seed=5),
                  views_of(Clips(), view_mixup=0.2), views_of(Clips(seed=1))):
        with pytest.raises(CacheMismatchError, match="views|data"):
            fill_view_cache(teacher, other, tmp_path / "c", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fill_view_cache(teacher, views_of(Clips(), view_mixup=0.2), tmp_path / "c",
                        progress=False, explicit=False)
    assert any("stale" in str(w.message) for w in caught)
    # a Distiller pointed at the directory refuses a view set of another recipe
    distiller = Distiller(teacher, nn.Linear(LENGTH, CLASSES), teacher_mode="cached",
                          cache_dir=tmp_path / "c", progress=False, device="cpu")
    with pytest.raises(CacheMismatchError):
        distiller.fit(DataLoader(views_of(Clips()), batch_size=4), epochs=1,
                      out_dir=tmp_path / "run")


def test_unlabelled_clips_get_views_and_the_kd_term_only():
    labels = [0, 1, 2, 3, UNLABELLED, UNLABELLED, 1, 2]
    views = views_of(Clips(8, labels=labels))
    loader = DataLoader(views, batch_size=8)
    batch = parse_batch(next(iter(loader)))
    assert (batch.partner_labels == torch.tensor(labels)[
        [views.params(i, int(batch.view[i])).partner for i in range(8)]]).all()
    student = torch.randn(8, CLASSES)
    teacher = torch.randn(8, CLASSES)
    terms = make_objective(ObjectiveConfig(loss_backend="reference"))(
        student, teacher, batch, Mix(batch.lam, None, batch.partner_labels))
    unlabelled = (batch.labels == UNLABELLED) | (batch.partner_labels == UNLABELLED)
    log_p = torch.log_softmax(student.double(), -1)
    keep = ~unlabelled
    rows = torch.arange(8)[keep]
    ce = -(batch.lam[keep].double() * log_p[rows, batch.labels[keep]]
           + (1 - batch.lam[keep].double()) * log_p[rows, batch.partner_labels[keep]]).sum()
    torch.testing.assert_close(terms.sums["ce_loss"].double(), ce, rtol=1e-5, atol=1e-5)
    assert 0 < int(keep.sum()) < 8


def test_random_crops_are_refused():
    class Random(Clips):
        def __getitem__(self, index):
            return torch.randn(LENGTH), 0, index

    with pytest.raises(ValueError, match="deterministic"):
        views_of(Random())
