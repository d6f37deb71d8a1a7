"""GPU benchmark of the fused loss ops (``kd_loss``, ``kd_bce_loss``, ``feature_loss``, Triton)
against eager torch, ``torch.compile`` and Liger-Kernel.

For each case (op, kind, shape, dtype) it first checks the Triton loss and student gradient
against a float64 evaluation of the reference on fresh random inputs, then times forward,
backward and forward+backward with ``triton.testing.do_bench`` (median and 20/80 % quantiles,
milliseconds, CUDA events) and measures the peak memory above the inputs
(``torch.cuda.max_memory_allocated``). Backward is reported as ``full - forward`` for every
provider, because the Triton op consumes its saved gradient and refuses ``retain_graph``
re-runs.

Bandwidth floor: a fused step must read both inputs once and write the student gradient once,
``3 * N * C * itemsize`` bytes. A device-to-device copy timed in the same run gives the achievable
bandwidth; ``floor %`` is ``(floor bytes / copy bandwidth) / measured time``.

Cases run in priority order (KD KL first, the small launch-bound shapes last); with
``--budget-s`` the cases that would start after the budget are recorded as skipped, and the JSON
is rewritten after every case, so a run stopped from outside keeps what it measured.

Usage::

    python benchmarks/gpu_losses.py                  # full run on the current GPU
    python benchmarks/gpu_losses.py --quick          # KD-KL at the first large shape only
    python benchmarks/gpu_losses.py --sweep-configs  # also kd_loss launch configurations
    python benchmarks/gpu_losses.py --dry-run        # CPU smoke test (interpreter, tiny shapes)

Results merge into ``benchmarks/results/<gpu-name>.json`` under the key ``"losses"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

# (op, kind) in priority order.
OP_KINDS = [("kd_loss", "kl"), ("kd_loss", "jsd"), ("kd_bce_loss", "bce"),
            ("feature_loss", "mse"), ("feature_loss", "cosine")]
OPS = sorted({op for op, _ in OP_KINDS})
LARGE_SHAPES = [(32768, 5000), (8192, 32000)]
# Launch-bound sizes (Liger#323: a kernel path can lose to eager when the CPU is the bound):
# a 10-class FSDD batch and a small AudioSet batch; kd_loss KL only. Reported, not gated.
SMALL_SHAPES = [(256, 10), (512, 527)]
DRY_RUN_SHAPES = [(8, 37)]
DTYPES = ["bfloat16", "float32"]
TEMPERATURE = 2.0
# Loss relative error, student-gradient error as a fraction of max |grad|, vs float64.
CHECK_TOLERANCES = {"float32": (1e-4, 1e-3), "bfloat16": (1e-4, 2e-2)}
TARGETS = {"floor_fraction": 0.80, "vs_eager": 2.0, "vs_compile": 1.0, "vs_liger": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU smoke test: Triton interpreter, tiny shapes, wall-clock timer")
    parser.add_argument("--quick", action="store_true",
                        help="kd_loss KL at the first large shape only")
    parser.add_argument("--no-small", action="store_true",
                        help="skip the launch-bound small shapes")
    parser.add_argument("--ops", nargs="+", default=OPS, choices=OPS)
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="only these kinds (kl, jsd, bce, mse, cosine); default all")
    parser.add_argument("--dtypes", nargs="+", default=DTYPES, choices=DTYPES)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--no-liger", action="store_true", help="skip Liger-Kernel")
    parser.add_argument("--sweep-configs", action="store_true",
                        help="also time kdcore's kd_loss under other launch configurations "
                             "(single-block limit, chunk width, warps) to tune the defaults")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new case after this many seconds (default: no limit)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/<gpu-name>.json; "
                             "a temporary file in --dry-run)")
    return parser.parse_args(argv)


# Triton's interpreter must be switched on before kdcore first imports the kernels.
_ARGS = parse_args() if __name__ == "__main__" else None
if _ARGS is not None and _ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"

import _common  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    RESULTS_DIR,
    bench,
    device_slug,
    environment,
    merge_results,
)

import kdcore  # noqa: E402
from kdcore.ops.feature_loss import feature_loss_reference  # noqa: E402
from kdcore.ops.kd_bce_loss import kd_bce_loss_reference  # noqa: E402
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


def kdcore_loss(op: str, kind: str, backend: str) -> Callable:
    """kdcore's op with ``backend`` (T=2 for the KD ops; default reductions)."""
    if op == "kd_loss":
        return partial(kdcore.kd_loss, kind=kind, temperature=TEMPERATURE, backend=backend)
    if op == "kd_bce_loss":
        return partial(kdcore.kd_bce_loss, temperature=TEMPERATURE, backend=backend)
    return partial(kdcore.feature_loss, kind=kind, backend=backend)


