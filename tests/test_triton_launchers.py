"""Launcher-level contracts of ``kdcore.kernels`` that the op tests do not reach: the chunked
(streamed) path at small sizes, padded row strides, strided labels/masks, garbage in excluded
rows, bad labels, fp64 scalars, unrequested gradients and every ``scale_grad_`` mode, against
the float64 references in ``tests/ref64.py``. CPU tests run through the Triton interpreter with
small shapes; a CPU-only test compiles every kernel for sm_90; the CUDA tests run the compiled
kernels when a GPU is present."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kdcore import _backends
from tests.ref64 import feature_loss64, kd_bce_loss64, kd_loss64

CPU_REASON = _backends.triton_unavailable_reason(torch.device("cpu"))
CUDA_REASON = ("needs a CUDA GPU" if not torch.cuda.is_available()
               else _backends.triton_unavailable_reason(torch.device("cuda")))


@pytest.fixture
def kernels():
    if CPU_REASON is not None:
        pytest.skip(f"Triton cannot run on CPU tensors here: {CPU_REASON}")
    return _backends.triton_kernels()


@pytest.fixture
def chunked(kernels, monkeypatch):
    """Force the streamed multi-chunk kd_loss path with 32-wide chunks."""
    from kdcore.kernels import kd_loss as kd_module

    monkeypatch.setattr(kd_module, "SINGLE_BLOCK_MAX", 1)
    monkeypatch.setattr(kd_module, "CHUNK", 32)
    return kernels


def _relative_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    got = actual.detach().double().numpy()
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    finite = np.isfinite(expected)
    return float(np.abs(got[finite] - expected[finite]).max()
                 / max(np.abs(expected[finite]).max(), 1e-30))


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_chunked_path_with_labels_mask_teacher_grad_matches_float64(chunked, kind):
    """100 classes in 32-wide chunks (ragged tail), T != 1 (separate CE statistics), -inf
    classes shared by both rows, padded row stride, strided labels and mask, garbage in masked
    rows."""
    rows, classes = 5, 100
    padded_s = torch.randn(rows, classes + 7, dtype=torch.float64) * 4
    padded_t = torch.randn(rows, classes + 7, dtype=torch.float64) * 4
    student, teacher = padded_s[:, :classes], padded_t[:, :classes]
    student[:, 40:50] = -np.inf
    teacher[:, 40:50] = -np.inf
    valid = torch.tensor([[True, False], [False, True], [True, True], [True, False],
                          [True, True]])[:, 0]  # strided views must be read correctly
    student[1] = np.nan
    labels = torch.tensor([[3, 1], [7, 1], [99, 1], [0, 1], [64, 1]])[:, 0]
    assert labels.stride() == (2,) and valid.stride() == (2,)
    scale = torch.tensor(0.3, dtype=torch.float64)
    loss, grad_s, grad_t = chunked.kd_loss_forward(
        student, teacher, labels, valid, scale, 0.7, kind, 0.3, 0.6, True, True)
    expected = kd_loss64(student.numpy(), teacher.numpy(), temperature=0.7,
                         kind=("kl", "reverse_kl", "jsd")[kind], beta=0.3,
                         labels=labels.numpy(), alpha=0.6, mask=valid.numpy())
    assert _relative_error(loss, expected[0]) < 1e-12
    assert _relative_error(grad_s, 0.3 * expected[1]) < 1e-12
    assert _relative_error(grad_t, 0.3 * expected[2]) < 1e-12
    assert torch.all(grad_s[1] == 0) and torch.all(grad_t[1] == 0) and loss[1] == 0


@pytest.mark.parametrize("streamed", [False, True])
def test_label_out_of_range_gives_nan_row_only(kernels, monkeypatch, streamed):
    if streamed:
        from kdcore.kernels import kd_loss as kd_module

        monkeypatch.setattr(kd_module, "SINGLE_BLOCK_MAX", 1)
        monkeypatch.setattr(kd_module, "CHUNK", 32)
    student, teacher = torch.randn(3, 50), torch.randn(3, 50)
    labels = torch.tensor([1, 50, -1])
    loss, _, _ = kernels.kd_loss_forward(student, teacher, labels, None, None, 1.0, 0, 0.5, 0.5,
                                         True, False)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1]) and torch.isnan(loss[2])


def test_fp64_scalars_are_not_rounded_to_fp32(kernels):
    """Triton passes Python floats as fp32; fp64 inputs must still see alpha=0.3, T=0.7."""
    student = torch.randn(4, 33, dtype=torch.float64) * 3
    teacher = torch.randn(4, 33, dtype=torch.float64) * 3
    labels = torch.randint(0, 33, (4,))
    loss, grad_s, _ = kernels.kd_loss_forward(student, teacher, labels, None, None, 0.7, 2, 0.3,
                                              0.3, True, False)
    expected = kd_loss64(student.numpy(), teacher.numpy(), temperature=0.7, kind="jsd",
                         beta=0.3, labels=labels.numpy(), alpha=0.3)
    assert _relative_error(loss, expected[0]) < 1e-13
    assert _relative_error(grad_s, expected[1]) < 1e-13


def test_unrequested_gradients_are_empty_and_inputs_untouched(kernels):
    student, teacher = torch.randn(3, 20, dtype=torch.bfloat16), torch.randn(3, 20).bfloat16()
    before = student.clone(), teacher.clone()
    for launch, extra in ((kernels.kd_loss_forward, (None, None, None, 2.0, 0, 0.5, 1.0)),
                          (kernels.kd_bce_loss_forward, (None, None, None, 2.0, 1.0)),
                          (kernels.feature_loss_forward, (None, None, 2))):
        loss, grad_s, grad_t = launch(student, teacher, *extra, False, False)
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
        assert grad_s.numel() == 0 and grad_t.numel() == 0
    assert torch.equal(student, before[0]) and torch.equal(teacher, before[1])


def test_bce_and_feature_padded_stride_and_garbage_rows(kernels):
    padded_s, padded_t = torch.randn(4, 45) * 5, torch.randn(4, 45) * 5
    student, teacher = padded_s[:, :37], padded_t[:, :37]
    student[2] = np.nan
    teacher[2] = np.inf
    valid = torch.tensor([True, True, False, True])
    scale = torch.tensor(0.5)
    labels = (torch.rand(4, 37) > 0.5).float()
    loss, grad_s, grad_t = kernels.kd_bce_loss_forward(student, teacher, labels, valid, scale,
                                                       2.0, 0.25, True, True)
    expected = kd_bce_loss64(student.numpy(), teacher.numpy(), temperature=2.0,
                             labels=labels.numpy(), alpha=0.25, mask=valid.numpy())
    assert _relative_error(loss, expected[0]) < 1e-5
    assert _relative_error(grad_s, 0.5 * expected[1]) < 1e-5
    assert _relative_error(grad_t, 0.5 * expected[2]) < 1e-5
    for kind, name in enumerate(("mse", "l1", "cosine")):
        loss, grad_s, grad_t = kernels.feature_loss_forward(student, teacher, valid, scale, kind,
                                                            True, True)
        expected = feature_loss64(student.numpy(), teacher.numpy(), kind=name,
                                  mask=valid.numpy())
        assert _relative_error(loss, expected[0]) < 1e-5
        assert _relative_error(grad_s, 0.5 * expected[1]) < 1e-5
        assert _relative_error(grad_t, 0.5 * expected[2]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_scale_grad_modes(kernels, dtype):
    grad = (torch.randn(5, 13, dtype=torch.float64) * 3).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32

    unchanged = grad.clone()
    kernels.scale_grad_(unchanged, torch.tensor(1.0))
    assert torch.equal(unchanged, grad)

    cases = [
        torch.tensor(-2.5),
        torch.randn(5),
        torch.randn(5, 13),
        torch.tensor(0.75).expand(5, 13),  # what autograd hands over for a sum
        torch.randn(5, 26)[:, ::2],
    ]
    for grad_output in cases:
        grad_output = grad_output.to(compute)
        scaled = grad.clone()
        kernels.scale_grad_(scaled, grad_output)
        factor = grad_output[:, None] if grad_output.shape == (5,) else grad_output
        expected = (grad.to(compute) * factor).to(dtype)  # one multiply in fp32 (fp64), one cast
        # Exact, except that Triton's interpreter truncates fp32 -> bf16 (compiled code rounds
        # to nearest): allow one bf16 step there.
        rtol = 2**-7 if dtype == torch.bfloat16 else 0.0
        torch.testing.assert_close(scaled, expected, rtol=rtol, atol=0)


def test_scale_grad_one_dimensional_grad(kernels):
    grad = torch.randn(9)
    grad_output = torch.randn(9)
    expected = grad * grad_output
    kernels.scale_grad_(grad, grad_output)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grad_output"):
        kernels.scale_grad_(torch.randn(4, 3), torch.randn(3))


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_chunked_path_huge_logits_keep_precision(chunked, kind):
    """Logits of magnitude 1e4 (half the classes far below the rest) in 32-wide chunks: the
    online max/sum and the online KL must not lose the O(1) differences (Liger#1453)."""
    shape = (4, 150)
    student = (torch.randn(shape, dtype=torch.float64).sign() * 1e4
               + torch.randn(shape, dtype=torch.float64)).float()
    teacher = (torch.randn(shape, dtype=torch.float64).sign() * 1e4
               + torch.randn(shape, dtype=torch.float64)).float()
    loss, grad_s, grad_t = chunked.kd_loss_forward(student, teacher, None, None, None, 0.5, kind,
                                                   0.5, 1.0, True, True)
    expected = kd_loss64(student.double().numpy(), teacher.double().numpy(), temperature=0.5,
                         kind=("kl", "reverse_kl", "jsd")[kind])
    assert _relative_error(loss, expected[0]) < 1e-5
    assert _relative_error(grad_s, expected[1]) < 1e-5
    assert _relative_error(grad_t, expected[2]) < 1e-5


def test_chunked_kl_is_inf_not_nan_where_only_the_teacher_has_mass(chunked):
    """The student is -inf over the first two chunks where the teacher is finite: KL is +inf."""
    student, teacher = torch.randn(2, 100), torch.randn(2, 100)
    student[0, :64] = -np.inf
    loss, grad_s, _ = chunked.kd_loss_forward(student, teacher, None, None, None, 1.0, 0, 0.5,
                                              1.0, True, False)
    assert loss[0] == np.inf and torch.isfinite(loss[1])
    assert torch.isfinite(grad_s).all()


# --------------------------------------------------------------------------------------------
# Compiled kernels on a GPU (skipped without one): every launcher against float64.
# --------------------------------------------------------------------------------------------

CUDA_CASES = [
    ("kd", 0, (41, 401)), ("kd", 1, (41, 401)), ("kd", 2, (41, 401)),
    ("kd", 0, (3, 70000)), ("kd", 2, (3, 70000)), ("kd", 1, (64, 32000)),
    ("bce", None, (41, 527)), ("feature", 0, (41, 257)), ("feature", 1, (41, 257)),
    ("feature", 2, (41, 257)), ("feature", 2, (3, 9000)),
]


@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("op,kind,shape", CUDA_CASES, ids=lambda v: str(v))
def test_cuda_launchers_match_float64(op, kind, shape, dtype):
    check_launcher(_backends.triton_kernels(), op, kind, shape, dtype, torch.device("cuda"))


@pytest.mark.parametrize("op,kind", [("kd", 2), ("bce", None), ("feature", 2)])
def test_launcher_check_on_cpu(kernels, op, kind):
    """The GPU check above, run small through the interpreter so that its logic is tested."""
    check_launcher(kernels, op, kind, (6, 33), torch.float32, torch.device("cpu"))


def check_launcher(kernels, op, kind, shape, dtype, device):
    """One launcher on padded-stride inputs with masked (NaN) rows, labels and a grad scale,
    against the float64 references."""
    rows, width = shape
    generator = torch.Generator().manual_seed(rows * width)
    padded_s = torch.randn(rows, width + 3, dtype=torch.float64, generator=generator) * 3
    padded_t = torch.randn(rows, width + 3, dtype=torch.float64, generator=generator) * 3
    valid = torch.rand(rows, generator=generator) > 0.2
    padded_s[~valid] = np.nan
    student64 = padded_s.to(dtype).double()[:, :width]
    teacher64 = padded_t.to(dtype).double()[:, :width]
    student = padded_s.to(dtype).to(device)[:, :width]
    teacher = padded_t.to(dtype).to(device)[:, :width]
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(0.5, dtype=loss_dtype, device=device)
    if op == "kd":
        labels = torch.randint(0, width, (rows,), generator=generator)
        result = kernels.kd_loss_forward(student, teacher, labels.to(device), valid.to(device),
                                         scale, 2.0, kind, 0.3, 0.7, True, True)
        expected = kd_loss64(student64.numpy(), teacher64.numpy(), temperature=2.0,
                             kind=("kl", "reverse_kl", "jsd")[kind], beta=0.3,
                             labels=labels.numpy(), alpha=0.7, mask=valid.numpy())
    elif op == "bce":
        labels = (torch.rand(rows, width, generator=generator) > 0.7).to(loss_dtype)
        result = kernels.kd_bce_loss_forward(student, teacher, labels.to(device), valid.to(device),
                                             scale, 2.0, 0.7, True, True)
        expected = kd_bce_loss64(student64.numpy(), teacher64.numpy(), temperature=2.0,
                                 labels=labels.numpy(), alpha=0.7, mask=valid.numpy())
    else:
        result = kernels.feature_loss_forward(student, teacher, valid.to(device), scale, kind,
                                              True, True)
        expected = feature_loss64(student64.numpy(), teacher64.numpy(),
                                  kind=("mse", "l1", "cosine")[kind], mask=valid.numpy())
    loss_tol = {torch.float64: 1e-10}.get(dtype, 1e-5)
    grad_tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-2)
    loss, grad_s, grad_t = (tensor.cpu() for tensor in result)
    assert _relative_error(loss, expected[0]) < loss_tol
    assert _relative_error(grad_s, 0.5 * expected[1]) < grad_tol
    assert _relative_error(grad_t, 0.5 * expected[2]) < grad_tol
    assert grad_s.dtype == dtype and loss.dtype == loss_dtype


