"""Task metrics against independent references: mir_eval, scikit-learn, scipy, pesq, pystoi,
closed forms and hand-worked examples."""

import math
import sys

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn import metrics as skm

from kdcore.eval import metrics as M

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------ pitch
def test_crepe_bins_to_hz_known_values():
    cents = M.crepe_bin_cents()
    assert cents.shape == (360,) and cents.dtype == torch.float64
    assert float(cents[1] - cents[0]) == 20.0
    one_hot = torch.zeros(3, 360)
    one_hot[0, 0], one_hot[1, 359], one_hot[2, 100] = 1.0, 1.0, 1.0
    hz, conf = M.crepe_decode(one_hot)
    expected = [10 * 2 ** ((1997.3794084376191 + 20 * b) / 1200) for b in (0, 359, 100)]
    np.testing.assert_allclose(hz.numpy(), expected, rtol=1e-12)
    assert abs(expected[0] - 31.70) < 0.01 and abs(expected[1] - 2005.5) < 0.1
    torch.testing.assert_close(conf, torch.ones(3, dtype=torch.float64))
    # two equal neighbours: half way in cents (the geometric mean in Hz)
    pair = torch.zeros(360)
    pair[200], pair[201] = 0.8, 0.8
    hz, _ = M.crepe_decode(pair)
    assert abs(float(hz) - math.sqrt(expected[0] * 2 ** (200 / 60) * expected[0]
                                     * 2 ** (201 / 60))) < 1e-9


def test_crepe_weighted_decode_matches_loop():
    acts = torch.rand(2, 5, 360, dtype=torch.float64) ** 8
    acts[0, 0, :] = 0.0
    acts[0, 0, 2] = 1.0  # window clipped at the low edge
    acts[1, 4, 357] = 5.0  # and at the high edge
    hz, conf = M.crepe_decode(acts.float())
    a = acts.float().double().numpy()
    for b in range(2):
        for t in range(5):
            c = int(np.argmax(a[b, t]))
            lo, hi = max(0, c - 4), min(359, c + 4)
            w = a[b, t, lo:hi + 1]
            cents = 1997.3794084376191 + 20 * np.arange(lo, hi + 1)
            ref = 10 * 2 ** ((w @ cents / w.sum()) / 1200)
            assert abs(float(hz[b, t]) - ref) < 1e-9 * ref
            assert float(conf[b, t]) == a[b, t].max()
    plain, _ = M.crepe_decode(acts, weighted=False)
    np.testing.assert_allclose(plain.numpy(), 10 * 2 ** (
        (1997.3794084376191 + 20 * acts.argmax(-1).numpy()) / 1200), rtol=1e-12)


def _pitch_case(n=400):
    ref = np.where(RNG.random(n) < 0.7, RNG.uniform(60, 800, n), 0.0)
    cents_off = RNG.choice([0, 10, 49, 51, 300, 1200, -1200, 2400 + 20], n)
    est = ref * 2 ** (cents_off / 1200)
    est[RNG.random(n) < 0.1] = 0.0  # unvoiced estimates
    est[ref == 0] = np.where(RNG.random(int((ref == 0).sum())) < 0.3, 200.0, 0.0)
    return ref, est


def test_raw_pitch_and_chroma_accuracy_match_mir_eval():
    melody = pytest.importorskip("mir_eval.melody")
    ref, est = _pitch_case()
    ref_c, est_c = melody.hz2cents(ref), melody.hz2cents(est)
    ref_v, est_v = (ref > 0).astype(float), np.ones_like(est)
    rpa = melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c)
    rca = melody.raw_chroma_accuracy(ref_v, ref_c, est_v, est_c)
    assert M.raw_pitch_accuracy(ref, est) == pytest.approx(rpa, abs=1e-12)
    assert M.raw_chroma_accuracy(torch.from_numpy(ref), est) == pytest.approx(rca, abs=1e-12)
    assert 0.2 < rpa < rca < 1.0