def reference_loss(op: str, kind: str) -> Callable:
    """The plain-torch reference of ``op`` (fp64 maths on fp64 inputs)."""
    if op == "kd_loss":
        return partial(kd_loss_reference, kind=kind, temperature=TEMPERATURE)
    if op == "kd_bce_loss":
        return partial(kd_bce_loss_reference, temperature=TEMPERATURE)
    return partial(feature_loss_reference, kind=kind)


def compiled_reference(op: str, kind: str) -> Callable:
    # Every (kind, shape, dtype) case recompiles the same function: lift Dynamo's limit so that
    # later cases are not silently run eagerly.
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 256)
    return torch.compile(reference_loss(op, kind), dynamic=False)


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


def liger_status(args: argparse.Namespace) -> str:
    if args.no_liger:
        return "disabled (--no-liger)"
    try:
        from importlib.metadata import version

        from liger_kernel.transformers import LigerJSD, LigerKLDIVLoss  # noqa: F401

        return f"liger-kernel {version('liger-kernel')}"
    except Exception as error:  # what liger_loss() would meet
        return f"not importable ({type(error).__name__}: {str(error)[:80]})"


def providers(op: str, kind: str, shape: tuple[int, int], device: torch.device,
              args: argparse.Namespace) -> dict[str, Callable]:
    table = {"kdcore-triton": kdcore_loss(op, kind, "triton"),
             "eager-reference": reference_loss(op, kind)}
    large = list(shape) in [list(s) for s in LARGE_SHAPES]
    if not args.no_compile and device.type == "cuda" and large:
        table["compile-reference"] = compiled_reference(op, kind)
    if not args.no_liger and device.type == "cuda" and op == "kd_loss":
        liger = liger_loss(kind)
        if liger is not None:
            table["liger"] = liger
    return table


# --------------------------------------------------------------------------------------------
# Correctness, then timings
# --------------------------------------------------------------------------------------------


