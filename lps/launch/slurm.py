"""The SLURM path: submit (submitit), record, reattach or adopt, and wait without hanging."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

from lps.errors import LPSError
from lps.launch.diagnosis import describe_failure
from lps.launch.job import Job, run_name, say
from lps.launch.records import Paths, atomic_write_json, read_json, read_result, run_lock
from lps.launch.settings import LaunchSettings
from lps.launch.slurm_state import HELD_STATES, SharedSlurmView, SlurmState, find_active_job, slurm_state

FAILED_GRACE_S = 10  # how long a failed state must last before it is reported (requeues are immediate)



def signal_delay(time_min: int) -> int:
    """Seconds before the time limit at which SLURM is asked to send USR2: 10 % of the limit, between
    15 and 90 s. slurmctld checks time limits every 30 s and sends the signal at the check before it is
    due, so it comes 0-30 s earlier than asked (sbatch(1): "up to 60 seconds earlier"), and the kill at
    the limit comes 0-30 s late. The handler needs only seconds: the trainer checkpoints every epoch,
    ``Job.checkpoint`` just requeues."""
    return int(max(15, min(90, time_min * 6)))


# sbatch messages of a controller that is busy, restarting or briefly unreachable: worth another try
TRANSIENT_SBATCH = re.compile(
    r"socket timed out|unable to contact slurm controller|temporarily unable|resource temporarily "
    r"unavailable|connection (refused|timed out|reset)|zero bytes were transmitted|slurmctld.*(busy|not "
    r"responding)|try again|eagain", re.I)


def is_transient(message: str) -> bool:
    return bool(TRANSIENT_SBATCH.search(message))


def _remove_unsubmitted(folder: Path, t0: float) -> None:
    """submitit's files for a job that was never submitted."""
    for tmp in folder.glob("*"):
        if re.fullmatch(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh", tmp.name) and \
                tmp.stat().st_mtime >= t0 - 1:
            tmp.unlink(missing_ok=True)


def _cmd_quiet(args: list[str]) -> None:
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(args, capture_output=True, timeout=60, check=False)


def submit_slurm(a: LaunchSettings, kind: str, lps_args: list[str], run: str, folder: Path) -> str:
    import submitit

    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=a.max_timeouts)
    params = {"timeout_min": a.time_min, "name": run, "cpus_per_task": a.cpus, "mem_gb": a.mem_gb,
              "slurm_signal_delay_s": a.signal_delay_s or signal_delay(a.time_min)}
    if a.gpus > 0:
        params["gpus_per_node"] = a.gpus
    if a.partition:
        params["slurm_partition"] = a.partition
    if a.account:
        params["slurm_account"] = a.account
    extra = {}
    for kv in a.sbatch:  # KEY=VALUE, checked by LaunchSettings
        k, _, v = kv.partition("=")
        extra[k.lstrip("-")] = v
    if extra:
        params["slurm_additional_parameters"] = extra
    try:
        ex.update_parameters(**params)
    except ValueError as e:
        raise LPSError(f"{run}: invalid SLURM parameters: {e}") from None
    t0 = time.time()
    for attempt in range(a.submit_retries + 1):
        try:
            job = ex.submit(Job(kind, lps_args))
            break
        except Exception as e:  # noqa: BLE001  (sbatch's own message says what it rejected)
            _remove_unsubmitted(folder, t0)
            detail = getattr(e, "output", None) or getattr(e, "stderr", None) or ""
            message = f"{e} {detail}".strip()
            if not is_transient(message) or attempt == a.submit_retries:
                tried = f" (after {attempt + 1} attempts)" if attempt else ""
                raise LPSError(f"{run}: sbatch failed{tried}: {message}" + (
                    "" if is_transient(message) else
                    "\n  check --partition/--account/--gpus/--cpus/--mem-gb/--time-min against `sinfo`")) from None
            # the controller may have accepted the job before the answer was lost: its submitit pickle
            # is gone, so it could not run; cancel it rather than run the training twice
            ghost = find_active_job(run, folder)
            if ghost:
                _cmd_quiet(["scancel", ghost])
                say(f"{run}: cancelled job {ghost}, submitted by the failed sbatch without its job file")
            wait = a.submit_backoff_s * 2 ** attempt
            last_line = message.strip().splitlines()[-1] if message.strip() else "no message"
            say(f"{run}: sbatch failed transiently ({last_line}); retry {attempt + 1}/{a.submit_retries} "
                f"in {wait:.0f} s")
            time.sleep(wait)
    paths = Paths(folder, job.job_id)
    # a result pickle left by an earlier cluster incarnation that reused this job id
    with contextlib.suppress(OSError):
        if paths.result.stat().st_mtime < t0:
            paths.result.unlink()
    return job.job_id


