"""GPU benchmark of the fused ``kd_loss`` (Triton) against eager, ``torch.compile`` and Liger.

For each kind (kl, jsd), shape and dtype it first checks the Triton loss and student gradient
against a float64 evaluation of the reference, then times forward, backward and forward+backward
with ``triton.testing.do_bench`` (median and 20/80 % quantiles, milliseconds) and measures the
peak memory above the inputs (``torch.cuda.max_memory_allocated``). Backward is reported as
``full - forward`` for every provider, because the Triton op consumes its saved gradient and
refuses ``retain_graph`` re-runs.

Bandwidth floor: a fused step must read both logits once and write the student gradient once,
``3 * N * C * itemsize`` bytes. A device-to-device copy timed in the same run gives the achievable
bandwidth; ``floor %`` is ``(floor bytes / copy bandwidth) / measured time``.

Usage::

    python benchmarks/gpu_losses.py                  # full run on the current GPU
    python benchmarks/gpu_losses.py --quick          # smallest shape only
    python benchmarks/gpu_losses.py --dry-run        # CPU smoke test (interpreter, tiny shapes)

Results merge into ``benchmarks/results/<gpu-name>.json`` under the key ``"kd_loss"``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

SHAPES = [(4096, 527), (32768, 5000), (8192, 32000)]
# Launch-bound sizes (Liger#323: a kernel path can lose to eager when the CPU is the bound):
# a 10-class FSDD batch and a small AudioSet batch. Reported, not gated.
SMALL_SHAPES = [(256, 10), (512, 527)]
LARGE_SHAPES = [(32768, 5000), (8192, 32000)]
DRY_RUN_SHAPES = [(16, 37), (8, 300)]
KINDS = ["kl", "jsd"]
DTYPES = ["bfloat16", "float32"]
TEMPERATURE = 2.0
# Loss relative error, student-gradient error as a fraction of max |grad|, vs float64.
CHECK_TOLERANCES = {"float32": (1e-4, 1e-3), "bfloat16": (1e-4, 2e-2)}
TARGETS = {"floor_fraction": 0.80, "vs_eager": 2.0, "vs_compile": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test: Triton interpreter, tiny shapes, wall-clock timer")
    parser.add_argument("--quick", action="store_true", help="only the smallest issue shape")
    parser.add_argument("--no-small", action="store_true",
                        help="skip the launch-bound small shapes")
    parser.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--no-liger", action="store_true", help="skip Liger-Kernel")
    parser.add_argument("--sweep-configs", action="store_true",
                        help="also time kdcore's kd_loss under other launch configurations "
                             "(single-block limit, chunk width, warps) to tune the defaults")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/<gpu-name>.json; "
                             "a temporary file in --dry-run)")
    return parser.parse_args(argv)


# Triton's interpreter must be switched on before kdcore first imports the kernels.
_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None and _ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    bench,
    device_slug,
    environment,
    merge_results,
)

import kdcore  # noqa: E402
from kdcore.ops.kd_loss import kd_loss_reference  # noqa: E402

# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory allocated by one call of ``fn`` above what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device) -> float:
    """Bytes per millisecond of a device-to-device copy (read + write) of ``numel`` elements."""
    source = torch.empty(numel, dtype=dtype, device=device).normal_()
    target = torch.empty_like(source)
    median_ms = bench(lambda: target.copy_(source), device)[0]
    return 2 * numel * source.element_size() / median_ms


# --------------------------------------------------------------------------------------------
# Providers: each returns a function mapping (student, teacher) to a scalar loss
# --------------------------------------------------------------------------------------------


def kdcore_loss(kind: str, backend: str) -> Callable:
    return partial(kdcore.kd_loss, kind=kind, temperature=TEMPERATURE, backend=backend)


def compiled_reference(kind: str) -> Callable:
    # Every (kind, shape, dtype) case recompiles the same function: lift Dynamo's limit so that
    # later cases are not silently run eagerly.
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)
    reference = partial(kd_loss_reference, kind=kind, temperature=TEMPERATURE)
    return torch.compile(reference, dynamic=False)


def liger_loss(kind: str) -> Callable | None:
    """Liger's KL / JSD on log-probabilities prepared by torch, scaled by T^2 to match."""
    try:
        from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss
    except Exception:
        return None
    scale = TEMPERATURE**2
    if kind == "kl":
        module = LigerKLDIVLoss(reduction="batchmean")

        def loss(student, teacher):
            log_q = torch.log_softmax(student.float() / TEMPERATURE, dim=-1)
            p = torch.softmax(teacher.float() / TEMPERATURE, dim=-1)
            return scale * module(log_q, p)
    else:
        module = LigerJSD(beta=0.5)

        def loss(student, teacher):
            log_q = torch.log_softmax(student.float() / TEMPERATURE, dim=-1)
            log_p = torch.log_softmax(teacher.float() / TEMPERATURE, dim=-1)
            return scale * module(log_q, log_p)
    return loss