@pytest.mark.skipif(CUDA_REASON is not None, reason=str(CUDA_REASON))
def test_cuda_scale_grad_scalar_one_is_a_no_op_without_sync():
    kernels = _backends.triton_kernels()
    grad = torch.randn(64, 1000, device="cuda").bfloat16()
    before = grad.clone()
    one = torch.ones((), device="cuda")
    kernels.scale_grad_(grad, one)
    assert torch.equal(grad, before)
    kernels.scale_grad_(grad, one * 3)
    assert torch.equal(grad, (before.float() * 3).bfloat16())


def test_scale_grad_grid_stride_loop(kernels, monkeypatch):
    """With the grid capped at 3 programs, each program loops over many blocks."""
    from kdcore.kernels import scale_grad as scale_module

    monkeypatch.setattr(scale_module, "MAX_PROGRAMS", 3)
    grad = torch.randn(37, 501)
    for grad_output in (torch.tensor(-0.5), torch.randn(37), torch.randn(37, 501)):
        scaled = grad.clone()
        kernels.scale_grad_(scaled, grad_output)
        factor = grad_output[:, None] if grad_output.shape == (37,) else grad_output
        torch.testing.assert_close(scaled, grad * factor, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Compiled mode without a GPU: the interpreter accepts code that the compiler rejects (e.g. a
# non-constexpr global), so compile every kernel for sm_90 in a fresh interpreter-free process.
# --------------------------------------------------------------------------------------------

COMPILE_SCRIPT = r"""
import os
os.environ.pop("TRITON_INTERPRET", None)
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kdcore.kernels import feature_loss, kd_bce_loss, kd_loss, log_mel, scale_grad
from kdcore.ops.log_mel import dft_basis, make_window, mel_filterbank

FLOAT_SCALARS = ("power", "log_eps", "shift", "divisor", "pad_value")
compiled = set()

def build(kernel, pointers, constexprs, num_warps=4):
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name.endswith(("_hi", "_lo")) or name in FLOAT_SCALARS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    compiled.add(kernel.fn.__name__)

for dtype, acc, loss in (("bf16", tl.float32, "fp32"), ("fp64", tl.float64, "fp64")):
    logits = {"student_ptr": "*" + dtype, "teacher_ptr": "*" + dtype, "valid_ptr": "*u8",
              "grad_scale_ptr": "*" + loss, "grad_student_ptr": "*" + dtype,
              "grad_teacher_ptr": "*" + dtype}
    for kind in (0, 1, 2):
        for single in (True, False):
            build(kd_loss._kd_loss_kernel,
                  dict(logits, labels_ptr="*i64", row_loss_ptr="*" + loss),
                  dict(KIND=kind, HAS_CE=True, CE_SEPARATE=True, HAS_VALID=True,
                       HAS_SCALE=True, STUDENT_GRAD=True, TEACHER_GRAD=True, SINGLE=single,
                       BLOCK=1024, ACC=acc))
    flags = dict(HAS_VALID=False, HAS_SCALE=False, STUDENT_GRAD=True, TEACHER_GRAD=True,
                 BLOCK=256, ACC=acc)
    build(kd_bce_loss._kd_bce_kernel, dict(logits, labels_ptr="*" + loss, loss_ptr="*" + loss),
          dict(flags, HAS_CE=True))
    for kind in (0, 1):
        build(feature_loss._elementwise_kernel, dict(logits, loss_ptr="*" + loss),
              dict(flags, KIND=kind))
    build(feature_loss._cosine_kernel, dict(logits, loss_ptr="*" + loss), flags)
    for mode in (0, 1, 2):
        build(scale_grad._scale_grad_kernel,
              {"grad_ptr": "*" + dtype, "grad_output_ptr": "*" + loss},
              dict(MODE=mode, BLOCK=1024, ACC=acc))

# log-mel: both kernels at a 16 kHz geometry (n_fft 512, win 400) and an odd n_fft, every
# pad/power/log mode once and every dot precision, from the tables the launcher would use.
filterbank = mel_filterbank(257, f_min=0.0, f_max=8000.0, n_mels=64, sample_rate=16000)
window = make_window("hann", 400)
split = log_mel.log_mel_split_tables(window, 512, filterbank)
direct = log_mel.log_mel_tables(dft_basis(window, 511, preemphasis=0.97),
                                mel_filterbank(256, f_min=0.0, f_max=8000.0, n_mels=64,
                                               sample_rate=16000, n_fft=511))
wave = {"x_ptr": "*fp32", "lengths_ptr": "*i64", "valid_ptr": "*i64", "basis_ptr": "*fp32",
        "twiddle_ptr": "*fp32", "fb_ptr": "*fp32", "out_ptr": "*fp32"}
cases = [(0, 0, 0, "ieee", 32), (1, 1, 1, "tf32x3", 64), (2, 2, 2, "tf32", 32),
         (3, 0, 3, "bf16", 64), (1, 0, 4, "ieee", 32)]
for pad_mode, power_mode, log_mode, precision, block_t in cases:
    common = dict(N_FFT=512, WIN=400, M_PAD=split.filterbank.shape[-1], PAD_MODE=pad_mode,
                  POWER_MODE=power_mode, LOG_MODE=log_mode, AFFINE=log_mode == 3,
                  PRECISION=precision, EMULATE_BF16=False, BLOCK_T=block_t,
                  BLOCK_F=log_mel.BLOCK_F, BLOCK_K=log_mel.BLOCK_K)
    warps = 4 if block_t == 32 else 8
    build(log_mel._log_mel_split_kernel, wave,
          dict(common, HALF_PAD=split.basis.shape[1], K_PAD=split.basis.shape[2]), warps)
    build(log_mel._log_mel_kernel, wave,
          dict(common, N_FFT=511, M_PAD=direct.filterbank.shape[-1],
               WIN_PAD=direct.basis.shape[1], F_PAD=direct.basis.shape[2]), warps)

jitted = {name for module in (feature_loss, kd_bce_loss, kd_loss, log_mel, scale_grad)
          for name, value in vars(module).items()
          if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel")}
missing = jitted - compiled
assert not missing, f"kernels left out of the compile test: {sorted(missing)}"
print("compiled", sorted(compiled))
"""


def _nvidia_compiler_reason() -> str | None:
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as error:
        return f"triton's compiler cannot be imported ({error})"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return "this Triton build has no NVIDIA backend (ptxas)"
    return None


@pytest.mark.skipif(_nvidia_compiler_reason() is not None, reason=str(_nvidia_compiler_reason()))
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True,
                            text=True, env=environment, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
