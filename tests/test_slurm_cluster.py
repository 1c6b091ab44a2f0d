"""Smoke tests for the local SLURM cluster started by ``scripts/slurm-cluster start``.

Run: ``scripts/slurm-cluster start && python -m pytest -m slurm tests/test_slurm_cluster.py``.
Every test skips (with the reason) when ``sinfo`` is missing or the cluster is not up;
every wait is bounded, nothing here can hang.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_slurm_cluster

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 60  # a tiny job finishes in ~1 s on an idle local node
SACCT_TIMEOUT_S = 20  # job end records reach slurmdbd within ~1 s
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}


def _run(*cmd: str, timeout: float = 15) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def slurm() -> None:
    require_slurm_cluster()


@pytest.fixture(scope="module")
def accounting(slurm) -> bool:
    cfg = _run("scontrol", "show", "config").stdout
    return any(line.split("=", 1)[-1].strip() == "accounting_storage/slurmdbd"
               for line in cfg.splitlines() if line.startswith("AccountingStorageType"))


def _sbatch(tmp_path: Path, script: str, *args: str) -> str:
    res = _run("sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={tmp_path}/%j.out",
               "--time=5", *args, "--wrap", script)
    assert res.returncode == 0, f"sbatch failed: {res.stderr.strip()}"
    return res.stdout.strip().split(";")[0]


def _wait_gone(job_id: str, timeout: float = JOB_TIMEOUT_S) -> None:
    """Wait until the job has left the queue (finished); scancel it and fail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = _run("squeue", "-h", "-j", job_id, "-o", "%T")
        # squeue forgets finished jobs after MinJobAge; both mean "not in the queue"
        if q.returncode != 0 or not q.stdout.strip() or q.stdout.split()[0] in TERMINAL:
            return
        time.sleep(0.25)
    state = _run("squeue", "-h", "-j", job_id, "-o", "%T %r").stdout.strip()
    _run("scancel", job_id)
    pytest.fail(f"job {job_id} still queued after {timeout:.0f} s (squeue: {state!r}); cancelled it")


def _sacct_state(job_id: str, timeout: float = SACCT_TIMEOUT_S) -> str:
    """The job's final state as sacct reports it (waits until it is a terminal one)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        lines = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State").stdout.splitlines()
        state = lines[-1].split()[0] if lines and lines[-1].strip() else ""  # "CANCELLED by 0"
        if state in TERMINAL:
            return state
        time.sleep(0.25)
    pytest.fail(f"sacct has no final state for job {job_id} after {timeout:.0f} s (last: {state!r})")


def test_gpu_job_completes(slurm, tmp_path: Path) -> None:
    job = _sbatch(tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES"', "--gpus-per-node=1")
    _wait_gone(job)
    out = (tmp_path / f"{job}.out").read_text()
    assert "gpus=" in out and out.strip() != "gpus=", f"no GPU assigned, output: {out!r}"


def test_sacct_completed_and_failed(accounting, tmp_path: Path) -> None:
    if not accounting:
        pytest.skip("SLURM accounting is off (AccountingStorageType=accounting_storage/none)")
    ok = _sbatch(tmp_path, "true", "--gpus-per-node=1")
    bad = _sbatch(tmp_path, "exit 3")
    _wait_gone(ok)
    _wait_gone(bad)
    assert _sacct_state(ok) == "COMPLETED"
    assert _sacct_state(bad) == "FAILED"
    exit_code = _run("sacct", "-n", "-X", "-P", "-j", bad, "-o", "ExitCode").stdout.strip()
    assert exit_code == "3:0"
