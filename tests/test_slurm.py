"""The SLURM path of ``python -m lps.launch`` against a real local cluster (``scripts/slurm-cluster``).

Run: ``scripts/slurm-cluster start && nice -n 10 python -m pytest -m slurm tests/test_slurm.py -q``.

Every ``slurm`` test skips (with the reason) when the SLURM tools are missing or the cluster is down;
set ``LPS_REQUIRE_SLURM=1`` (CI) to fail instead. Two more run only on request: a real 1-minute time
limit (``LPS_TEST_SLURM_TIMELIMIT=1``, ~2.5 min) and partition preemption (a cluster started with
``LPS_SLURM_PREEMPT=1``, ~1.2 min). Every wait is bounded; jobs a test leaves behind are
cancelled at its end. Jobs ask for ``--gpus 1`` (the cluster's fake gres GPUs). Fault tests print
``[timing]`` lines (time from the fault to the launcher's exit); ``LPS_SLURM_TIMINGS=FILE`` also
appends them to FILE as JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lps.launch.slurm_state import SlurmState, sacct_state, slurm_state
from conftest import needs_fmnist, require_slurm_cluster, tiny_overrides

# the SLURM tests; the launcher's pure helpers at the top of the file need no cluster
slurm = pytest.mark.slurm

POLL_S, GRACE_S = 1, 3
# a failure must be reported within poll + grace + command latency; the margin covers a loaded 2-core machine
REPORT_BOUND_S = POLL_S + GRACE_S + 20
LAUNCH_TIMEOUT_S = 150  # any launcher in these tests (a requeue waits ~10-15 s for the node)


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cluster() -> None:
    require_slurm_cluster()


# --------------------------------------------------------------------------------------------
# helpers


def accounting_on() -> bool:
    cfg = _run("scontrol", "show", "config").stdout
    return bool(re.search(r"^AccountingStorageType\s*=\s*accounting_storage/slurmdbd", cfg, re.M))


def _field(text: str, key: str) -> str:
    m = re.search(rf"(?:^|\s){key}=(\S*)", text)
    return m.group(1) if m else ""


def slurm_jobs_under(folder: Path) -> list[str]:
    """Ids of the jobs SLURM knows (live or ended < MinJobAge ago) whose log goes under ``folder``:
    every sbatch of a test."""
    out = _run("scontrol", "show", "job", "-o").stdout
    return sorted({_field(ln, "JobId") for ln in out.splitlines()
                   if _field(ln, "StdOut").startswith(str(folder) + "/")}, key=int)


def state(job_id: str) -> SlurmState:
    """The job's state; an empty one while SLURM does not answer."""
    return slurm_state(job_id) or SlurmState("")


