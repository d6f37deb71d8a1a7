"""log_mel: every backend against the independent float64 numpy reference in ``mel64``."""

from __future__ import annotations

import csv
import math
import os
import warnings

import numpy as np
import pytest
import torch

import kdcore
from kdcore import _backends
from tests.conftest import SHARED
from tests.mel64 import filterbank64, log_mel64, window64

BACKENDS = ["reference", "cpp", "triton"]
FSDD = os.path.join(SHARED, "data", "fsdd")

# Small geometry so the Triton interpreter stays quick.
SMALL = dict(sample_rate=8000, n_fft=128, hop_length=48, n_mels=24)


def require(backend: str) -> None:
    try:
        _backends.resolve_backend(backend, torch.device("cpu"))
    except _backends.BackendUnavailableError as error:
        pytest.skip(str(error))


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300))


def assert_matches(features: torch.Tensor, x: np.ndarray, *, rel: float = 1e-5,
                   atol_log: float = 1e-3, **options) -> None:
    """``features`` (n_mels, frames) of 1-D ``x`` vs mel64: rel L2 on mel power (log=None) or max
    abs error on log bins whose mel power is above the guard (10 * log_eps)."""
    expected, mel = log_mel64(x, **options)
    got = features.double().numpy()
    assert got.shape == expected.shape
    if options.get("log", "ln") is None:
        assert rel_l2(got, expected) <= rel, rel_l2(got, expected)
        return
    eps = options.get("log_eps", 1e-6) if options.get("log") != "db" else 1e-10
    above = mel > 10 * eps
    assert above.mean() > 0.5
    assert np.abs(got - expected)[above].max() <= atol_log / options.get("divisor", 1.0)
    # below the guard the output is pinned near the guard's log, never NaN or -inf
    assert np.isfinite(got).all()