def providers(kind: str, device: torch.device, args: argparse.Namespace) -> dict[str, Callable]:
    table = {"kdcore-triton": kdcore_loss(kind, "triton"),
             "eager-reference": kdcore_loss(kind, "reference")}
    if not args.no_compile and device.type == "cuda":
        table["compile-reference"] = compiled_reference(kind)
    if not args.no_liger and device.type == "cuda":
        liger = liger_loss(kind)
        if liger is not None:
            table["liger"] = liger
    return table


# --------------------------------------------------------------------------------------------
# Correctness, then timings
# --------------------------------------------------------------------------------------------


def check_against_float64(kind: str, student: torch.Tensor, teacher: torch.Tensor,
                          dtype_name: str) -> dict:
    """Triton loss and student gradient against the reference evaluated in float64."""
    student_leaf = student.detach().clone().requires_grad_()
    loss = kdcore.kd_loss(student_leaf, teacher, kind=kind, temperature=TEMPERATURE,
                          backend="triton")
    loss.backward()
    student64 = student.detach().double().requires_grad_()
    loss64 = kd_loss_reference(student64, teacher.double(), kind=kind, temperature=TEMPERATURE)
    loss64.backward()
    loss_error = abs(float(loss) - float(loss64)) / max(abs(float(loss64)), 1e-30)
    grad64 = student64.grad
    grad_error = float((student_leaf.grad.double() - grad64).abs().max()
                       / grad64.abs().max().clamp(min=1e-30))
    loss_tol, grad_tol = CHECK_TOLERANCES[dtype_name]
    return {"loss_rel_error": loss_error, "grad_error_vs_max": grad_error,
            "passed": bool(loss_error <= loss_tol and grad_error <= grad_tol
                           and torch.isfinite(student_leaf.grad).all())}


def time_provider(loss_fn: Callable, student: torch.Tensor, teacher: torch.Tensor,
                  device: torch.device) -> dict:
    leaf = student.detach().clone().requires_grad_()

    def forward():
        return loss_fn(leaf, teacher)

    def full():
        leaf.grad = None
        loss_fn(leaf, teacher).backward()

    forward_ms = bench(forward, device)
    full_ms = bench(full, device)
    leaf.grad = None
    peak = peak_extra_bytes(full, device)
    return {"forward_ms": forward_ms, "full_ms": full_ms,
            "backward_ms": [full_ms[0] - forward_ms[0], None, None],
            "peak_extra_bytes": peak}


def run_case(kind: str, shape: tuple[int, int], dtype_name: str, device: torch.device,
             args: argparse.Namespace, bandwidth: float) -> dict:
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator(device=device).manual_seed(0)
    student = (torch.randn(shape, device=device, generator=generator) * 3).to(dtype)
    teacher = (torch.randn(shape, device=device, generator=generator) * 3).to(dtype)
    rows, classes = shape
    floor_bytes = 3 * rows * classes * student.element_size()
    grad_bytes = rows * classes * student.element_size()
    case = {"kind": kind, "shape": list(shape), "dtype": dtype_name, "temperature": TEMPERATURE,
            "floor_bytes": floor_bytes, "gradient_bytes": grad_bytes,
            "floor_ms": floor_bytes / bandwidth,
            "check": check_against_float64(kind, student, teacher, dtype_name),
            "providers": {}}
    for name, loss_fn in providers(kind, device, args).items():
        try:
            case["providers"][name] = time_provider(loss_fn, student, teacher, device)
        except Exception as error:  # one failing baseline must not sink the run
            case["providers"][name] = {"error": f"{type(error).__name__}: {error}"}
    ours = case["providers"]["kdcore-triton"]
    if "full_ms" in ours:
        case["floor_fraction"] = case["floor_ms"] / ours["full_ms"][0]
        for baseline, key in (("eager-reference", "vs_eager"), ("compile-reference",
                                                                  "vs_compile"),
                              ("liger", "vs_liger")):
            other = case["providers"].get(baseline, {})
            if "full_ms" in other:
                case[key] = other["full_ms"][0] / ours["full_ms"][0]
    case["targets"] = evaluate_targets(case, shape, timed=device.type == "cuda")
    if args.sweep_configs:
        case["config_sweep"] = sweep_configs(kind, student, teacher, dtype_name, device)
    return case


