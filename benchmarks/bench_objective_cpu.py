"""CPU cost of the softmax objective's two loss calls against one fused ``kd_loss`` call.

:class:`kdcore.engine.objectives.SoftmaxObjective` (``multiclass`` and ``frame``) computes the
KD term with ``kd_loss(..., reduction="none")`` and the label term with
``F.cross_entropy(reduction="none")``, then mixes them per row (so an unlabelled row keeps the
KD term at weight 1 and evaluation can report both sums). ``kd_loss`` can do both in one
kernel: ``kd_loss(s, t, labels=y, alpha=a, reduction="sum")``, which the objective uses for a
training step whose rows all have labels (``Batch.all_labelled``). This script times forward +
backward (into the student) of both paths of the objective on the same all-labelled batch, and
of the fused op alone, per backend, and checks they give the same loss and gradient.

Cases (float32, T = 2, alpha = 0.5, every row labelled and valid):

- ``clip``: (4096, 527) logits (AudioSet-sized tagging head, multiclass objective);
- ``frame``: (16, 400, 64) logits with a mask of random lengths (frame objective).

Usage::

    # -> results/cpu-objective.json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_objective_cpu.py
    python benchmarks/bench_objective_cpu.py --repeats 3 --no-save   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, cpu_model, environment, merge_results  # noqa: E402

import kdcore  # noqa: E402
from kdcore import _backends  # noqa: E402
from kdcore.engine.batches import Batch  # noqa: E402
from kdcore.engine.config import ObjectiveConfig  # noqa: E402
from kdcore.engine.objectives import make_objective  # noqa: E402
from kdcore.ops.kd_loss import kd_loss  # noqa: E402

TEMPERATURE, ALPHA = 2.0, 0.5
CASES = {"clip": ("multiclass", (4096, 527)), "frame": ("frame", (16, 400, 64))}


def make_case(task: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    generator = torch.Generator().manual_seed(0)
    student = 3.0 * torch.randn(shape, generator=generator)
    teacher = 3.0 * torch.randn(shape, generator=generator)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    lengths = None
    if task == "frame":
        lengths = torch.randint(shape[1] // 2, shape[1] + 1, (shape[0],), generator=generator)
    batch = Batch(inputs=student, labels=labels, lengths=lengths)
    return student, teacher, batch


def timed(step, repeats: int) -> dict[str, float]:
    step()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "min_ms": samples[0],
            "max_ms": samples[-1], "repeats": repeats}


def run_case(task: str, shape: tuple[int, ...], backend: str, repeats: int) -> dict:
    student0, teacher, batch = make_case(task, shape)
    objective = make_objective(ObjectiveConfig(task=task, temperature=TEMPERATURE, alpha=ALPHA,
                                               loss_backend=backend))
    valid = objective.valid_mask(batch, student0)
    labelled = dataclasses.replace(batch, all_labelled=True)  # as the learner marks it

    def separate() -> tuple[torch.Tensor, torch.Tensor]:
        student = student0.clone().requires_grad_()
        loss = objective(student, teacher, batch).loss
        loss.backward()
        return loss.detach(), student.grad

    def fused_op() -> tuple[torch.Tensor, torch.Tensor]:
        student = student0.clone().requires_grad_()
        loss = kd_loss(student, teacher, temperature=TEMPERATURE, labels=batch.labels,
                       alpha=ALPHA, mask=valid, reduction="sum", backend=backend)
        loss.backward()
        return loss.detach(), student.grad

    def fused() -> tuple[torch.Tensor, torch.Tensor]:
        student = student0.clone().requires_grad_()
        terms = objective(student, teacher, labelled)
        assert not terms.sums, "the objective did not take its fused path"
        terms.loss.backward()
        return terms.loss.detach(), student.grad

    (loss_a, grad_a), (loss_b, grad_b) = separate(), fused()
    torch.testing.assert_close(fused_op()[0], loss_b)
    result = {"separate": timed(separate, repeats), "fused": timed(fused, repeats),
              "fused_op_alone": timed(fused_op, repeats),
              "loss_rel_diff": float((loss_a - loss_b).abs() / loss_a.abs()),
              "grad_max_abs_diff": float((grad_a - grad_b).abs().max())}
    result["separate_over_fused"] = (result["separate"]["median_ms"]
                                     / result["fused"]["median_ms"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case")
    parser.add_argument("--no-save", action="store_true", help="do not write the results")
    args = parser.parse_args(argv)
    backends = ["reference"] + (["cpp"] if _backends.cpp_ops() is not None else [])
    start = time.perf_counter()
    results: dict = {}
    for name, (task, shape) in CASES.items():
        for backend in backends:
            row = run_case(task, shape, backend, args.repeats)
            results[f"{name} {backend}"] = {"task": task, "shape": list(shape),
                                            "backend": backend, **row}
            print(f"{name:<6}{backend:<10} separate {row['separate']['median_ms']:8.2f} ms  "
                  f"fused {row['fused']['median_ms']:8.2f} ms  ratio "
                  f"{row['separate_over_fused']:.2f}  (loss rel diff "
                  f"{row['loss_rel_diff']:.1e}, grad max diff "
                  f"{row['grad_max_abs_diff']:.1e})", flush=True)
    payload = {
        "benchmark": "SoftmaxObjective: its two-call path (kd_loss reduction='none' + "
                     "F.cross_entropy, mixed per row; 'separate') against its fused path (one "
                     "kd_loss(labels=, alpha=, reduction='sum'), taken when Batch.all_labelled; "
                     "'fused'; 'fused_op_alone' is that op call without the objective); "
                     "forward + backward into the student, all rows labelled",
        "command": " ".join(["python", "benchmarks/bench_objective_cpu.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "dtype": "float32", "temperature": TEMPERATURE, "alpha": ALPHA,
        "kdcore": kdcore.__version__,
        "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1_5_15min": list(os.getloadavg()), **environment(),
        "wall_s": time.perf_counter() - start, "results": results}
    if not args.no_save:
        merge_results(RESULTS_DIR / "cpu-objective.json", "softmax_objective", payload)
        print(f"wrote {RESULTS_DIR / 'cpu-objective.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