CASES = {
    "htk_reflect_power": dict(log=None),
    "slaney_norm_ln": dict(mel_scale="slaney", norm="slaney", log="ln"),
    "kaldi_snip_edges": dict(mel_scale="kaldi", window="povey", center=False, n_fft=128,
                             win_length=100, preemphasis=0.97, remove_dc_offset=True,
                             f_min=20.0, log="ln_clamp", log_eps=1.1920929e-07),
    "hamming_constant_magnitude_db": dict(window="hamming", pad_mode="constant", power=1.0,
                                          log="db"),
    "sym_hann_short_window_log10": dict(window="hann_symmetric", win_length=90,
                                        log="log10_clamp", log_eps=1e-10, shift=4.0,
                                        divisor=4.0, f_max=3500.0, f_min=100.0),
    "odd_nfft_replicate": dict(n_fft=127, pad_mode="replicate", power=1.5, log=None),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_backends_match_numpy(backend, case):
    require(backend)
    options = {**SMALL, **CASES[case]}
    x = (torch.randn(2, 1501, dtype=torch.float64) * 0.3).float()
    out = kdcore.log_mel(x, backend=backend, **options)
    assert out.dtype == torch.float32
    for item in range(2):
        assert_matches(out[item], x[item].double().numpy(), **options)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_speech_geometry_matches_numpy(backend):
    """The real 16 kHz geometry (n_fft 400, hop 160, 80 mels) on 1 s of audio."""
    require(backend)
    x = (torch.randn(16000, dtype=torch.float64) * 0.1).float()
    out = kdcore.log_mel(x, backend=backend, log=None)
    assert out.shape == (80, 101)
    assert_matches(out, x.double().numpy(), log=None)
    out = kdcore.log_mel(x, backend=backend)
    assert_matches(out, x.double().numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_and_batch_independence(backend):
    require(backend)
    lengths = [1501, 977, 200, 1]
    x = torch.randn(4, 1501) * 0.3
    x[1, 977:] = 50.0  # garbage past an item's end must not leak in
    batch = kdcore.log_mel(x, lengths=torch.tensor(lengths), pad_value=-7.5, backend=backend,
                           **SMALL)
    for item, length in enumerate(lengths):
        alone = kdcore.log_mel(x[item, :length], backend=backend, **SMALL)
        frames = int(kdcore.num_frames(length, n_fft=128, hop_length=48, center=True))
        assert alone.shape[-1] == frames
        torch.testing.assert_close(batch[item, :, :frames], alone, rtol=0, atol=1e-5)
        assert (batch[item, :, frames:] == -7.5).all()
        if length > 1:  # a 1-sample item is all guard; test_one_sample_... covers it
            assert_matches(alone, x[item, :length].double().numpy(), **SMALL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lengths_snip_edges(backend):
    require(backend)
    options = dict(SMALL, center=False, win_length=100, window="povey", preemphasis=0.97,
                   remove_dc_offset=True, mel_scale="kaldi")
    x = torch.randn(2, 900) * 0.3
    batch = kdcore.log_mel(x, lengths=torch.tensor([900, 333]), backend=backend, **options)
    alone = kdcore.log_mel(x[1, :333], backend=backend, **options)
    assert alone.shape[-1] == 1 + (333 - 100) // 48
    torch.testing.assert_close(batch[1, :, :alone.shape[-1]], alone, rtol=0, atol=1e-5)
    assert (batch[1, :, alone.shape[-1]:] == 0).all()


# Without centring a clip shorter than n_fft has no frame to compare: those cases are left out.
@pytest.mark.parametrize("length, center, n_fft", [
    (length, center, n_fft) for length in (1, 5, 47, 48, 49, 400, 1001)
    for center in (True, False) for n_fft in (64, 65) if center or length >= n_fft])
def test_num_frames_matches_numpy_framing(length, center, n_fft):
    x = np.random.default_rng(length).standard_normal(length)
    frames = log_mel64(x, n_fft=n_fft, hop_length=48, n_mels=4, center=center,
                       log=None)[0].shape[1]
    assert int(kdcore.num_frames(length, n_fft=n_fft, hop_length=48, center=center)) == frames
    counted = kdcore.num_frames(torch.tensor([length, length]), n_fft=n_fft, hop_length=48,
                                center=center)
    assert counted.tolist() == [frames, frames]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_sample_and_short_waveforms_centered(backend):
    """numpy.pad reflects a 1-sample signal into a constant and reflects repeatedly when the pad
    exceeds the signal; torch.stft refuses both. Every backend follows numpy."""
    require(backend)
    for length in (1, 3, 70):
        x = torch.randn(length) * 0.5
        for pad_mode in ("reflect", "constant", "replicate", "circular"):
            out = kdcore.log_mel(x, backend=backend, pad_mode=pad_mode, log=None, **SMALL)
            assert out.shape == (24, 1 + length // 48)
            expected, _ = log_mel64(x.double().numpy(), pad_mode=pad_mode, log=None, **SMALL)
            np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-4,
                                       atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_silence_and_clipping(backend):
    require(backend)
    silence = torch.zeros(2, 700)
    out = kdcore.log_mel(silence, backend=backend, **SMALL)
    torch.testing.assert_close(out, torch.full_like(out, math.log(1e-6)), rtol=0, atol=1e-5)
    out = kdcore.log_mel(silence, backend=backend, log="db", **SMALL)
    torch.testing.assert_close(out, torch.full_like(out, -100.0), rtol=0, atol=1e-4)
    clipped = (torch.randn(1, 1501) * 3).clamp(-1, 1)
    out = kdcore.log_mel(clipped, backend=backend, **SMALL)
    assert_matches(out[0], clipped[0].double().numpy(), **SMALL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes_and_empty_batch(backend):
    require(backend)
    empty = kdcore.log_mel(torch.zeros(0, 800), backend=backend)
    assert empty.shape == (0, 80, 6) and empty.dtype == torch.float32
    x64 = torch.randn(2, 800, dtype=torch.float64)
    if backend == "triton":
        with pytest.raises(TypeError, match="float64"):
            kdcore.log_mel(x64, backend=backend)
    else:
        assert kdcore.log_mel(x64, backend=backend).dtype == torch.float64
    out = kdcore.log_mel(x64.to(torch.bfloat16), backend=backend, log=None, **SMALL)
    assert out.dtype == torch.float32
    assert_matches(out[0], x64[0].to(torch.bfloat16).double().numpy(), log=None, **SMALL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_read_as_their_values(dtype):
    x = (torch.randn(1, 1200) * 0.3).to(dtype)
    out = kdcore.log_mel(x, backend="reference", log=None, **SMALL)
    assert out.dtype == torch.float32
    assert_matches(out[0], x[0].double().numpy(), log=None, **SMALL)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck_float64(backend):
    require(backend)
    x = (torch.randn(2, 160, dtype=torch.float64) * 0.3).requires_grad_(True)
    options = dict(sample_rate=8000, n_fft=64, hop_length=40, n_mels=8)

    def features(waveform):
        return kdcore.log_mel(waveform, backend=backend, lengths=torch.tensor([160, 97]),
                              **options)

    assert torch.autograd.gradcheck(features, (x,), eps=1e-6, atol=1e-5)
    kaldi = dict(options, center=False, window="povey", preemphasis=0.97,
                 remove_dc_offset=True, mel_scale="kaldi", log="ln_clamp", win_length=50)
    assert torch.autograd.gradcheck(
        lambda w: kdcore.log_mel(w, backend=backend, **kaldi), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fp32_gradient_matches_numpy_chain_rule(backend):
    """d(sum(g * features))/dx for float32 input, against float64 finite structure: the
    gradient of the float64 numpy model by central differences on a few samples."""
    require(backend)
    x = (torch.randn(1, 400) * 0.3).requires_grad_(True)
    grad_output = torch.randn(1, 24, 1 + 400 // 48)
    out = kdcore.log_mel(x, backend=backend, **SMALL)
    out.backward(grad_output)
    base = x.detach()[0].double().numpy()
    g = grad_output[0].double().numpy()
    step = 1e-6
    for index in (0, 17, 199, 399):
        plus, minus = base.copy(), base.copy()
        plus[index] += step
        minus[index] -= step
        numeric = ((log_mel64(plus, **SMALL)[0] - log_mel64(minus, **SMALL)[0]) * g).sum()
        numeric /= 2 * step
        assert abs(x.grad[0, index].item() - numeric) <= 2e-3 * max(1.0, abs(numeric))


@pytest.mark.parametrize("precision, bound", [("ieee", 1e-5), ("tf32x3", 1e-5),
                                              ("tf32", 5e-3), ("bf16", 3e-2)])
def test_triton_precision_modes(precision, bound):
    """Each ``tl.dot`` precision against the float64 reference. The Triton interpreter (CPU)
    computes every dot in float32 whatever ``input_precision`` says, so only ``ieee`` is a
    real check there; tf32, tf32x3 and bf16 can only fail on a CUDA GPU and run only there."""
    require("triton")
    if precision != "ieee" and not torch.cuda.is_available():
        pytest.skip(f"the Triton interpreter ignores tl.dot input_precision={precision!r}: "
                    "this bound can only fail on a CUDA GPU")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 1501) * 0.3
    expected = np.stack([log_mel64(x[i].double().numpy(), log=None, **SMALL)[0]
                         for i in range(2)])
    out = kdcore.log_mel(x.to(device), backend="triton", precision=precision, log=None,
                         **SMALL)
    assert rel_l2(out.double().cpu().numpy(), expected) <= bound, precision


def test_windows_match_numpy():
    from kdcore.ops.log_mel import make_window

    for name in ("hann", "hann_symmetric", "hamming", "povey"):
        for size in (2, 64, 400):
            np.testing.assert_allclose(make_window(name, size).numpy(), window64(name, size),
                                       atol=1e-12)
    np.testing.assert_allclose(make_window("hann", 400).numpy(),
                               torch.hann_window(400, dtype=torch.float64).numpy(), atol=1e-12)


@pytest.mark.parametrize("scale,norm", [("htk", None), ("htk", "slaney"), ("slaney", None),
                                        ("slaney", "slaney"), ("kaldi", None)])
def test_filterbank_matches_numpy(scale, norm):
    for n_fft, sample_rate, n_mels, f_min, f_max in ((400, 16000, 80, 0.0, 8000.0),
                                                     (512, 16000, 23, 20.0, 8000.0),
                                                     (1024, 32000, 128, 0.0, 15500.0)):
        bank = kdcore.mel_filterbank(n_fft // 2 + 1, f_min=f_min, f_max=f_max, n_mels=n_mels,
                                     sample_rate=sample_rate, norm=norm, mel_scale=scale)
        assert bank.dtype == torch.float64 and bank.shape == (n_fft // 2 + 1, n_mels)
        expected = filterbank64(n_fft, sample_rate, n_mels, f_min, f_max, scale, norm)
        np.testing.assert_allclose(bank.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_empty_filters_warn_like_torchaudio():
    with pytest.warns(UserWarning, match="At least one mel filterbank has all zero values"):
        kdcore.mel_filterbank(201, f_min=0.0, f_max=8000.0, n_mels=128, sample_rate=16000)
    with pytest.warns(UserWarning, match="n_mels"):
        kdcore.log_mel(torch.randn(800), n_fft=64, n_mels=60, backend="reference",
                       sample_rate=8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kdcore.log_mel(torch.randn(800), backend="reference")


@pytest.mark.parametrize("arguments,error,match", [
    (dict(waveform=torch.randint(0, 5, (2, 800))), TypeError, "waveform"),
    (dict(waveform=torch.randn(2, 2, 800)), ValueError, "waveform must be shaped"),
    (dict(waveform=torch.randn(300), center=False), ValueError, "shorter than one frame"),
    (dict(f_max=8001.0), ValueError, "f_max"),
    (dict(hop_length=0), ValueError, "hop_length"),
    (dict(hop_length=-3), ValueError, "hop_length"),
    (dict(window="blackman"), ValueError, "window"),
    (dict(mel_scale="bark"), ValueError, "mel_scale"),
    (dict(norm="l2"), ValueError, "norm"),
    (dict(log="log2"), ValueError, "log"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(precision="fp8"), ValueError, "precision"),
    (dict(lengths=torch.tensor([800])), ValueError, "lengths"),
    (dict(lengths=torch.tensor([800, 801])), ValueError, "lengths"),
    (dict(lengths=torch.tensor([800.0, 100.0])), TypeError, "lengths"),
    (dict(lengths=torch.tensor([800, 0])), ValueError, "lengths"),
    (dict(win_length=500), ValueError, "win_length"),
])
def test_errors(arguments, error, match):
    waveform = arguments.pop("waveform", torch.randn(2, 800))
    with pytest.raises(error, match=match):
        kdcore.log_mel(waveform, backend=arguments.pop("backend", "reference"), **arguments)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        kdcore.LogMel.from_preset("htk-v2")


@pytest.mark.skipif(not os.path.isdir(FSDD), reason="../shared/data/fsdd is absent")
@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_fsdd_recordings(backend):
    """Real 8 kHz speech, variable lengths in one batch, against the numpy reference."""
    soundfile = pytest.importorskip("soundfile")
    require(backend)
    with open(os.path.join(FSDD, "manifest.csv")) as handle:
        rows = list(csv.DictReader(handle))[:: 997][:3]
    clips = []
    for row in rows:
        audio, rate = soundfile.read(os.path.join(FSDD, row["path"]), dtype="float32")
        assert rate == 8000
        clips.append(audio[: 1600 if backend == "triton" else None])
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for item, clip in enumerate(clips):
        batch[item, : len(clip)] = torch.from_numpy(clip)
    options = dict(sample_rate=8000, n_fft=256, hop_length=80, n_mels=40, mel_scale="slaney",
                   norm="slaney")
    out = kdcore.log_mel(batch, lengths=lengths, backend=backend, **options)
    for item, clip in enumerate(clips):
        frames = int(kdcore.num_frames(len(clip), n_fft=256, hop_length=80, center=True))
        assert_matches(out[item, :, :frames], clip.astype(np.float64), **options)


@pytest.mark.parametrize("n_fft,win_length", [(128, 128), (130, 90), (64, 33)])
def test_triton_direct_and_split_kernels_match_numpy(n_fft, win_length):
    """Plain windows run the even/odd split kernel (half the multiply-adds); Kaldi's frame steps
    run the direct one. Both, on the same setting, against float64 numpy."""
    require("triton")
    from kdcore.kernels.launchers import log_mel_forward, log_mel_split_tables, log_mel_tables

    from kdcore.ops.log_mel import dft_basis, make_window

    options = dict(sample_rate=8000, n_fft=n_fft, win_length=win_length, hop_length=48,
                   n_mels=20)
    x = torch.randn(2, 1000) * 0.3
    lengths = torch.tensor([1000, 611])
    window = make_window("hann", win_length)
    bank = kdcore.mel_filterbank(n_fft // 2 + 1, f_min=0.0, f_max=4000.0, n_mels=20,
                                 sample_rate=8000, n_fft=n_fft)
    valid = kdcore.num_frames(lengths, n_fft=n_fft, hop_length=48, center=True)
    launch = dict(n_fft=n_fft, win_length=win_length, hop_length=48,
                  lead=n_fft // 2 - (n_fft - win_length) // 2, n_mels=20,
                  n_frames=int(valid[0]), pad_mode=1, power=2.0, log_mode=0, log_eps=1e-6,
                  shift=0.0, divisor=1.0, pad_value=0.0, precision="ieee")
    for tables in (log_mel_tables(dft_basis(window, n_fft), bank),
                   log_mel_split_tables(window, n_fft, bank)):
        out = log_mel_forward(x, lengths, valid, tables, **launch)
        for item, length in enumerate(lengths.tolist()):
            frames = int(valid[item])
            assert_matches(out[item, :, :frames], x[item, :length].double().numpy(), log=None,
                           **options)
            assert (out[item, :, frames:] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_triton_cuda_matches_numpy(case):
    """The compiled kernels on the GPU: real 16 kHz geometry and the small cases, ieee mode,
    variable lengths, against float64 numpy."""
    options = {**SMALL, **CASES[case]}
    x = torch.randn(3, 4001) * 0.3
    lengths = torch.tensor([4001, 2500, 1]) if options.get("center", True) else None
    out = kdcore.log_mel(x.cuda(), backend="triton", lengths=None if lengths is None
                         else lengths.cuda(), **options).cpu()
    for item in range(2):
        length = 4001 if lengths is None else int(lengths[item])
        frames = int(kdcore.num_frames(length, n_fft=options["n_fft"], hop_length=48,
                                       center=options.get("center", True),
                                       win_length=options.get("win_length")))
        assert_matches(out[item, :, :frames], x[item, :length].double().numpy(), **options)
    speech = torch.randn(2, 160000) * 0.1
    features = kdcore.log_mel(speech.cuda(), backend="triton", log=None).cpu()
    assert_matches(features[1], speech[1].double().numpy(), log=None)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_many_frames_with_lengths(backend):
    """Several of the C++ path's 128-frame chunks, an item ending inside a chunk."""
    require(backend)
    x = torch.randn(2, 20000) * 0.3
    lengths = torch.tensor([20000, 13337])
    out = kdcore.log_mel(x, lengths=lengths, backend=backend, pad_value=-1.0, **SMALL)
    assert out.shape == (2, 24, 1 + 20000 // 48)
    for item, length in enumerate(lengths.tolist()):
        frames = 1 + length // 48
        assert_matches(out[item, :, :frames], x[item, :length].double().numpy(), **SMALL)
        assert (out[item, :, frames:] == -1.0).all()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph_log_mel_and_presets(backend):
    """``torch.compile(fullgraph=True)`` through ``kdcore.log_mel`` and ``LogMel`` presets
    (pre-emphasis, floor, dropped frame, per-item lengths), with gradients: same values as
    eager, no graph break. Two frontends in one graph, as a teacher and a student have."""
    small = dict(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=20)
    whisper = kdcore.LogMel.from_preset("whisper", backend=backend, **small)
    kaldi = kdcore.LogMel.from_preset("kaldi", backend=backend, **small)

    def features(waveform, lengths):
        plain = kdcore.log_mel(waveform, lengths=lengths, backend=backend, **small)
        return plain.sum() + whisper(waveform, lengths).sum() + kaldi(waveform, lengths).sum()

    waveform = torch.randn(3, 2000, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([2000, 1500, 1203])
    grads = {}
    for compiled in (False, True):
        leaf = waveform.clone().requires_grad_()
        run = torch.compile(features, fullgraph=True, backend="aot_eager") if compiled \
            else features
        total = run(leaf, lengths)
        total.backward()
        grads[compiled] = (total.detach(), leaf.grad)
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grads[True][1], grads[False][1], rtol=1e-5, atol=1e-5)
