"""The ``kdcore`` command line."""

from __future__ import annotations

import argparse
import time

import torch


def _time_ms(function, repeats: int = 5) -> float:
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return sorted(samples)[len(samples) // 2]


def demo(args: argparse.Namespace) -> int:
    """Distillation losses on every backend available here: values, agreement, timings."""
    import kdcore
    from kdcore import _backends

    rows, classes = args.rows, args.classes
    print(f"kdcore {kdcore.__version__} · torch {torch.__version__} · "
          f"{torch.get_num_threads()} CPU threads")
    print("building the C++ kernels if needed (first run only) ...", flush=True)
    backends = ["reference"]
    if _backends.cpp_ops() is not None:
        backends.append("cpp")
    if _backends.triton_unavailable_reason(torch.device("cpu")) is None and rows * classes < 1e5:
        backends.append("triton")
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(rows, classes, generator=generator) * 3
    student_init = torch.randn(rows, classes, generator=generator) * 3
    labels = torch.randint(0, classes, (rows,), generator=generator)
    print(f"\nkd_loss forward+backward on ({rows}, {classes}) fp32, T=2, alpha=0.5 with labels")
    print(f"{'kind':<11}{'backend':<11}{'loss':>14}{'max |grad - ref|':>19}{'ms':>9}")
    for kind in ("kl", "reverse_kl", "jsd"):
        reference_grad = None
        for backend in backends:
            student = student_init.clone().requires_grad_()

            def step(student=student, backend=backend, kind=kind):
                student.grad = None
                loss = kdcore.kd_loss(student, teacher, temperature=2.0, kind=kind,
                                      labels=labels, alpha=0.5, backend=backend)
                loss.backward()
                return loss

            loss = step()
            if reference_grad is None:
                reference_grad = student.grad.clone()
            error = (student.grad - reference_grad).abs().max().item()
            print(f"{kind:<11}{backend:<11}{loss.item():>14.6f}{error:>19.2e}"
                  f"{_time_ms(step):>9.2f}")
    return 0


def training_demo(args: argparse.Namespace) -> int:
    """Teacher, student alone and student with KD on SyntheticAudio (kdcore.demo)."""
    from kdcore.demo import run_demo

    run_demo(quick=args.quick, out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo", help="train a teacher, the student alone and the student with KD on the "
        "embedded SyntheticAudio set; print the table, write reports and plots")
    demo_parser.add_argument("--quick", action="store_true",
                             help="smoke-test sizes (about 2 minutes on 2 CPU cores)")
    demo_parser.add_argument("--out", default="kdcore_demo",
                             help="output folder (default: kdcore_demo)")
    demo_parser.set_defaults(handler=training_demo)
    bench_parser = commands.add_parser("bench", help="loss ops on every backend available "
                                       "here: values, agreement, timings")
    bench_parser.add_argument("--quick", action="store_true", help="smaller shapes")
    bench_parser.add_argument("--rows", type=int, default=4096)
    bench_parser.add_argument("--classes", type=int, default=527)
    bench_parser.set_defaults(handler=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.quick:
        args.rows, args.classes = min(args.rows, 512), min(args.classes, 527)
    return args.handler(args)