def test_pitch_mask_equals_subset_and_cents_rmse_by_hand():
    ref, est = _pitch_case()
    mask = RNG.random(ref.shape) < 0.5
    for fn in (M.raw_pitch_accuracy, M.raw_chroma_accuracy, M.cents_rmse):
        assert fn(ref, est, mask=mask) == pytest.approx(fn(ref[mask], est[mask]), abs=1e-12)
    ref = np.array([[100.0, 100.0, 0.0, 100.0]])
    est = np.array([[100 * 2 ** (10 / 1200), 100 * 2 ** (-30 / 1200), 100.0, 0.0]])
    assert M.cents_rmse(ref, est) == pytest.approx(math.sqrt((100 + 900) / 2), rel=1e-9)
    assert M.raw_pitch_accuracy(ref, est) == pytest.approx(2 / 3)
    assert math.isnan(M.raw_pitch_accuracy(np.zeros(3), np.ones(3)))


def test_voicing_prf_matches_sklearn_and_pitch_metrics_dict():
    ref_v = RNG.random((4, 50)) < 0.6
    est_v = RNG.random((4, 50)) < 0.5
    mask = RNG.random((4, 50)) < 0.8
    p, r, f = M.voicing_precision_recall_f1(ref_v, torch.from_numpy(est_v), mask=mask)
    sp, sr, sf, _ = skm.precision_recall_fscore_support(ref_v[mask], est_v[mask],
                                                        average="binary")
    assert (p, r, f) == pytest.approx((sp, sr, sf), abs=1e-12)
    out = M.pitch_metrics(np.where(ref_v, 220.0, 0.0), np.where(est_v, 220.0, 0.0), mask=mask)
    assert out["voicing_f1"] == pytest.approx(sf)
    assert set(out) == {"rpa", "rca", "cents_rmse", "voicing_precision", "voicing_recall",
                        "voicing_f1"}


# ------------------------------------------------------------------------------ enhancement
def test_si_sdr_closed_form_and_invariances():
    t = np.arange(4000)
    ref = np.sin(0.01 * t) + 0.3 * np.sin(0.037 * t + 1)
    ref -= ref.mean()
    e = RNG.standard_normal(4000)
    e -= e.mean()
    e -= (e @ ref) / (ref @ ref) * ref  # orthogonal to the reference
    est = 0.7 * ref + e
    expected = 10 * np.log10((0.7 ** 2) * (ref @ ref) / (e @ e))
    assert M.si_sdr(est, ref) == pytest.approx(expected, abs=1e-9)
    assert M.si_sdr(3.0 * est + 5.0, ref) == pytest.approx(expected, abs=1e-9)
    rho = np.corrcoef(est, ref)[0, 1]  # SI-SDR = 10 log10(rho^2 / (1 - rho^2))
    assert M.si_sdr(est, ref) == pytest.approx(10 * np.log10(rho ** 2 / (1 - rho ** 2)), abs=1e-9)
    batch = M.si_sdr(torch.from_numpy(np.stack([est, ref + 0.1 * e])), np.stack([ref, ref]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(expected, abs=1e-9)
    noisy = ref + 2 * e
    gain = M.si_sdr_improvement(est, noisy, ref)
    assert gain == pytest.approx(expected - 10 * np.log10((ref @ ref) / (4 * e @ e)), abs=1e-9)
    assert M.si_sdr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="reference is silent"):
        M.si_sdr(est, np.ones(4000))


@pytest.fixture(scope="module")
def speech16k():
    """A voiced-speech-like 16 kHz signal (no file needed): harmonics with a syllable rhythm."""
    t = np.arange(32000) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    return voice * envelope * 0.3


def test_pesq_and_stoi_wrappers_equal_packages(speech16k):
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    noisy = speech16k + 0.05 * RNG.standard_normal(speech16k.size)
    assert M.pesq_wb(speech16k, noisy) == pesq.pesq(16000, speech16k, noisy, "wb")
    assert M.pesq_wb(speech16k, speech16k) > 4.5 > M.pesq_wb(speech16k, noisy)
    assert M.stoi(speech16k, noisy, 16000) == pystoi.stoi(speech16k, noisy, 16000)
    assert M.stoi(speech16k, speech16k, 16000) == pytest.approx(1.0, abs=1e-6)
    both = M.stoi(np.stack([speech16k] * 2), np.stack([speech16k, noisy]), 16000, extended=True)
    assert both.shape == (2,) and both[1] == pytest.approx(
        pystoi.stoi(speech16k, noisy, 16000, extended=True), abs=1e-12)
    with pytest.raises(ValueError, match="16000"):
        M.pesq_wb(speech16k, noisy, sample_rate=8000)


@pytest.mark.parametrize("module,fn", [("pesq", "pesq_wb"), ("pystoi", "stoi"),
                                       ("jiwer", "word_error_rate")])
def test_missing_package_named(monkeypatch, module, fn):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(M.MetricUnavailableError, match=f"pip install {module}"):
        getattr(M, fn)(np.ones(16000), np.ones(16000), 16000) if fn != "word_error_rate" \
            else M.word_error_rate("a", "a")


# ------------------------------------------------------------------------ speaker verification
def _sklearn_eer(scores, labels):
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    return brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)


