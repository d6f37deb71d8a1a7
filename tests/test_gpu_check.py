"""``scripts/gpu_check.sh --dry-run`` (the GPU proof on the CPU: tiny shapes, Triton
interpreter, tests only collected) runs end to end, writes every section of its JSON and prints
its table last, so the one-command GPU check cannot rot between GPU leases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("environment", "phases", "cuda_tests", "losses", "log_mel", "e2e")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils timeout")
def test_dry_run_writes_every_section_and_prints_the_table_last(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": ""}
    env.pop("TRITON_INTERPRET", None)  # the scripts must switch the interpreter on themselves
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                             "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    data = json.loads((out / "cpu-dry-run.json").read_text())
    missing = [section for section in SECTIONS if section not in data]
    assert not missing, f"sections missing: {missing}\n{output[-3000:]}"
    assert data["environment"]["dry_run"] is True
    assert data["environment"]["command"] == f"bash scripts/gpu_check.sh --dry-run --out {out}"
    assert data["environment"]["torch"]
    for name in ("cuda_tests", "losses", "log_mel", "e2e"):
        assert data["phases"][name]["rc"] == 0, data["phases"]

    # The CUDA tests are selected (and only collected here); this test is never among them.
    tests = data["cuda_tests"]
    assert tests["collect_only"] and tests["selected"] > 0
    collected = (out / "cuda_tests.out").read_text()
    assert "test_gpu_check" not in collected
    selected = [line for line in collected.splitlines() if line.startswith("tests/")]
    assert selected and all(("cuda" in line.lower() or "gpu" in line.lower())
                            for line in selected if "test_kd_loss.py" in line)
    assert any("test_kd_loss.py::" in line and "cuda" in line for line in selected)

    # Every (op, kind) ran, was checked against float64, and passed.
    cases = data["losses"]["cases"]
    assert {(c["op"], c["kind"]) for c in cases} == {
        ("kd_loss", "kl"), ("kd_loss", "jsd"), ("kd_bce_loss", "bce"),
        ("feature_loss", "mse"), ("feature_loss", "cosine")}
    assert {c["dtype"] for c in cases} == {"bfloat16", "float32"}
    for case in cases:
        assert case["check"]["passed"], case
        assert case["check"]["loss_rel_error"] < 1e-4
        assert "full_ms" in case["providers"]["kdcore-triton"]
        assert "full_ms" in case["providers"]["eager-reference"]
    assert data["losses"]["complete"]

    log_mel = data["log_mel"]
    assert log_mel["complete"]
    providers = log_mel["cases"][0]["providers"]
    assert {"kdcore-ieee", "kdcore-tf32", "torch_stft"} <= set(providers)
    for entry in providers.values():  # each path's error against float64 is recorded
        assert 0 <= entry["mel_rel_l2"] < 1e-3

    e2e = data["e2e"]
    assert e2e["complete"] and e2e["loss_parity"]["passed"]
    assert e2e["loss_parity"]["fp32"]["rel_diff"] < 1e-3
    for name in ("seed-fp32", "seed-bf16", "distiller-online", "distiller-cached"):
        assert e2e["variants"][name]["samples_per_s"] > 0, e2e["variants"][name]
    assert "cache_fill_frames_per_s" in e2e["variants"]["distiller-cached"]
    assert "skipped" in e2e["variants"]["distiller-cached-compile"]

    # The table is the last thing printed, with a line for every section.
    tail = result.stdout.rstrip().splitlines()
    title = max(i for i, line in enumerate(tail) if "kdcore GPU check: summary" in line)
    table = "\n".join(tail[title:])
    for marker in ("cuda tests:", "losses (", "kd_loss:kl", "feature_loss:cosine", "log_mel (",
                   "end to end", "loss parity"):
        assert marker in table, table
    assert "no results" not in table, table
    assert (out / "gpu_check_table.txt").read_text().strip() == table.strip()
    assert (out / "gpu_check.log").stat().st_size > 0


def _item(nodeid: str, marks=(), fixtures=()):
    from types import SimpleNamespace

    path = Path(nodeid.split("::")[0])
    return SimpleNamespace(path=path, nodeid=nodeid, fixturenames=list(fixtures),
                           iter_markers=lambda: iter(marks))


def test_cuda_selection_rules():
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from pytest_cuda_only import needs_cuda
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    skipif = pytest.mark.skipif(True, reason="needs a CUDA GPU").mark
    none_reason = pytest.mark.skipif(False, reason="None").mark
    assert needs_cuda(_item("tests/test_a.py::test_cuda_parity[bf16]"))
    assert needs_cuda(_item("tests/test_a.py::test_x[device=cuda]"))
    assert needs_cuda(_item("tests/test_a.py::test_x", marks=[skipif]))
    assert needs_cuda(_item("tests/test_a.py::test_x", marks=[SimpleNamespace(name="gpu", args=(),
                                                                        kwargs={})]))
    assert needs_cuda(_item("tests/test_a.py::test_x", fixtures=["cuda_device"]))
    # A CPU test is not picked because its file name or an unrelated mark says nothing.
    assert not needs_cuda(_item("tests/test_gpu_things.py::test_plain", marks=[none_reason]))
    assert not needs_cuda(_item("tests/test_a.py::test_plain", fixtures=["tmp_path"]))
    # This file's own dry-run test would recurse: never picked.
    assert not needs_cuda(_item("tests/test_gpu_check.py::test_dry_run_gpu"))
