"""The bookkeeping of ``scripts/gpu_check.sh``: record the environment and the CUDA test run in
the results JSON, and print the one compact table that ends the check.

Usage::

    python benchmarks/gpu_report.py env RESULTS.json --command "..." [--dry-run]
    python benchmarks/gpu_report.py tests RESULTS.json --junit JUNIT.xml --rc N --seconds S
    python benchmarks/gpu_report.py phase RESULTS.json NAME --rc N --seconds S
    python benchmarks/gpu_report.py table RESULTS.json

``env`` prints GPU name, driver, torch, triton and CUDA and stores them (with the date, the
command and the host) under ``"environment"``; ``tests`` stores pass/fail/skip counts and the
failing test ids under ``"cuda_tests"``; ``phase`` stores each phase's exit status and seconds
under ``"phases"`` (124 = stopped at its time cap); ``table`` prints the summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, merge_results  # noqa: E402

TABLE_TITLE = "== kdcore GPU check: summary =="


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _nvidia_smi() -> dict:
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    name, driver, memory = (part.strip() for part in text.split(",", 2))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def environment(command: str, dry_run: bool) -> dict:
    """GPU, driver, versions, date, command and host of this run."""
    import torch

    info: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"),
                  "command": command, "dry_run": dry_run,
                  "python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "cpu": cpu_model()}
    for name in ("triton", "torchaudio", "numpy", "liger_kernel", "kdcore", "soundfile", "soxr"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as error:  # not installed, or an ABI mismatch
            info[name] = f"unavailable ({type(error).__name__})"
    info.update(_nvidia_smi())
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.setdefault("gpu", properties.name)
        info["capability"] = f"{properties.major}.{properties.minor}"
        info["multiprocessors"] = properties.multi_processor_count
        info["gpu_memory_bytes"] = properties.total_memory
    else:
        info.setdefault("gpu", None)
    return info


def junit_summary(path: Path) -> dict:
    """Counts and failing ids from a pytest JUnit XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        return {"error": f"no JUnit report ({type(error).__name__})"}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing, skip_reasons = [], {}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failing.append(test_id)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failing.append(test_id)
        elif (skipped := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = (skipped.get("message") or "")[:80]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failing": failing[:50], "skip_reasons": skip_reasons}


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _ms(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _x(value: object) -> str:
    return f"{value:.2f}x" if isinstance(value, (int, float)) else "-"


def _verdict(value: object) -> str:
    return {True: "PASS", False: "FAIL"}.get(value, "-")  # type: ignore[arg-type]


def _status(rc: int) -> str:
    return "ok" if rc == 0 else "CAPPED" if rc in (124, 137) else f"rc {rc}"


def table_lines(data: dict) -> list[str]:
    lines = [TABLE_TITLE]
    env = data.get("environment", {})
    dry = " | DRY RUN (CPU, interpreter)" if env.get("dry_run") else ""
    lines.append(f"gpu {env.get('gpu')} | driver {env.get('driver', '-')} | torch "
                 f"{env.get('torch')} | triton {env.get('triton')} | cuda {env.get('cuda')} | "
                 f"{env.get('date')}{dry}")
    phases = data.get("phases", {})
    if phases:
        lines.append("phases: " + ", ".join(
            f"{name} {_status(p['rc'])} {p['seconds']:.0f}s" for name, p in phases.items()))
    tests = data.get("cuda_tests")
    if tests:
        if "error" in tests:
            lines.append(f"cuda tests: {tests['error']}")
        else:
            lines.append(f"cuda tests: {tests['passed']} passed, {tests['failed']} failed, "
                         f"{tests['errors']} errors, {tests['skipped']} skipped"
                         f"{' (collect only)' if tests.get('collect_only') else ''}; "
                         f"selected {tests.get('selected', '?')}")
            lines += [f"  FAILED {test_id}" for test_id in tests.get("failing", [])[:8]]
            reasons = sorted(tests.get("skip_reasons", {}).items(), key=lambda kv: -kv[1])
            lines += [f"  skipped {count}: {reason}" for reason, count in reasons[:3]]

    losses = data.get("losses")
    if losses:
        lines.append(f"losses (fwd+bwd median ms; floor = 3 x tensor bytes / copy bandwidth; "
                     f"liger: {losses.get('liger', '-')}):")
        lines.append(f"  {'op:kind':<20}{'shape':>12}{'dtype':>6}{'kdcore':>9}{'floor%':>7}"
                     f"{'xeager':>8}{'xcomp':>8}{'xliger':>8}{'peakMB':>8} fp64")
        for case in losses.get("cases", []):
            label = f"{case['op']}:{case['kind']}"
            shape = "x".join(map(str, case["shape"]))
            dtype = {"bfloat16": "bf16", "float32": "fp32"}.get(case["dtype"], case["dtype"])
            lead = f"  {label:<20}{shape:>12}{dtype:>6}"
            if "skipped" in case or "error" in case:
                lines.append(f"{lead} {case.get('skipped') or case.get('error', '')[:60]}")
                continue
            ours = case["providers"].get("kdcore-triton", {})
            full = ours.get("full_ms", [None])[0]
            peak = ours.get("peak_extra_bytes")
            fraction = case.get("floor_fraction")
            lines.append(
                f"{lead}{_ms(full):>9}"
                f"{(f'{100 * fraction:.0f}%' if fraction is not None else '-'):>7}"
                f"{_x(case.get('vs_eager')):>8}{_x(case.get('vs_compile')):>8}"
                f"{_x(case.get('vs_liger')):>8}"
                f"{(f'{peak / 2**20:.0f}' if peak is not None else '-'):>8} "
                f"{_verdict(case.get('check', {}).get('passed'))}"
                + (f" ERR {ours['error'][:40]}" if "error" in ours else ""))

    log_mel = data.get("log_mel")
    if log_mel:
        lines.append("log_mel (median ms; err = mel rel L2 vs float64):")
        for case in log_mel.get("cases", []):
            if "providers" not in case:
                lines.append(f"  batch {case['batch']}: {case.get('skipped') or case.get('error')}")
                continue
            cells = []
            for name, entry in case["providers"].items():
                short = name.replace("kdcore-", "")
                cells.append(f"{short} {entry['ms'][0]:.3f} ({entry['mel_rel_l2']:.0e})")
            lines.append(f"  b{case['batch']:<3} " + " | ".join(cells))
        for key, verdict in log_mel.get("targets", {}).items():
            lines.append(f"  target {key}: {verdict['speedup']:.2f}x (>= {verdict['target']}x) "
                         f"{'MET' if verdict['met'] else 'NOT MET'}")

    e2e = data.get("e2e")
    if e2e:
        lines.append(f"end to end (samples/s, best epoch after warm-up; seed frontend "
                     f"{e2e.get('seed_frontend')}):")
        for name, entry in e2e.get("variants", {}).items():
            if "samples_per_s" not in entry:
                lines.append(f"  {name:<26} {entry.get('skipped') or entry.get('error', '')[:60]}")
                continue
            ratio = e2e.get("speedup", {}).get(f"{name} / seed-bf16")
            fill = entry.get("cache_fill_frames_per_s")
            lines.append(f"  {name:<26}{entry['samples_per_s']:>10.1f}"
                         f"{(' ' + _x(ratio) + ' seed-bf16') if ratio is not None else ''}"
                         f"{f' (cache fill {fill:.0f} frames/s)' if fill else ''}")
        parity = e2e.get("loss_parity", {})
        if "fp32" in parity:
            lines.append(f"  loss parity fp32 rel {parity['fp32']['rel_diff']:.1e} "
                         f"{_verdict(parity.get('passed'))}; bf16 rel "
                         f"{parity['bf16']['rel_diff']:.1e}")
        elif "error" in parity:
            lines.append(f"  loss parity: {parity['error'][:70]}")
    for section in ("losses", "log_mel", "e2e"):
        if section not in data:
            lines.append(f"{section}: no results (phase failed or capped before its first case)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    env = sub.add_parser("env")
    env.add_argument("results", type=Path)
    env.add_argument("--command", default="")
    env.add_argument("--dry-run", action="store_true")
    tests = sub.add_parser("tests")
    tests.add_argument("results", type=Path)
    tests.add_argument("--junit", type=Path, required=True)
    tests.add_argument("--rc", type=int, required=True)
    tests.add_argument("--seconds", type=float, required=True)
    tests.add_argument("--selected", type=int, default=None)
    tests.add_argument("--collect-only", action="store_true")
    phase = sub.add_parser("phase")
    phase.add_argument("results", type=Path)
    phase.add_argument("name")
    phase.add_argument("--rc", type=int, required=True)
    phase.add_argument("--seconds", type=float, required=True)
    table = sub.add_parser("table")
    table.add_argument("results", type=Path)
    args = parser.parse_args(argv)

    if args.action == "env":
        info = environment(args.command, args.dry_run)
        for key in ("gpu", "driver", "torch", "triton", "cuda", "python", "torchaudio",
                    "liger_kernel", "kdcore"):
            print(f"{key:>12}: {info.get(key)}")
        merge_results(args.results, "environment", info)
    elif args.action == "tests":
        if args.collect_only:
            summary = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}
        else:
            summary = junit_summary(args.junit)
        selected = args.selected
        if selected is None and "error" not in summary:
            selected = sum(summary[key] for key in ("passed", "failed", "errors", "skipped"))
        summary.update(rc=args.rc, seconds=args.seconds, selected=selected,
                       collect_only=args.collect_only)
        merge_results(args.results, "cuda_tests", summary)
    elif args.action == "phase":
        phases = _load(args.results).get("phases", {})
        phases[args.name] = {"rc": args.rc, "seconds": args.seconds}
        merge_results(args.results, "phases", phases)
    else:
        print("\n".join(table_lines(_load(args.results))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
