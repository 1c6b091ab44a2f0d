"""Living with many SLURM jobs, against the real local cluster (``scripts/slurm-cluster start``):

- 8 waiting launchers share one ``squeue`` per poll interval (the SLURM commands are counted by
  wrappers on PATH that log each call and run the real command), and their wait loop has no torch;
- an ``sbatch`` that fails twice with a transient error, then succeeds, is retried with backoff;
- a SLURM launcher inside a SLURM job (a nested executor) is refused with what to do;
- ``lps status`` on a results folder with a running, a pending, a requeued and a failed job, in one
  ``squeue`` and one ``sacct`` call.

Skipped (with the reason) without a cluster; ``LPS_REQUIRE_SLURM=1`` fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_fmnist, require_slurm_cluster, tiny_overrides

slurm = pytest.mark.slurm
POLL_S = 1.0


@pytest.fixture
def cluster():
    require_slurm_cluster()


def wrappers(tmp_path: Path, flaky_sbatch: int = 0) -> tuple[dict, Path]:
    """An environment whose squeue/scontrol/sacct/sbatch log each call to ``calls.log``; with
    ``flaky_sbatch`` N, the first N sbatch calls fail as a busy controller does."""
    bindir, log = tmp_path / "bin", tmp_path / "calls.log"
    bindir.mkdir()
    for cmd in ("squeue", "scontrol", "sacct", "sbatch"):
        real = shutil.which(cmd)
        flaky = ""
        if cmd == "sbatch" and flaky_sbatch:
            flaky = (f'n=$(cat "{tmp_path}/sbatch.count" 2>/dev/null || echo 0); n=$((n+1)); '
                     f'echo $n > "{tmp_path}/sbatch.count"\n'
                     f'if [ $n -le {flaky_sbatch} ]; then echo "sbatch: error: Batch job submission failed: '
                     f'Socket timed out on send/recv operation" >&2; exit 1; fi\n')
        (bindir / cmd).write_text(f'#!/bin/sh\necho "$(date +%s.%N) {cmd} $*" >> "{log}"\n{flaky}exec {real} "$@"\n')
        (bindir / cmd).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    return env, log


def calls(log: Path, t0: float = 0.0, t1: float = float("inf")) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        t, cmd = line.split()[:2]
        if t0 <= float(t) < t1:
            out[cmd] = out.get(cmd, 0) + 1
    return out


def launcher_code(kind: str, args: list[str], output: Path, jobs: Path, **settings) -> str:
    """The workflow's launcher (workflow/scripts/launch.py): the planned output is given, so nothing
    resolves the config (or imports torch) in this process."""
    s = {"executor": "slurm", "jobs_dir": str(jobs), "gpus": 1, "cpus": 1, "mem_gb": 2, "time_min": 5,
         "poll_s": POLL_S, "grace_s": 3, **settings}
    return ("import sys; from pathlib import Path; from lps.launch import LaunchSettings, launch; "
            f"sys.exit(launch({kind!r}, {args!r}, LaunchSettings(**{s!r}), output=Path({str(output)!r})))")


def planned_output(args: list[str]) -> Path:
    from lps.launch.job import expected_output

    return expected_output("train", args)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def scancel_under(folder: Path) -> None:
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    ids = [ln.split()[0].split("=")[1] for ln in out.splitlines() if f"StdOut={folder}" in ln]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@slurm
def test_eight_waiting_launchers_share_one_query_per_poll(cluster, tmp_path):
    env, log = wrappers(tmp_path)
    jobs = tmp_path / "jobs"
    procs = []
    try:
        for seed in range(8):
            args = ["method=lps", *tiny_overrides(tmp_path, **{"train.seed": seed})]
            code = launcher_code("train", args, planned_output(args), jobs, sbatch=["begin=now+3600"])
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                                          stdout=open(tmp_path / f"l{seed}.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while len(list(jobs.glob("*.job.json"))) < 8:
            assert time.monotonic() < deadline, "8 job records did not appear"
            assert all(p.poll() is None for p in procs), [(tmp_path / f"l{i}.log").read_text() for i in range(8)]
            time.sleep(0.5)
        time.sleep(2 * POLL_S)  # every launcher is in its wait loop now
        t0 = time.time()
        time.sleep(12 * POLL_S)
        t1 = time.time()
        window = calls(log, t0, t1)
        polls = (t1 - t0) / POLL_S
        print(f"[watch] {window} in {t1 - t0:.1f} s ({polls:.0f} poll intervals, 8 launchers); "
              f"launcher RSS {[round(rss_mb(p.pid)) for p in procs]} MB")
        assert window.get("squeue", 0) <= polls + 2, window  # one per interval, not 8
        assert window.get("squeue", 0) >= polls / 3, window  # and they do poll
        assert window.get("scontrol", 0) == 0 and window.get("sacct", 0) == 0, window
        assert not any(maps_torch(p.pid) for p in procs), "a waiting launcher has torch loaded"
        snap = json.loads((jobs / ".slurm" / "squeue.json").read_text())
        assert len([j for j, s in snap["jobs"].items() if s["state"] == "PENDING"]) >= 8
        # cancelled, every launcher reports it and exits
        scancel_under(jobs)
        for i, p in enumerate(procs):
            assert p.wait(60) == 1, (tmp_path / f"l{i}.log").read_text()
            assert "CANCELLED" in (tmp_path / f"l{i}.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        scancel_under(jobs)


@slurm
@needs_fmnist
def test_sbatch_failing_twice_then_succeeding_is_retried(cluster, tmp_path):
    env, log = wrappers(tmp_path, flaky_sbatch=2)
    args = ["method=lps", *tiny_overrides(tmp_path)]
    out = planned_output(args)
    code = launcher_code("train", args, out, tmp_path / "jobs", submit_backoff_s=0.5)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=180)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "retry 1/4 in 0 s" in text or "retry 1/4 in 1 s" in text, text
    assert "retry 2/4" in text and "retry 3/4" not in text, text
    assert "Socket timed out" in text
    assert calls(log)["sbatch"] == 3
    assert out.exists()


@slurm
def test_sbatch_permanent_error_is_not_retried(cluster, tmp_path):
    env, log = wrappers(tmp_path)
    args = ["method=lps", *tiny_overrides(tmp_path)]
    code = launcher_code("train", args, planned_output(args), tmp_path / "jobs", partition="no_such_partition",
                         submit_backoff_s=0.1)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "sbatch failed" in r.stderr and "partition" in r.stderr.lower() and "retry" not in r.stdout
    assert calls(log)["sbatch"] == 1


@slurm
def test_launcher_inside_a_slurm_job_is_refused(cluster, tmp_path):
    """What Snakemake's SLURM executor would do: run the rule (the launcher) inside a SLURM job."""
    args = ["method=lps", *tiny_overrides(tmp_path)]
    code = launcher_code("train", args, tmp_path / "runs" / "x" / "result.parquet", tmp_path / "jobs")
    script = tmp_path / "rule.sh"
    script.write_text(f"#!/bin/sh\ncd {tmp_path}\n{sys.executable} -c \"{code.replace(chr(34), chr(92) + chr(34))}\"\n"
                      f"echo \"rc=$?\" > {tmp_path}/rc\n")
    r = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "job.out"), "--cpus-per-task", "1", str(script)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 90
    while not (tmp_path / "rc").exists():
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.5)
    time.sleep(0.5)
    out = (tmp_path / "job.out").read_text()
    assert (tmp_path / "rc").read_text().strip() == "rc=1", out
    assert f"inside SLURM job {r.stdout.strip()}" in out and "--executor slurm" in out, out
    assert "LPS_ALLOW_NESTED_SLURM=1" in out
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").glob("*.job.json"))  # nothing submitted