def test_eer_hand_worked():
    # accept >= t. Scores 0.9(T) 0.8(N) 0.7(T) 0.6(N): at t=0.8 FAR 1/2 FRR 1/2.
    eer, threshold = M.equal_error_rate([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert (eer, threshold) == (0.5, 0.8)
    assert M.equal_error_rate([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]) == (0.0, 2.0)
    # perfectly wrong: FAR reaches 1 before FRR leaves 1
    assert M.equal_error_rate([0.0, 1.0], [1, 0])[0] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        M.equal_error_rate([0.1, 0.2], [1, 1])


@pytest.mark.parametrize("n", [50, 301, 2000])
def test_eer_matches_sklearn_roc(n):
    labels = RNG.random(n) < 0.3
    scores = RNG.standard_normal(n) + 1.5 * labels
    eer, threshold = M.equal_error_rate(scores, labels)
    assert eer == pytest.approx(_sklearn_eer(scores, labels), abs=1e-6)
    far = np.mean(scores[~labels] >= threshold)
    frr = np.mean(scores[labels] < threshold)
    assert far >= frr and abs(far - eer) <= 1 / (~labels).sum() + 1 / labels.sum()


def test_verification_trials_and_cosine():
    speakers = ["a", "a", "b", "c", "b", "a"]
    first, second, same = M.verification_trials(speakers)
    assert len(first) == 15 and np.all(first < second)
    assert same.tolist() == [speakers[i] == speakers[j] for i, j in zip(first, second,
                                                                       strict=True)]
    f2, s2, same2 = M.verification_trials(speakers, max_trials=8, seed=1)
    assert len(f2) == 8 and same2.sum() == 4  # balanced: 4 of the 4 same-speaker pairs
    again = M.verification_trials(speakers, max_trials=8, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((f2, s2, same2), again, strict=True))
    emb = RNG.standard_normal((6, 16))
    scores = M.cosine_scores(emb, first, second)
    i, j = first[3], second[3]
    assert scores[3] == pytest.approx(emb[i] @ emb[j] / np.linalg.norm(emb[i])
                                      / np.linalg.norm(emb[j]))


def test_mean_cosine_similarity_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [1.0, -1.0], [0.0, -1.0]])
    assert M.mean_cosine_similarity(torch.from_numpy(a), b) == pytest.approx((1 + 0 - 1) / 3)
    with pytest.raises(ValueError, match="zero vector"):
        M.mean_cosine_similarity(np.zeros((1, 2)), np.ones((1, 2)))


# ---------------------------------------------------------------------- tagging and frames
def test_average_precision_matches_sklearn_with_ties():
    targets = (RNG.random((200, 6)) < 0.25).astype(int)
    scores = np.round(RNG.random((200, 6)) + 0.5 * targets, 1)  # many ties
    ap = M.average_precision(scores, targets)
    np.testing.assert_allclose(ap, skm.average_precision_score(targets, scores, average=None),
                               atol=1e-12)
    assert M.mean_average_precision(scores, targets) == pytest.approx(
        skm.average_precision_score(targets, scores, average="macro"), abs=1e-12)
    assert M.micro_average_precision(torch.from_numpy(scores), targets) == pytest.approx(
        skm.average_precision_score(targets, scores, average="micro"), abs=1e-12)
    assert M.average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(ap[0])


