"""Runs in fresh processes: SIGKILL mid-epoch then resume (bitwise on CPU), and DDP through
torchrun with gloo on two CPU processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine_script import loss_backend

SCRIPT = Path(__file__).with_name("engine_script.py")
REPO = SCRIPT.parent.parent


def run_env() -> dict[str, str]:
    # Passive OpenMP waits: spinning pool threads slow every step on a shared, loaded CPU.
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def load_result(prefix: Path, rank: int = 0) -> dict:
    return torch.load(f"{prefix}.rank{rank}", weights_only=True)


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("event") == "step":
            steps.append(record["step"])
    return steps


def test_sigkill_mid_epoch_then_resume_gives_bitwise_identical_parameters(tmp_path):
    # 96 items / batch 8 = 12 steps per epoch, 2 epochs; a checkpoint after every step.
    common = [sys.executable, str(SCRIPT), "--epochs", "2", "--loss-backend", loss_backend()]
    reference = subprocess.run(common + ["--out", str(tmp_path / "ref"), "--params",
                                         str(tmp_path / "ref")],
                               env=run_env(), capture_output=True, text=True, timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "killed"
    victim = subprocess.Popen(common + ["--out", str(out), "--slow", "0.03"], env=run_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and victim.poll() is None:
        if any(step >= 16 for step in logged_steps(out)):  # inside epoch 2 (steps 13..24)
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batches_done"] < 12  # killed mid-epoch

    resumed = subprocess.run(common + ["--out", str(out), "--params", str(tmp_path / "resumed")],
                             env=run_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_result(tmp_path / "ref")
    got = load_result(tmp_path / "resumed")
    assert expected["params"].keys() == got["params"].keys()
    for name, value in expected["params"].items():
        assert torch.equal(got["params"][name], value), name
    # the epoch records agree too (metrics accumulated before the kill were checkpointed)
    for before, after in zip(expected["epochs"], got["epochs"], strict=True):
        assert before["train_loss"] == after["train_loss"]
        assert before["train_accuracy"] == after["train_accuracy"]


@pytest.mark.skipif(not (torch.distributed.is_available()
                         and torch.distributed.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_gloo_processes_match_a_single_process_run_of_the_global_batch(tmp_path):
    # Two ranks with 8 items each per step against one process with the same 16 items; the
    # teacher cache is filled by both ranks in epoch 1 and read in epoch 2 (reshuffled, so
    # each rank reads rows the other one wrote).
    common = ["--mode", "ddp", "--epochs", "2", "--items", "64", "--loss-backend",
              loss_backend()]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", str(SCRIPT)]
    env = run_env()
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ddp = subprocess.run(torchrun + common + ["--batch", "8", "--out", str(tmp_path / "ddp"),
                                              "--params", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = subprocess.run([sys.executable, str(SCRIPT)] + common
                            + ["--batch", "16", "--out", str(tmp_path / "single"),
                               "--params", str(tmp_path / "single")],
                            env=run_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]

    rank0, rank1 = load_result(tmp_path / "ddp", 0), load_result(tmp_path / "ddp", 1)
    reference = load_result(tmp_path / "single")
    for name, value in rank0["params"].items():
        assert torch.equal(rank1["params"][name], value), name
        torch.testing.assert_close(value, reference["params"][name], rtol=1e-4, atol=1e-5)
    losses = [record["loss"] for record in rank0["steps"]]
    expected = [record["loss"] for record in reference["steps"]]
    assert len(losses) == len(expected) == 8
    assert losses == pytest.approx(expected, rel=1e-4)
    # rank 0 alone writes checkpoints and metrics
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["event"] == "epoch" for line in lines) == 2
    flags = np.fromfile(tmp_path / "ddp" / "teacher_cache" / "filled.u8", dtype=np.uint8)
    assert flags.shape == (64,) and flags.all()
