"""Time the main job as a user meets it: ``bash scripts/demo.sh`` and ``--quick``, from this
checkout (run it in a fresh clone after ``source scripts/env.sh`` has installed everything),
and save the full run's report with both wall times to ``benchmarks/results/demo-vad.json``.

    python benchmarks/demo_time.py [--out-json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_demo(out: Path, *extra: str) -> float:
    """Wall seconds of ``bash scripts/demo.sh --out OUT --no-progress EXTRA...``."""
    command = ["bash", "scripts/demo.sh", "--out", str(out), "--no-progress", *extra]
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", default=str(ROOT / "benchmarks/results/demo-vad.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        full_s = timed_demo(Path(folder) / "full")
        quick_s = timed_demo(Path(folder) / "quick", "--quick")
        report = json.loads((Path(folder) / "full" / "report.json").read_text())
    record = {
        "report": report,
        "wall_s": full_s,
        "quick_wall_s": quick_s,
        "command": "bash scripts/demo.sh; bash scripts/demo.sh --quick "
                   "(timed by benchmarks/demo_time.py, after scripts/env.sh installed kdcore)",
        "load_average_1min_after": os.getloadavg()[0],
        "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
    }
    Path(args.out_json).write_text(json.dumps(record, indent=2) + "\n")
    print(f"full {full_s:.1f} s, quick {quick_s:.1f} s -> {args.out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