def test_frame_ap_with_mask_and_absent_class():
    scores, targets = RNG.random((3, 20, 4)), (RNG.random((3, 20, 4)) < 0.3).astype(int)
    targets[..., 3] = 0
    mask = RNG.random((3, 20)) < 0.7
    ap = M.average_precision(scores, targets, mask=mask)
    assert np.isnan(ap[3])
    np.testing.assert_allclose(ap[:3], skm.average_precision_score(
        targets[mask][:, :3], scores[mask][:, :3], average=None), atol=1e-12)
    assert M.mean_average_precision(scores, targets, mask=mask) == pytest.approx(
        np.mean(ap[:3]))


@pytest.mark.parametrize("average", ["micro", "macro", "none"])
def test_f1_at_threshold_matches_sklearn(average):
    scores, targets = RNG.random((2, 30, 5)), (RNG.random((2, 30, 5)) < 0.4).astype(int)
    mask = RNG.random((2, 30)) < 0.8
    ours = M.f1_at_threshold(scores, targets, 0.6, average=average, mask=mask)
    ref = skm.f1_score(targets[mask], (scores[mask] >= 0.6).astype(int),
                       average=None if average == "none" else average, zero_division=0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_frame_accuracy_and_f1_match_sklearn():
    logits = torch.randn(3, 40, 4)
    targets = torch.randint(0, 4, (3, 40))
    mask = torch.rand(3, 40) < 0.75
    pred = logits.argmax(-1)
    p, t = pred[mask].numpy(), targets[mask].numpy()
    assert M.frame_accuracy(logits, targets, mask=mask) == pytest.approx(skm.accuracy_score(t, p))
    assert M.frame_accuracy(pred, targets, mask=mask) == pytest.approx(skm.accuracy_score(t, p))
    for average in ("macro", "micro"):
        assert M.frame_f1(logits, targets, mask=mask, average=average, num_classes=4) == \
            pytest.approx(skm.f1_score(t, p, average=average, labels=range(4), zero_division=0))
    binary_t, binary_p = (targets > 1).long(), (pred > 1).long()
    assert M.frame_f1(binary_p, binary_t, mask=mask, average="binary") == pytest.approx(
        skm.f1_score(binary_t[mask].numpy(), binary_p[mask].numpy()))


# --------------------------------------------------------------------------- CTC and WER
def test_ctc_greedy_decode_hand_worked():
    path = [[0, 3, 3, 0, 3, 1, 1, 0, 0, 2], [2, 2, 0, 2, 4, 4, 4, 1, 0, 0]]
    log_probs = torch.log_softmax(10 * torch.nn.functional.one_hot(torch.tensor(path), 5)
                                  .double(), -1)
    assert M.ctc_greedy_decode(log_probs) == [[3, 3, 1, 2], [2, 2, 4, 1]]
    assert M.ctc_greedy_decode(log_probs, torch.tensor([5, 3])) == [[3, 3], [2]]
    assert M.ctc_greedy_decode(log_probs[0], blank=3) == [[0, 0, 1, 0, 2]]
    assert M.ctc_greedy_decode(log_probs, [0, 10]) == [[], [2, 2, 4, 1]]
    assert M.tokens_to_text([3, 1, 4], [str(d) for d in range(10)]) == "3 1 4"


def _edits(a, b):
    d = np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        prev, d[0] = d.copy(), i
        for j in range(1, len(b) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return int(d[-1])


def test_wer_cer_against_edit_distance():
    pytest.importorskip("jiwer")
    refs = ["3 1 4 1 5", "9 2 6", "5 3", "8 9 7 9"]
    hyps = ["3 1 4 5", "9 2 6 6", "", "8 7 7 9 1"]
    wer = sum(_edits(r.split(), h.split()) for r, h in zip(refs, hyps, strict=True)) / sum(
        len(r.split()) for r in refs)
    cer = sum(_edits(r, h) for r, h in zip(refs, hyps, strict=True)) / sum(len(r) for r in refs)
    assert M.word_error_rate(refs, hyps) == pytest.approx(wer)
    assert M.character_error_rate(refs, hyps) == pytest.approx(cer)
    assert M.word_error_rate("1 2", "1 2") == 0.0
    with pytest.raises(ValueError, match="references"):
        M.word_error_rate(["", "1"], ["1", "1"])