def wait_slurm(a: LaunchSettings, run: str, job_id: str, paths: Paths, out: Path, rec: dict) -> None:
    """Wait until the job has written its result; raise LPSError on failure (never waits forever on a
    job that has ended)."""
    t0 = time.monotonic()
    view = SharedSlurmView(Path(a.jobs_dir).expanduser().absolute(), ttl=a.poll_s)
    submitted = float(rec.get("submitted_unix") or 0.0)  # a snapshot older than the job does not list it
    next_query = 0.0
    last = None
    deadline = None  # set while the job looks ended without a result
    unreachable_since = None
    held_reported = False
    st: SlurmState | None = None
    while True:
        res = read_result(paths.result)
        if res is not None:
            if res[0] == "success":
                for _ in range(int(max(a.grace_s, 1))):  # shared file systems may show the file late
                    if out.exists():
                        break
                    time.sleep(1)
                if not out.exists():
                    raise LPSError(f"run {run}: SLURM job {job_id} succeeded but {out} is missing "
                                   f"(not on a shared file system?)\n  log: {paths.stderr}")
                say(f"{run}: job {job_id} completed after {time.monotonic() - t0:.0f} s; output {out}")
                return
            raise LPSError(describe_failure(run, job_id, st, res, a, paths, rec))
        now = time.monotonic()
        if now >= next_query:
            next_query = now + a.poll_s
            st = view.state(job_id, not_before=submitted)
            if st is None:
                unreachable_since = unreachable_since or now
                if now - unreachable_since > a.unreachable_s:
                    raise LPSError(f"run {run}: SLURM did not answer for {a.unreachable_s:.0f} s while waiting "
                                   f"for job {job_id}; it may still run: run the launcher again to reattach"
                                   f"\n  log: {paths.stderr}")
            else:
                unreachable_since = None
                key = (st.state, st.restarts)
                if key != last:
                    restart = f", requeued {st.restarts}x" if st.restarts else ""
                    say(f"{run}: job {job_id} {st.describe()}{restart}")
                    last = key
                if st.active:
                    deadline = None
                    if st.state in HELD_STATES and not held_reported:
                        how = "scontrol resume" if st.state == "SUSPENDED" else "scontrol release"
                        say(f"{run}: job {job_id} is held ({st.describe()}): it continues after "
                            f"`{how} {job_id}` (or cancel it)")
                        held_reported = True
                elif deadline is None:
                    # a failed state only needs confirming; a missing result pickle may just be late
                    wait = a.grace_s if st.state in ("", "COMPLETED") else min(a.grace_s, FAILED_GRACE_S)
                    deadline = now + wait
                    next_query = min(next_query, deadline)
                elif now >= deadline:
                    raise LPSError(describe_failure(run, job_id, st, None, a, paths, rec))
        time.sleep(min(1.0, max(0.05, next_query - time.monotonic())))


def launch_slurm(a: LaunchSettings, kind: str, lps_args: list[str], out: Path) -> None:
    run = run_name(kind, out)
    jobs_dir = Path(a.jobs_dir).expanduser().absolute()
    folder = jobs_dir / run
    record_file = jobs_dir / f"{run}.job.json"
    with run_lock(jobs_dir / f"{run}.lock", run):
        if out.exists():
            say(f"{run}: already complete ({out})")
            return
        rec = read_json(record_file)
        job_id = None
        if rec and rec.get("executor") == "slurm" and rec.get("job_id"):
            old = str(rec["job_id"])
            st = slurm_state(old)
            if st is None:
                raise LPSError(f"run {run}: SLURM does not answer (scontrol show job {old}); is the cluster up?")
            if st.active:
                job_id = old
                say(f"{run}: reattached to job {old} ({st.describe()}, submitted {rec.get('submitted_at', '?')}); "
                    f"log {Paths(folder, old).stderr}")
                if rec.get("lps_args") != lps_args:
                    say(f"{run}: note: job {old} was submitted with other (non-scientific) arguments: "
                        f"{' '.join(rec.get('lps_args') or [])}")
            else:
                res = read_result(Paths(folder, old).result)
                if res and res[0] == "success":  # e.g. snakemake deleted it to rerun an "incomplete" job
                    say(f"{run}: recorded job {old} completed, but {out} has been deleted since; submitting "
                        f"a new job (it resumes from the run's last checkpoint)")
                else:
                    ended = "with an exception" if res and res[0] == "error" else st.describe()
                    say(f"{run}: recorded job {old} ended ({ended}) without {out.name}; submitting a new job "
                        f"(the run resumes from its checkpoint); old log {Paths(folder, old).stderr}")
        if job_id is None:
            orphan = find_active_job(run, folder)
            if orphan:
                job_id = orphan
                say(f"{run}: adopted running job {orphan} (submitted from this jobs folder, no record)")
            else:
                job_id = submit_slurm(a, kind, lps_args, run, folder)
                say(f"{run}: submitted SLURM job {job_id}; log {Paths(folder, job_id).stderr}")
            rec = {
                "run": run, "kind": kind, "executor": "slurm", "job_id": job_id,
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "submitted_unix": time.time(),
                "host": socket.gethostname(), "launcher_pid": os.getpid(), "output": str(out),
                "folder": str(folder), "lps_args": lps_args, "partition": a.partition, "gpus": a.gpus,
                "cpus": a.cpus, "mem_gb": a.mem_gb, "time_min": a.time_min, "max_timeouts": a.max_timeouts,
                "adopted": bool(orphan),
            }
            atomic_write_json(record_file, rec)
    wait_slurm(a, run, job_id, Paths(folder, job_id), out, rec)


def launch_local(a: LaunchSettings, kind: str, lps_args: list[str], out: Path) -> None:
    """submitit's LocalExecutor (a subprocess of this launcher); the lock is held until it ends."""
    import submitit

    run = run_name(kind, out)
    jobs_dir = Path(a.jobs_dir).expanduser().absolute()
    with run_lock(jobs_dir / f"{run}.lock", run):
        if out.exists():
            say(f"{run}: already complete ({out})")
            return
        ex = submitit.AutoExecutor(folder=jobs_dir / run, cluster="local")
        ex.update_parameters(timeout_min=a.time_min, name=run)
        job = ex.submit(Job(kind, lps_args))
        say(f"{run}: started local job {job.job_id}; log {job.paths.stderr}")
        try:
            job.result()
        except Exception as e:  # noqa: BLE001
            raise LPSError(f"run {run}: local job {job.job_id} failed: {e}\n  log: {job.paths.stderr}") from None