def sbatch(tmp_path: Path, *args: str) -> str:
    r = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def squeue_state(job_id: str) -> tuple[str, int]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-O", "State:|,RestartCnt:|"],
                         capture_output=True, text=True).stdout.strip()
    state, restarts = (out.split("|") + ["", ""])[:2]
    return state, int(restarts or 0)


def wait_state(job_id: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while squeue_state(job_id)[0] != want:
        assert time.monotonic() < deadline, f"job {job_id} not {want}: {squeue_state(job_id)}"
        time.sleep(0.3)


@slurm
def test_lps_status_running_pending_requeued_failed(cluster, tmp_path):
    res = tmp_path / "results"
    running = sbatch(tmp_path, "--wrap", "sleep 120")
    pending = sbatch(tmp_path, "--begin", "now+3600", "--wrap", "sleep 120")
    requeued = sbatch(tmp_path, "--wrap", "sleep 120")
    failed = sbatch(tmp_path, "--wrap", "exit 3")
    try:
        wait_state(running, "RUNNING")
        wait_state(requeued, "RUNNING")
        subprocess.run(["scontrol", "requeuehold", requeued], check=True, capture_output=True)
        wait_state(failed, "FAILED")
        ids = {"r-run": running, "r-pend": pending, "r-req": requeued, "r-fail": failed, "r-done": None}
        runs = {rid: {"method": "lps", "dataset": "cifar10", "seed": 0, "pretrain": None, "epochs": 10,
                      "studies": ["table1"]} for rid in ids}
        res.mkdir()
        (res / "plan.json").write_text(json.dumps({"experiment_set": "paper.yaml", "runs": runs, "pretrain": {},
                                                   "studies": {"table1": "table"}}))
        (res / "jobs").mkdir()
        for rid, job in ids.items():
            d = res / "runs" / rid
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "epoch_time_s": 60.0}) + "\n")
            if job:
                (res / "jobs" / f"{rid}.job.json").write_text(json.dumps(
                    {"run": rid, "executor": "slurm", "job_id": job, "folder": str(res / "jobs" / rid)}))
        (res / "runs" / "r-done" / "result.parquet").write_bytes(b"x")
        env, log = wrappers(tmp_path)
        r = subprocess.run([sys.executable, "-m", "lps.cli", "status", str(res)], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        print(r.stdout)
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith("table1")).split()
        # runs done running pending requeued submitted failed started waiting
        assert row[1:10] == ["5", "1", "1", "1", "1", "0", "1", "0", "0"], r.stdout
        assert f"r-fail  job {failed}  FAILED" in r.stdout and "exit 3:0" in r.stdout, r.stdout
        assert str(res / "jobs" / "r-fail" / f"{failed}_0_log.err") in r.stdout
        assert f"r-req  requeued" in r.stdout and "left 9 min" in r.stdout  # 9 epochs x 60 s
        assert calls(log) in ({"squeue": 1}, {"squeue": 1, "sacct": 1}), calls(log)  # one call each way
        # the same folder without SLURM (a laptop): recorded jobs are "submitted", the rest unchanged
        r = subprocess.run([sys.executable, "-m", "lps.cli", "status", str(res), "--no-slurm"], capture_output=True,
                           text=True, timeout=60)
        row = next(ln for ln in r.stdout.splitlines() if ln.startswith("table1")).split()
        assert row[1:10] == ["5", "1", "0", "0", "0", "4", "0", "0", "0"], r.stdout
    finally:
        subprocess.run(["scancel", running, pending, requeued], capture_output=True)