def sweep_configs(kind: str, student: torch.Tensor, teacher: torch.Tensor, dtype_name: str,
                  device: torch.device) -> list[dict]:
    """Forward+backward time of kdcore's kd_loss under alternative launch configurations
    (``kdcore.kernels.kd_loss`` module constants), each checked against float64 first."""
    from kdcore.kernels import kd_loss as kd_module
    from kdcore.kernels._common import next_pow2

    defaults = (kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK, dict(kd_module.NUM_WARPS))
    row_block = next_pow2(student.shape[1])
    configs = [(defaults[0], defaults[1], None)]
    default_warps = kd_module.launch_config(student.shape[1])[2]
    if row_block <= 16384:
        for warps in (4, 8, 16, 32):
            if warps != default_warps and row_block // (32 * warps) >= 1:
                configs.append((max(row_block, defaults[0]), defaults[1], warps))
    chunks = (128,) if device.type == "cpu" else (2048, 4096, 8192, 16384)
    for chunk in chunks:
        if chunk < row_block:
            configs.append((1, chunk, None))
            configs.append((1, chunk, max(2, chunk // 512)))  # 16 classes a thread
    results = []
    loss_fn = kdcore_loss(kind, "triton")
    try:
        for single_max, chunk, warps in configs:
            kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK = single_max, chunk
            kd_module.NUM_WARPS.clear()
            if warps is not None:
                kd_module.NUM_WARPS[row_block if row_block <= single_max else chunk] = warps
            single, block, num_warps = kd_module.launch_config(student.shape[1])
            entry = {"single": single, "block": block, "num_warps": num_warps}
            try:
                entry["passed"] = check_against_float64(kind, student, teacher,
                                                        dtype_name)["passed"]
                entry["full_ms"] = time_provider(loss_fn, student, teacher, device)["full_ms"]
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {error}"
            results.append(entry)
    finally:
        kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK = defaults[0], defaults[1]
        kd_module.NUM_WARPS.clear()
        kd_module.NUM_WARPS.update(defaults[2])
    return results


def evaluate_targets(case: dict, shape: tuple[int, int], timed: bool) -> dict:
    """Pass/fail per issue target; None where not measured or not applicable (a dry run's
    interpreter timings judge nothing)."""
    ours = case["providers"].get("kdcore-triton", {})
    targets: dict[str, bool | None] = {}
    large = timed and list(shape) in [list(s) for s in LARGE_SHAPES]
    fraction = case.get("floor_fraction")
    targets["floor>=80%"] = (fraction >= TARGETS["floor_fraction"]
                             if large and fraction is not None else None)
    gated = timed and list(shape) not in [list(s) for s in SMALL_SHAPES]
    for key, name in (("vs_eager", ">=2x eager"), ("vs_compile", ">=1x compile")):
        value = case.get(key)
        targets[name] = value >= TARGETS[key] if value is not None and gated else None
    peak = ours.get("peak_extra_bytes")
    # One gradient plus per-row scratch and allocator rounding.
    allowance = case["gradient_bytes"] + 64 * case["shape"][0] + (1 << 20)
    targets["peak<=1 grad"] = peak <= allowance if peak is not None else None
    targets["correct"] = case["check"]["passed"]
    return targets


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def format_table(cases: list[dict]) -> str:
    header = (f"{'kind':4} {'shape':>12} {'dtype':>8} {'provider':>18} {'fwd ms':>8} "
              f"{'bwd ms':>8} {'full ms':>8} {'peak MB':>8} {'floor%':>7} {'x eager':>7} "
              f"{'x comp':>7}")
    lines = [header, "-" * len(header)]
    for case in cases:
        shape = "x".join(map(str, case["shape"]))
        for name, result in case["providers"].items():
            if "error" in result:
                lines.append(f"{case['kind']:4} {shape:>12} {case['dtype']:>8} {name:>18} "
                             f"error: {result['error'][:60]}")
                continue
            peak = result["peak_extra_bytes"]
            peak_text = f"{peak / 2**20:8.1f}" if peak is not None else f"{'-':>8}"
            is_ours = name == "kdcore-triton"
            floor = f"{100 * case['floor_ms'] / result['full_ms'][0]:6.1f}%"
            eager = case["providers"].get("eager-reference", {}).get("full_ms")
            compiled = case["providers"].get("compile-reference", {}).get("full_ms")
            x_eager = f"{eager[0] / result['full_ms'][0]:7.2f}" if eager else f"{'-':>7}"
            x_comp = f"{compiled[0] / result['full_ms'][0]:7.2f}" if compiled else f"{'-':>7}"
            lines.append(
                f"{case['kind']:4} {shape:>12} {case['dtype']:>8} "
                f"{name + (' *' if is_ours else ''):>18} {result['forward_ms'][0]:8.3f} "
                f"{result['backward_ms'][0]:8.3f} {result['full_ms'][0]:8.3f} {peak_text} "
                f"{floor:>7} {x_eager} {x_comp}")
        check = case["check"]
        verdicts = "  ".join(f"{name}: {'-' if ok is None else ('PASS' if ok else 'FAIL')}"
                             for name, ok in case["targets"].items())
        lines.append(f"     check vs fp64: loss rel {check['loss_rel_error']:.1e}, grad "
                     f"{check['grad_error_vs_max']:.1e} of max | {verdicts}")
        for entry in case.get("config_sweep", []):
            timing = (f"{entry['full_ms'][0]:8.3f} ms" if "full_ms" in entry
                      else entry.get("error", "")[:60])
            lines.append(f"     config single={entry['single']!s:5} block={entry['block']:6} "
                         f"warps={entry['num_warps']:2}: {timing} "
                         f"{'ok' if entry.get('passed') else 'WRONG'}")
    return "\n".join(lines)


def write_results(path: Path, device_name: str, cases: list[dict], copy_bw: dict) -> None:
    merge_results(path, "kd_loss", {
        "device": device_name,
        **environment(),
        "temperature": TEMPERATURE,
        "timing": "triton.testing.do_bench, quantiles [0.5, 0.2, 0.8], ms; backward = full - "
                  "forward (medians)",
        "providers": {
            "kdcore-triton": "kdcore.kd_loss(backend='triton'): fused Triton forward that also "
                             "writes the gradient; backward scales it in place",
            "eager-reference": "kdcore.kd_loss(backend='reference'): plain torch ops",
            "compile-reference": "torch.compile(kd_loss_reference, dynamic=False)",
            "liger": "fp32 torch log_softmax/softmax feeding LigerKLDIVLoss(batchmean) or "
                     "LigerJSD(beta=0.5), times T^2",
        },
        "copy_bandwidth_GBps": copy_bw,
        "targets": TARGETS,
        "cases": cases,
    })


def main(args: argparse.Namespace) -> int:
    if args.dry_run:
        device = torch.device("cpu")
        device_name = "cpu-dry-run"
        shapes = DRY_RUN_SHAPES
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the CPU smoke test", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(device)
        shapes = SHAPES[:1] if args.quick else SHAPES
        if not args.no_small:
            shapes = SMALL_SHAPES + shapes
    output = args.output
    if output is None:
        output = (Path(os.environ.get("TMPDIR", "/tmp")) / "kdcore-gpu-losses-dry-run.json"
                  if args.dry_run else RESULTS_DIR / f"{device_slug(device_name)}.json")

    cases, copy_bw = [], {}
    for dtype_name in args.dtypes:
        for shape in shapes:
            bandwidth = copy_bandwidth(shape[0] * shape[1], getattr(torch, dtype_name), device)
            copy_bw[f"{dtype_name}:{shape[0]}x{shape[1]}"] = bandwidth / 1e6
            for kind in args.kinds:
                case = run_case(kind, shape, dtype_name, device, args, bandwidth)
                case["copy_bandwidth_GBps"] = bandwidth / 1e6
                cases.append(case)
                print(f"done {kind} {shape} {dtype_name}", file=sys.stderr, flush=True)

    print(f"device: {device_name}; torch {torch.__version__}; * = kdcore fused Triton")
    print(format_table(cases))
    write_results(output, device_name, cases, copy_bw)
    print(f"wrote {output}")
    failed = [c for c in cases if c["targets"]["correct"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