def wait_for(cond, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_pid(job_id: str) -> int | None:
    """The job's Python process (submitit's ``_submit``) on this node."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            if b"submitit.core._submit" not in cmd:
                continue
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and b"python" in cmd.split(b"\0")[0]:
            return int(p.name)
    return None


def job_started(tmp_path: Path, run: str, job_id: str, timeout: float = 90) -> None:
    """Wait until the job runs lps code: submitit has installed its signal handlers by then (a USR2
    before that would kill the job, as it would any process without a handler)."""
    log = tmp_path / "jobs" / run / f"{job_id}_0_log.out"
    wait_for(lambda: log.exists() and f"SLURM job {job_id} on" in log.read_text(), timeout,
             f"job {job_id} to start lps ({log})")


def epochs_done(run_dir: Path) -> int:
    try:
        return sum(1 for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip())
    except OSError:
        return 0


def report_timing(fault: str, seconds: float, **info) -> None:
    row = {"fault": fault, "seconds_to_report": round(seconds, 1), **info}
    print(f"[timing] {json.dumps(row)}")
    if os.environ.get("LPS_SLURM_TIMINGS"):
        with open(os.environ["LPS_SLURM_TIMINGS"], "a") as fh:
            fh.write(json.dumps(row) + "\n")


class Launcher:
    """``python -m lps.launch train --executor slurm ...`` in the background, output to a log file."""

    def __init__(self, tmp_path: Path, lps_args: list[str], *opts: str, name: str = "launcher",
                 time_min: int = 5):
        self.log = tmp_path / f"{name}.log"
        self.jobs = tmp_path / "jobs"
        cmd = [sys.executable, "-m", "lps.launch", "train", "--executor", "slurm", "--gpus", "1", "--cpus", "1",
               "--mem-gb", "2", "--time-min", str(time_min), "--poll-s", str(POLL_S), "--grace-s", str(GRACE_S),
               "--jobs-dir", str(self.jobs), *opts, "--", *lps_args]
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path,
                                         start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"launcher still running after {timeout:.0f} s:\n{self.output}") from None

    def record(self, run: str, timeout: float = 60) -> dict:
        f = self.jobs / f"{run}.job.json"

        def rec():
            if self.proc.poll() is not None and not f.exists():
                raise AssertionError(f"launcher exited ({self.proc.returncode}) without a job record:\n{self.output}")
            return json.loads(f.read_text()) if f.exists() else None

        return wait_for(rec, timeout, f"job record {f}")


@pytest.fixture
def launchers(cluster, tmp_path):
    """Start launchers; at the end kill those still alive and cancel this test's jobs."""
    started: list[Launcher] = []

    def start(*args, **kw) -> Launcher:
        launcher = Launcher(tmp_path, *args, **kw)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.proc.wait(10)
    live = [j for j in slurm_jobs_under(tmp_path) if (st := slurm_state(j)) is not None and st.active]
    if live:
        _run("scancel", *live)


def run_of(tmp_path: Path, lps_args: list[str]) -> tuple[str, Path]:
    from lps.launch.job import expected_output

    out = expected_output("train", lps_args)
    return out.parent.name, out


def tiny(tmp_path: Path, **extra) -> list[str]:
    return ["method=lps", *tiny_overrides(tmp_path, **extra)]


def medium(tmp_path: Path, epochs: int = 4, **extra) -> list[str]:
    """A run of a few seconds per epoch, long enough to interrupt between epochs."""
    return tiny(tmp_path, **{"data.max_train_per_class": 200, "optim.epochs": epochs, "train.progress": "log", **extra})


def assert_failure_message(out: str, run: str, job_id: str, folder: Path) -> None:
    assert f"run {run}: SLURM job {job_id}" in out, out
    assert str(folder / f"{job_id}_0_log.err") in out, out


def metrics_of(path: Path) -> dict:
    import pandas as pd

    from lps.results import METRICS

    row = pd.read_parquet(path).iloc[0]
    return {k: float(row[k]) for k in (*METRICS, *[f"test_{m}" for m in METRICS])}


# --------------------------------------------------------------------------------------------
# 0. the launcher's command line and messages (no cluster needed)


def test_cli_options_after_kind_and_lps_args_after_dashes():
    from lps.launch.cli import parse_args

    kind, lps_args, a = parse_args(["train", "--executor", "slurm", "--gpus", "2", "--mem-gb", "0.5", "--sbatch",
                                    "qos=high", "--", "-c", "demo", "optim.epochs=3"])
    assert (kind, a.executor, a.gpus, a.mem_gb, a.sbatch) == ("train", "slurm", 2, 0.5, ["qos=high"])
    assert lps_args == ["-c", "demo", "optim.epochs=3"]
    kind, lps_args, b = parse_args(["--executor", "none", "pretrain", "method=lps"])
    assert (kind, b.executor, lps_args) == ("pretrain", "none", ["method=lps"])
    for bad in (["--time-min", "0"], ["--sbatch", "qos"], ["--mem-gb", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["train", *bad])


def test_launch_defaults_exist_once():
    """The CLI's defaults are LaunchSettings'; the workflow fills its launch keys from it (the schema
    carries no default for them) and the profiles restate none of them."""
    import yaml

    from lps.launch.cli import parse_args
    from lps.launch.settings import WORKFLOW_KEYS, LaunchSettings

    assert parse_args(["train"])[2] == LaunchSettings()
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for key in WORKFLOW_KEYS:
        assert "default" not in schema["properties"][key], key
    defaults = LaunchSettings.workflow_defaults()
    assert (defaults["launch_time_min"], defaults["slurm_max_timeouts"], defaults["slurm_mem_gb"]) == (720, 20, 48)
    for profile in ("local", "slurm"):
        settings = yaml.safe_load((REPO / "profiles" / profile / "settings.yaml").read_text()) or {}
        restated = {k for k in WORKFLOW_KEYS if k in settings and settings[k] == defaults[k]}
        assert not restated, (profile, restated)


def test_signal_delay_fits_the_time_limit():
    from lps.launch.slurm import signal_delay

    # asked for 10 % of the limit before it, between 15 and 90 s (SLURM may send it up to 30 s earlier)
    assert (signal_delay(1), signal_delay(5), signal_delay(10), signal_delay(600)) == (15, 30, 60, 90)
    assert all(signal_delay(t) + 30 < t * 60 for t in (1, 2, 5, 30, 600))


def test_failure_messages_name_run_job_and_log(tmp_path):
    from lps.launch.diagnosis import describe_failure
    from lps.launch.records import Paths
    from lps.launch.settings import LaunchSettings

    a = LaunchSettings(executor="slurm", mem_gb=4)
    paths = Paths(tmp_path, "42")
    paths.stderr.write_text("slurmstepd: error: StepId=42.0 exceeded memory limit (5 > 4), being killed\n")
    text = describe_failure("r1", "42", SlurmState("FAILED", exit_code="0:9"), None, a, paths, {})
    assert "run r1: SLURM job 42 ran out of memory" in text and str(paths.stderr) in text
    paths.stderr.write_text("")
    assert "was cancelled" in describe_failure("r1", "42", SlurmState("CANCELLED"), None, a, paths, {})
    assert "no longer known to SLURM" in describe_failure("r1", "42", SlurmState(""), None, a, paths, {})
    assert "killed by signal 9" in describe_failure("r1", "42", SlurmState("FAILED", exit_code="0:9"), None, a,
                                                    paths, {})
    tb = "Traceback (most recent call last):\n  File x\n    ^^^^\nValueError: boom\n"
    text = describe_failure("r1", "42", None, ("error", tb), a, paths, {})
    assert "failed with an exception" in text and "ValueError: boom" in text and "^^^^" not in text


def test_job_ending_after_an_unrequeued_usr2_is_reported_as_a_time_limit(tmp_path, monkeypatch):
    """A job whose USR2 handler declined to requeue but whose training then returned raises its own
    UncompletedJobError; the launcher names that as the exhausted time limit, like submitit's."""
    import traceback

    import lps.launch.job as job
    import lps.trainer
    from lps.launch.diagnosis import describe_failure
    from lps.launch.records import Paths
    from lps.launch.settings import LaunchSettings

    monkeypatch.setattr(job, "_SIGNALLED", [0.0])
    monkeypatch.setattr(lps.trainer, "train", lambda cfg: {"run_id": "r1"})
    with pytest.raises(Exception) as e:
        job.Job("train", ["method=lps"])()
    tb = "".join(traceback.format_exception(e.value))
    a = LaunchSettings(executor="slurm", max_timeouts=0, time_min=5)
    text = describe_failure("r1", "42", None, ("error", tb), a, Paths(tmp_path, "42"), {})
    assert "reached its time limit (5 min) more often than --max-timeouts=0 allows" in text, text


# --------------------------------------------------------------------------------------------
# 1. a job through sbatch completes; 6. two launchers started at once for it share that one job


@slurm
@needs_fmnist
def test_job_completes_and_two_launchers_share_it(launchers, tmp_path):
    args = tiny(tmp_path)
    run, out = run_of(tmp_path, args)
    t0 = time.monotonic()
    a, b = launchers(args, name="a"), launchers(args, name="b")
    assert a.wait() == 0, a.output
    assert b.wait() == 0, b.output
    jobs = slurm_jobs_under(tmp_path)
    assert len(jobs) == 1, (jobs, a.output, b.output)
    job_id = jobs[0]
    both = a.output + b.output
    assert both.count(f"submitted SLURM job {job_id}") == 1, both
    assert f"reattached to job {job_id}" in both or "already complete" in both, both
    report_timing("none (completes)", time.monotonic() - t0, job=job_id)
    # outputs intact: one finished run, its files readable, no temporary files left
    assert metrics_of(out)["acc_all"] >= 0
    assert epochs_done(out.parent) == 2
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    # the job went through the fake-GPU gres path
    info = _run("scontrol", "show", "job", "-o", job_id).stdout
    assert "gres/gpu=1" in info, info
    assert "CUDA_VISIBLE_DEVICES=0" in (tmp_path / "jobs" / run / f"{job_id}_0_log.out").read_text()
    if accounting_on():  # the launcher's fallback once the controller has forgotten the job
        wait_for(lambda: (sacct_state(job_id) or SlurmState("")).state == "COMPLETED", 30,
                 "accounting (slurmdbd lags behind the controller) to record the job COMPLETED")
    # one more launcher finds the output and submits nothing
    again = launchers(args, name="again")
    assert again.wait() == 0, again.output
    assert "already complete" in again.output
    assert slurm_jobs_under(tmp_path) == [job_id]


# --------------------------------------------------------------------------------------------
# 2. preemption: submitit's signal (SIGTERM + USR2) and SLURM's own requeue; same final metrics


@slurm
@needs_fmnist
def test_preemption_resumes_with_same_metrics(launchers, tmp_path):
    # 10 short epochs: the second preemption must land before the run ends, also on a fast, idle machine
    args = medium(tmp_path, epochs=10)
    run, out = run_of(tmp_path, args)
    run_dir = out.parent
    # the uninterrupted reference: the same run in-process (executor none), concurrently
    ref_args = [a if not a.startswith("output_dir=") else f"output_dir={tmp_path / 'ref'}" for a in args]
    ref = subprocess.Popen([sys.executable, "-m", "lps.launch", "train", "--executor", "none",
                            "--jobs-dir", str(tmp_path / "ref-jobs"), "--", *ref_args],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # time limit 30 min: submitit counts USR2 as preemption (not timeout) before 0.8 * limit
    launcher = launchers(args, time_min=30)
    job_id = launcher.record(run)["job_id"]
    # preemption 1: what submitit's job._interrupt() sends (SIGTERM, then USR2) after epoch 1
    wait_for(lambda: epochs_done(run_dir) >= 1, 90, "epoch 1")
    assert not out.exists()
    _run("scancel", job_id, "--signal", "SIGTERM")
    _run("scancel", job_id, "--signal", "USR2")
    # preemption 2: SLURM's requeue (what PreemptMode=REQUEUE does) once the requeued job made progress
    wait_for(lambda: (state(job_id).restarts >= 1 and epochs_done(run_dir) >= 2), 90,
             "the requeued job to finish epoch 2")
    assert not out.exists(), "the run finished before the second preemption; make the epochs longer"
    assert _run("scontrol", "requeue", job_id).returncode == 0
    assert launcher.wait() == 0, launcher.output
    ref_out, _ = ref.communicate(timeout=LAUNCH_TIMEOUT_S)
    assert ref.returncode == 0, ref_out

    log = (tmp_path / "jobs" / run / f"{job_id}_0_log.out").read_text()
    err = (tmp_path / "jobs" / run / f"{job_id}_0_log.err").read_text()
    resumed = [int(e) for e in re.findall(r"resuming from epoch (\d+)", log)]
    assert len(resumed) == 2 and resumed[0] >= 1 and resumed[1] > resumed[0], log
    assert "this job is preempted" in err and f"Requeued job {job_id}" in log, err
    assert state(job_id).restarts == 2
    assert slurm_jobs_under(tmp_path) == [job_id]  # one sbatch; the requeues keep the job id
    assert metrics_of(out) == metrics_of(tmp_path / "ref" / run / "result.parquet")


def has_partition(name: str) -> bool:
    return name in _run("sinfo", "-h", "-o", "%R").stdout.split()


@slurm
@needs_fmnist
def test_partition_preemption_requeues_and_resumes(launchers, tmp_path):
    """Real preemption: a job in the high-priority partition "urgent" needs both GPUs, so SLURM preempts
    ours (PreemptMode=REQUEUE: SIGTERM, kill, requeue); it comes back and resumes from its checkpoint."""
    if not has_partition("urgent"):
        pytest.skip("no preempting partition 'urgent': start the cluster with LPS_SLURM_PREEMPT=1")
    args = medium(tmp_path)
    run, out = run_of(tmp_path, args)
    launcher = launchers(args, "--partition", "debug", time_min=30)
    job_id = launcher.record(run)["job_id"]
    wait_for(lambda: epochs_done(out.parent) >= 1, 90, "epoch 1")
    urgent = _run("sbatch", "--parsable", "-p", "urgent", "--gpus-per-node=2", "-c", "1", "-t", "2",
                  f"--output={tmp_path}/urgent.out", "--wrap", "sleep 2")
    assert urgent.returncode == 0, urgent.stderr
    assert launcher.wait() == 0, launcher.output
    log = (tmp_path / "jobs" / run / f"{job_id}_0_log.out").read_text()
    assert re.search(r"resuming from epoch [1-9]", log), log
    assert state(job_id).restarts >= 1
    assert slurm_jobs_under(tmp_path / "jobs") == [job_id]


# --------------------------------------------------------------------------------------------
# 3. time limit: USR2 as SLURM sends it before the limit (= submitit's job._interrupt(timeout=True))


@slurm
@needs_fmnist
def test_timeout_checkpoints_requeues_and_completes(launchers, tmp_path):
    args = medium(tmp_path, epochs=3)
    run, out = run_of(tmp_path, args)
    # time limit 5 min: submitit's rule (walltime >= min(0.8 T, T - 10 min)) counts any USR2 as timeout
    launcher = launchers(args, "--max-timeouts", "1", time_min=5)
    job_id = launcher.record(run)["job_id"]
    wait_for(lambda: epochs_done(out.parent) >= 1, 90, "epoch 1")
    assert not out.exists()
    _run("scancel", job_id, "--signal", "USR2")
    assert launcher.wait() == 0, launcher.output
    err = (tmp_path / "jobs" / run / f"{job_id}_0_log.err").read_text()
    log = (tmp_path / "jobs" / run / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in err and f"Requeued job {job_id} (0 remaining timeouts)" in log, err + log
    assert "resuming from epoch" in log, log
    assert slurm_jobs_under(tmp_path) == [job_id]


@slurm
@needs_fmnist
def test_too_many_timeouts_fail_clearly(launchers, tmp_path):
    args = medium(tmp_path, epochs=3)
    run, out = run_of(tmp_path, args)
    launcher = launchers(args, "--max-timeouts", "0", time_min=5)
    job_id = launcher.record(run)["job_id"]
    job_started(tmp_path, run, job_id)
    t0 = time.monotonic()
    _run("scancel", job_id, "--signal", "USR2")
    assert launcher.wait() == 1, launcher.output
    dt = time.monotonic() - t0
    report_timing("time limit, --max-timeouts exhausted", dt, job=job_id)
    assert_failure_message(launcher.output, run, job_id, tmp_path / "jobs" / run)
    assert "reached its time limit (5 min) more often than --max-timeouts=0 allows" in launcher.output
    assert dt < REPORT_BOUND_S


@pytest.mark.skipif(os.environ.get("LPS_TEST_SLURM_TIMELIMIT") != "1",
                    reason="a real 1-minute time limit takes ~2 min: set LPS_TEST_SLURM_TIMELIMIT=1")
@slurm
@needs_fmnist
def test_real_time_limit_requeues_and_completes(launchers, tmp_path):
    """SLURM's own USR2 before a real 1-minute limit (``--signal=USR2@15``; slurmctld checks limits every
    30 s, so it comes 15-45 s into the job). Once the job has been requeued, the test raises its limit so
    that the next start can finish the run."""
    args = medium(tmp_path, epochs=30, **{"data.max_train_per_class": 100})
    run, out = run_of(tmp_path, args)
    launcher = launchers(args, "--max-timeouts", "3", time_min=1)
    job_id = launcher.record(run)["job_id"]
    wait_for(lambda: state(job_id).restarts >= 1 or launcher.proc.poll() is not None, 150, "the first requeue")
    assert not out.exists(), "the run finished within the first minute; make it longer"
    assert _run("scontrol", "update", f"JobId={job_id}", "TimeLimit=10").returncode == 0
    assert launcher.wait(300) == 0, launcher.output
    err = (tmp_path / "jobs" / run / f"{job_id}_0_log.err").read_text()
    log = (tmp_path / "jobs" / run / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in err and f"Requeued job {job_id} (2 remaining timeouts)" in log, log
    before, _, after = log.partition(f"Requeued job {job_id}")
    if "epoch 1/" in before:  # a checkpoint existed when the limit came: the next start resumed from it
        assert "resuming from epoch" in after, log


# --------------------------------------------------------------------------------------------
# 4. scancel, SIGKILL, out of memory, exception: the launcher fails within a bounded time


@slurm
@needs_fmnist
@pytest.mark.parametrize("fault", ["scancel", "sigkill", "oom", "exception"])
def test_fault_fails_fast_with_job_and_log(launchers, tmp_path, fault):
    if fault == "exception":
        # the run starts from `pretrain.checkpoint`, which does not exist yet (a path, not part of the
        # run's identity, so the same run can be started again once the file is there)
        args = tiny(tmp_path, **{"model.init": "", "pretrain.checkpoint": str(tmp_path / "missing-backbone.pt")})
    else:
        args = medium(tmp_path, epochs=3)
    run, out = run_of(tmp_path, args)
    opts = ["--mem-gb", "0.15"] if fault == "oom" else []  # importing torch alone needs more
    launcher = launchers(args, *opts)
    job_id = launcher.record(run)["job_id"]
    folder = tmp_path / "jobs" / run
    if fault in ("scancel", "sigkill"):
        pid = wait_for(lambda: job_pid(job_id), 90, "the job's process")
        t0 = time.time()
        if fault == "scancel":
            _run("scancel", job_id)
        else:
            os.kill(pid, signal.SIGKILL)
    rc = launcher.wait()
    t_end = time.time()
    if fault == "exception":  # the fault happens inside the job: when it wrote its error
        t0 = (folder / f"{job_id}_0_result.pkl").stat().st_mtime
    elif fault == "oom":  # when slurmstepd killed it (its last words in the log)
        t0 = (folder / f"{job_id}_0_log.err").stat().st_mtime
    dt = t_end - t0
    text = launcher.output
    st = state(job_id)
    report_timing(fault, dt, job=job_id, slurm_state=st.state, exit_code=st.exit_code)
    assert rc == 1, text
    assert_failure_message(text, run, job_id, folder)
    expected = {"scancel": "was cancelled", "sigkill": "killed by signal 9", "oom": "ran out of memory",
                "exception": "failed with an exception"}[fault]
    assert expected in text, text
    if fault == "exception":
        assert "missing-backbone.pt does not exist" in text, text  # the traceback's tail
    assert dt < REPORT_BOUND_S + (15 if fault != "scancel" else 0), text
    assert not out.exists()

    if fault == "exception":
        # the recorded job failed: a rerun (config fixed) submits a new job, which completes
        import torch

        from lps.models import CifarResNet18

        torch.save(CifarResNet18(1, 4).state_dict(), tmp_path / "missing-backbone.pt")  # tiny(): width 4
        rerun = launchers(args, name="rerun")
        assert rerun.wait() == 0, rerun.output
        assert f"recorded job {job_id} ended (with an exception)" in rerun.output
        assert out.exists()
        assert len(slurm_jobs_under(tmp_path)) == 2


@slurm
def test_vanished_job_is_reported_not_awaited(cluster, tmp_path):
    """A job SLURM no longer knows (purged from the controller, no accounting record) and that wrote no
    result: waiting on it ends after --grace-s."""
    from lps.errors import LPSError
    from lps.launch.records import Paths
    from lps.launch.settings import LaunchSettings
    from lps.launch.slurm import wait_slurm

    a = LaunchSettings(executor="slurm", poll_s=1, grace_s=2)
    t0 = time.monotonic()
    with pytest.raises(LPSError, match="SLURM job 99999999 is no longer known to SLURM") as e:
        wait_slurm(a, "r1", "99999999", Paths(tmp_path, "99999999"), tmp_path / "result.parquet", {})
    assert str(tmp_path / "99999999_0_log.err") in str(e.value)
    assert time.monotonic() - t0 < 15


# --------------------------------------------------------------------------------------------
# 5. the launcher killed while its job runs, started again: reattaches, no second sbatch


@slurm
@needs_fmnist
@pytest.mark.parametrize("record", ["kept", "lost"])
def test_killed_launcher_reattaches(launchers, tmp_path, record):
    args = medium(tmp_path, epochs=3)
    run, out = run_of(tmp_path, args)
    first = launchers(args, name="first")
    job_id = first.record(run)["job_id"]
    wait_for(lambda: state(job_id).state == "RUNNING", 90, "the job to run")
    first.proc.send_signal(signal.SIGKILL)  # as hard as it gets: no cleanup in the launcher
    first.proc.wait(10)
    if record == "lost":  # killed between sbatch and writing the record
        (tmp_path / "jobs" / f"{run}.job.json").unlink()
    assert state(job_id).active
    second = launchers(args, name="second")
    assert second.wait() == 0, second.output
    word = "reattached to job" if record == "kept" else "adopted running job"
    assert f"{word} {job_id}" in second.output, second.output
    assert slurm_jobs_under(tmp_path) == [job_id]
    assert len(list((tmp_path / "jobs" / run).glob("*_submission.sh"))) == 1
    assert out.exists()


# --------------------------------------------------------------------------------------------
# 7. the workflow: snakemake --profile profiles/slurm, with a CI override for partition and size only

REPO = Path(__file__).resolve().parents[1]
CI_SET = """\
# CI experiment set: two tiny Fashion-MNIST runs (LPS, FixMatch), one table, no pretraining
seeds: [0]
defaults:
  data.max_train_per_class: 100
  data.max_test_per_class: 10
  model.width: 4
  optim.epochs: 3
  optim.batch_size: 64
  model.init: scratch
datasets:
  fashion_mnist: {label: Fashion-MNIST}
methods:
  lps: {label: LPS}
  fixmatch: {label: FixMatch}
tables:
  table1:
    title: "CI: SLURM end to end"
    grid: {method: [lps, fixmatch]}
"""


def snakemake(tmp_path: Path, workdir: str, log: str) -> subprocess.Popen:
    """``snakemake --profile profiles/slurm`` with the CI override (partition, experiment size, and
    job size for the 2-core test node) as ``--config`` (a ``--configfile`` would replace the profile's)."""
    (tmp_path / "ci-set.yaml").write_text(CI_SET)
    (tmp_path / workdir).mkdir(exist_ok=True)
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles" / "slurm"),
           "--directory", str(tmp_path / workdir), "--config", f"experiment_set={tmp_path / 'ci-set.yaml'}",
           f"results_dir={tmp_path / 'results'}", "slurm_partition=debug", "slurm_cpus=1", "slurm_mem_gb=2",
           "launch_time_min=5"]
    with open(tmp_path / log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(f"snakemake still running after {timeout:.0f} s:\n{log.read_text()[-4000:]}") from None


def kill_process_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants (whatever session or group they moved to)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    tree, todo = [], [pid]
    while todo:
        q = todo.pop()
        tree.append(q)
        todo += children.get(q, [])
    for q in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(q, signal.SIGKILL)
    return tree


@pytest.fixture
def workflow_cluster(cluster, tmp_path):
    if shutil.which("snakemake") is None or not (REPO / "profiles" / "slurm" / "config.yaml").exists():
        pytest.skip("snakemake or profiles/slurm missing")
    yield
    live = [j for j in slurm_jobs_under(tmp_path) if (st := slurm_state(j)) is not None and st.active]
    if live:
        _run("scancel", *live)


@slurm
@needs_fmnist
def test_workflow_on_slurm(workflow_cluster, tmp_path):
    """End to end through sbatch. Snakemake is killed (SIGKILL, with every process it started) while
    its two training jobs run, unlocked and started again: it reattaches to the jobs (no second
    sbatch) and completes. The jobs are suspended (``scontrol suspend``) between the kill and the
    reattach so that they cannot finish before snakemake is back; a job that finished meanwhile
    would be found complete instead (see lps.launch)."""
    results = tmp_path / "results"
    first = snakemake(tmp_path, "wf", "first.log")
    records = lambda: [json.loads(p.read_text()) for p in (results / "jobs").glob("*.job.json")]  # noqa: E731
    wait_for(lambda: len(records()) == 2 and all(state(r["job_id"]).state == "RUNNING" for r in records())
             or first.poll() is not None, 120, "both training jobs to run")
    assert first.poll() is None, (tmp_path / "first.log").read_text()
    jobs = sorted(r["job_id"] for r in records())
    # killed as hard as it gets (SIGKILL to snakemake and every process it started: no cleanup)
    kill_process_tree(first.pid)
    first.wait(10)
    for j in jobs:
        assert state(j).state == "RUNNING", "killing snakemake must not cancel its SLURM jobs"
        assert _run("scontrol", "suspend", j).returncode == 0
    # after a SIGKILL snakemake's own directory lock is stale: `--unlock` is the documented way out
    unlock = subprocess.run(["snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path / "wf"),
                             "--unlock", "--config", f"experiment_set={tmp_path / 'ci-set.yaml'}",
                             f"results_dir={results}"], capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr

    second = snakemake(tmp_path, "wf", "second.log")
    train_logs = lambda: "".join(p.read_text() for p in (results / "logs" / "train").glob("*.log"))  # noqa: E731
    wait_for(lambda: all(f"reattached to job {j}" in train_logs() for j in jobs) or second.poll() is not None,
             120, "the restarted workflow to reattach to both jobs")
    for j in jobs:
        assert f"reattached to job {j} (SUSPENDED" in train_logs(), train_logs()
        assert _run("scontrol", "resume", j).returncode == 0
    assert finish(second, tmp_path / "second.log", 180) == 0, (tmp_path / "second.log").read_text()[-4000:]
    assert sorted(slurm_jobs_under(tmp_path)) == sorted(jobs)  # every training job went through sbatch, once
    import pandas as pd

    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["method"]) == ["fixmatch", "lps"]
    assert (results / "tables" / "table1.md").exists()


@slurm
@needs_fmnist
def test_two_workflows_at_once_on_one_results_folder(workflow_cluster, tmp_path):
    """Two workflows (separate snakemake working directories) started at once on the same results
    folder: each job is submitted once, both workflows complete, and every output is readable."""
    import pandas as pd
    import pyarrow.parquet as pq

    from lps.results import RESULT_SCHEMA

    a = snakemake(tmp_path, "wfA", "a.log")
    b = snakemake(tmp_path, "wfB", "b.log")
    assert finish(a, tmp_path / "a.log", 420) == 0, (tmp_path / "a.log").read_text()[-4000:]
    assert finish(b, tmp_path / "b.log", 420) == 0, (tmp_path / "b.log").read_text()[-4000:]
    results = tmp_path / "results"
    records = [json.loads(p.read_text()) for p in (results / "jobs").glob("*.job.json")]
    assert records and sorted(slurm_jobs_under(tmp_path)) == sorted({str(r["job_id"]) for r in records})
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["method"]) == ["fixmatch", "lps"]
    for f in (results / "runs").glob("*/result.parquet"):
        assert pq.read_schema(f).names == RESULT_SCHEMA.names
    assert (results / "tables" / "table1.md").exists()
    assert not list(results.rglob("*.tmp")), "a temporary file was left behind"


def test_transient_sbatch_errors_are_told_apart():
    from lps.launch.slurm import is_transient

    for msg in ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation",
                "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying",
                "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
                "sbatch: error: Batch job submission failed: Resource temporarily unavailable"):
        assert is_transient(msg), msg
    for msg in ("sbatch: error: Batch job submission failed: Invalid partition name specified",
                "sbatch: error: Batch job submission failed: Invalid account or account/partition combination",
                "sbatch: error: Batch job submission failed: Requested node configuration is not available"):
        assert not is_transient(msg), msg