def make_inputs(op: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random logits (std 3) or features (std 1), never zeros."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scale = 1.0 if op == "feature_loss" else 3.0
    student = (torch.randn(shape, device=device, generator=generator) * scale).to(dtype)
    teacher = (torch.randn(shape, device=device, generator=generator) * scale).to(dtype)
    return student, teacher


def check_against_float64(op: str, kind: str, student: torch.Tensor, teacher: torch.Tensor,
                          dtype_name: str) -> dict:
    """Triton loss and student gradient against the reference evaluated in float64."""
    student_leaf = student.detach().clone().requires_grad_()
    loss = kdcore_loss(op, kind, "triton")(student_leaf, teacher)
    loss.backward()
    student64 = student.detach().double().requires_grad_()
    loss64 = reference_loss(op, kind)(student64, teacher.double())
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

    if device.type == "cuda":
        full()  # compile / warm up outside the timed region (do_bench warms up too)
    forward_ms = bench(forward, device)
    full_ms = bench(full, device)
    leaf.grad = None
    peak = peak_extra_bytes(full, device)
    return {"forward_ms": forward_ms, "full_ms": full_ms,
            "backward_ms": [full_ms[0] - forward_ms[0], None, None],
            "peak_extra_bytes": peak}


def run_case(op: str, kind: str, shape: tuple[int, int], dtype_name: str, device: torch.device,
             args: argparse.Namespace, bandwidth: float) -> dict:
    dtype = getattr(torch, dtype_name)
    rows, classes = shape
    itemsize = torch.empty((), dtype=dtype).element_size()
    floor_bytes = 3 * rows * classes * itemsize
    check_inputs = make_inputs(op, shape, dtype, device, seed=1)
    case = {"op": op, "kind": kind, "shape": list(shape), "dtype": dtype_name,
            "temperature": TEMPERATURE if op != "feature_loss" else None,
            "floor_bytes": floor_bytes, "gradient_bytes": rows * classes * itemsize,
            "floor_ms": floor_bytes / bandwidth,
            "check": check_against_float64(op, kind, *check_inputs, dtype_name),
            "providers": {}}
    del check_inputs
    student, teacher = make_inputs(op, shape, dtype, device, seed=2)
    for name, loss_fn in providers(op, kind, shape, device, args).items():
        try:
            case["providers"][name] = time_provider(loss_fn, student, teacher, device)
        except Exception as error:  # one failing baseline must not sink the run
            case["providers"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
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
    if args.sweep_configs and op == "kd_loss":
        case["config_sweep"] = sweep_configs(kind, student, teacher, dtype_name, device)
    return case


def sweep_configs(kind: str, student: torch.Tensor, teacher: torch.Tensor, dtype_name: str,
                  device: torch.device) -> list[dict]:
    """Forward+backward time of kdcore's kd_loss under alternative launch configurations
    (``kdcore.kernels.kd_loss`` module constants), each checked against float64 first."""
    try:
        from kdcore.kernels import kd_loss as kd_module
        from kdcore.kernels._common import next_pow2

        defaults = (kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK, dict(kd_module.NUM_WARPS))
        default_warps = kd_module.launch_config(student.shape[1])[2]
    except Exception as error:  # the kernel module's knobs moved: say so, don't crash
        return [{"error": f"launch knobs unavailable: {type(error).__name__}: {error}"}]
    row_block = next_pow2(student.shape[1])
    configs = [(defaults[0], defaults[1], None)]
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
    loss_fn = kdcore_loss("kd_loss", kind, "triton")
    try:
        for single_max, chunk, warps in configs:
            kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK = single_max, chunk
            kd_module.NUM_WARPS.clear()
            if warps is not None:
                kd_module.NUM_WARPS[row_block if row_block <= single_max else chunk] = warps
            single, block, num_warps = kd_module.launch_config(student.shape[1])
            entry = {"single": single, "block": block, "num_warps": num_warps}
            try:
                entry["passed"] = check_against_float64("kd_loss", kind, student, teacher,
                                                        dtype_name)["passed"]
                entry["full_ms"] = time_provider(loss_fn, student, teacher, device)["full_ms"]
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {error}"[:500]
            results.append(entry)
    finally:
        kd_module.SINGLE_BLOCK_MAX, kd_module.CHUNK = defaults[0], defaults[1]
        kd_module.NUM_WARPS.clear()
        kd_module.NUM_WARPS.update(defaults[2])
    return results


def evaluate_targets(case: dict, shape: tuple[int, int], timed: bool) -> dict:
    """Pass/fail per issue target; None where not measured or not applicable (a dry run's
    interpreter timings judge nothing; the small shapes are reported, not gated)."""
    ours = case["providers"].get("kdcore-triton", {})
    targets: dict[str, bool | None] = {}
    large = timed and list(shape) in [list(s) for s in LARGE_SHAPES]
    fraction = case.get("floor_fraction")
    targets["floor>=80%"] = (fraction >= TARGETS["floor_fraction"]
                             if large and fraction is not None else None)
    for key, name in (("vs_eager", ">=2x eager"), ("vs_compile", ">=1x compile"),
                      ("vs_liger", ">=1x liger")):
        value = case.get(key)
        targets[name] = value >= TARGETS[key] if value is not None and large else None
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
    header = (f"{'op':>12} {'kind':6} {'shape':>11} {'dtype':>8} {'provider':>18} "
              f"{'fwd ms':>8} {'bwd ms':>8} {'full ms':>8} {'peak MB':>8} {'floor%':>7} "
              f"{'x eager':>7} {'x comp':>7}")
    lines = [header, "-" * len(header)]
    for case in cases:
        shape = "x".join(map(str, case["shape"]))
        lead = f"{case['op']:>12} {case['kind']:6} {shape:>11} {case['dtype']:>8}"
        if "skipped" in case:
            lines.append(f"{lead} skipped: {case['skipped']}")
            continue
        if "error" in case:
            lines.append(f"{lead} error: {case['error'][:80]}")
            continue
        for name, result in case["providers"].items():
            if "error" in result:
                lines.append(f"{lead} {name:>18} error: {result['error'][:60]}")
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
                f"{lead} {name + (' *' if is_ours else ''):>18} {result['forward_ms'][0]:8.3f} "
                f"{result['backward_ms'][0]:8.3f} {result['full_ms'][0]:8.3f} {peak_text} "
                f"{floor:>7} {x_eager} {x_comp}")
        check = case["check"]
        verdicts = "  ".join(f"{name}: {'-' if ok is None else ('PASS' if ok else 'FAIL')}"
                             for name, ok in case["targets"].items())
        lines.append(f"{'':>12} check vs fp64: loss rel {check['loss_rel_error']:.1e}, grad "
                     f"{check['grad_error_vs_max']:.1e} of max | {verdicts}")
        for entry in case.get("config_sweep", []):
            if "single" not in entry:
                lines.append(f"{'':>12} config sweep: {entry.get('error', '')[:80]}")
                continue
            timing = (f"{entry['full_ms'][0]:8.3f} ms" if "full_ms" in entry
                      else entry.get("error", "")[:60])
            lines.append(f"{'':>12} config single={entry['single']!s:5} "
                         f"block={entry['block']:6} warps={entry['num_warps']:2}: {timing} "
                         f"{'ok' if entry.get('passed') else 'WRONG'}")
    return "\n".join(lines)


def write_results(path: Path, device_name: str, cases: list[dict], copy_bw: dict,
                  args: argparse.Namespace, complete: bool) -> None:
    merge_results(path, "losses", {
        "device": device_name,
        **environment(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "complete": complete,
        "temperature": TEMPERATURE,
        "timing": "triton.testing.do_bench, quantiles [0.5, 0.2, 0.8], ms; backward = full - "
                  "forward (medians); inputs std 3 (logits) or 1 (features), seed 2; the "
                  "fp64 check uses other inputs (seed 1)",
        "providers": {
            "kdcore-triton": "kdcore.<op>(backend='triton'): fused Triton forward that also "
                             "writes the gradient; backward scales it in place",
            "eager-reference": "the op's plain-torch reference (kdcore.ops.*_reference)",
            "compile-reference": "torch.compile(reference, dynamic=False), large shapes only",
            "liger": "kd_loss only: fp32 torch log_softmax/softmax feeding "
                     "LigerKLDIVLoss(batchmean) or LigerJSD(beta=0.5), times T^2",
        },
        "liger": liger_status(args),
        "copy_bandwidth_GBps": copy_bw,
        "targets": TARGETS,
        "cases": cases,
    })


def plan_cases(args: argparse.Namespace, dry_run: bool) -> list[tuple[str, str, tuple, str]]:
    """(op, kind, shape, dtype) in priority order, so that a budget cuts the least useful:
    kd_loss in the first dtype at every large shape; the other ops in the first dtype at the
    first shape; kd_loss in the other dtypes; the rest; kd_loss KL at the small shapes."""
    shapes = DRY_RUN_SHAPES if dry_run else LARGE_SHAPES[:1] if args.quick else LARGE_SHAPES
    op_kinds = [(op, kind) for op, kind in OP_KINDS if op in args.ops
                and (args.kinds is None or kind in args.kinds)]
    if args.quick:
        op_kinds = op_kinds[:1]
    plan = [(op, kind, shape, dtype) for op, kind in op_kinds for dtype in args.dtypes
            for shape in shapes]

    def tier(case: tuple) -> int:
        op, _, shape, dtype = case
        first_dtype = dtype == args.dtypes[0]
        if op == "kd_loss":
            return 0 if first_dtype else 2
        return 1 if first_dtype and shape == shapes[0] else 3

    plan.sort(key=tier)  # stable: op-kind order within a tier
    if not (dry_run or args.quick or args.no_small) and ("kd_loss", "kl") in op_kinds:
        plan += [("kd_loss", "kl", shape, dtype) for dtype in args.dtypes
                 for shape in SMALL_SHAPES]
    return plan


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
        device_name = "cpu-dry-run"
        _common.CPU_REPEATS = 1
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run for the CPU smoke test", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(device)
    output = args.output
    if output is None:
        output = (Path(os.environ.get("TMPDIR", "/tmp")) / "kdcore-gpu-losses-dry-run.json"
                  if args.dry_run else RESULTS_DIR / f"{device_slug(device_name)}.json")

    cases: list[dict] = []
    copy_bw: dict[str, float] = {}
    bandwidths: dict[tuple, float] = {}
    for op, kind, shape, dtype_name in plan_cases(args, args.dry_run):
        stub = {"op": op, "kind": kind, "shape": list(shape), "dtype": dtype_name}
        elapsed = time.perf_counter() - started
        if args.budget_s is not None and elapsed > args.budget_s:
            cases.append({**stub, "skipped": f"budget {args.budget_s:.0f} s spent"})
            continue
        try:
            key = (shape, dtype_name)
            if key not in bandwidths:
                bandwidths[key] = copy_bandwidth(shape[0] * shape[1], getattr(torch, dtype_name),
                                                 device)
                copy_bw[f"{dtype_name}:{shape[0]}x{shape[1]}"] = bandwidths[key] / 1e6
            case = run_case(op, kind, shape, dtype_name, device, args, bandwidths[key])
            case["copy_bandwidth_GBps"] = bandwidths[key] / 1e6
        except Exception as error:  # e.g. out of memory: record, go on
            case = {**stub, "error": f"{type(error).__name__}: {error}"[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        case["seconds"] = time.perf_counter() - started - elapsed
        cases.append(case)
        write_results(output, device_name, cases, copy_bw, args, complete=False)
        print(f"done {op} {kind} {shape} {dtype_name} ({case['seconds']:.1f} s)",
              file=sys.stderr, flush=True)

    print(f"device: {device_name}; torch {torch.__version__}; * = kdcore fused Triton; "
          f"liger: {liger_status(args)}")
    print(format_table(cases))
    write_results(output, device_name, cases, copy_bw, args, complete=True)
    print(f"wrote {output}")
    failed = [c for c in cases if c.get("targets", {}).get("correct") is False or "error" in c]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
