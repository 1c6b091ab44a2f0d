"""Run one training or pretraining job through submitit and wait for its result.

This is the only place that submits jobs. The workflow's rules call::

    python -m lps.launch {train|pretrain} --executor {none,local,slurm} [options] -- [lps args]

``lps args`` are what ``lps train``/``lps pretrain`` take (``-c FILE``, ``key=value``). The command exits 0
once the run's output exists, and 1 with a message naming the run, the SLURM job id and its log files
otherwise. ``--executor none`` runs in this process (no submitit).

SLURM behaviour (``--executor slurm``):

- Requeue. The job is submitted with ``--signal=USR2@<delay>``; on that signal (time limit near) or on a
  preemption, submitit calls ``Job.checkpoint()``, which requeues the same job; the trainer resumes from
  the run's ``checkpoint.pt`` (last finished epoch). Time limits requeue at most ``--max-timeouts``
  times, then the job fails with a message saying so; preemptions (also ``scontrol requeue``) requeue
  without limit.
- Reattach. The job id is recorded in ``<jobs-dir>/<run>.job.json``. Running the launcher again while
  that job is pending or running waits for it instead of submitting a second one (also when the record
  was lost: an active job with the run's name and this jobs folder is adopted). A recorded job that
  ended without the run's output is submitted again (the run resumes from its checkpoint).
- Never hang. The launcher never blocks in submitit's ``result()``: it checks the result pickle every
  second and asks SLURM (``scontrol show job``, then ``sacct`` once the controller has forgotten the
  job) every ``--poll-s`` seconds. A job that has failed (FAILED, CANCELLED, OUT_OF_MEMORY, TIMEOUT,
  ...) and stays so for ``min(--grace-s, 10)`` seconds (a requeue would make it PENDING again) is
  reported at once, with the traceback when the job wrote one; a job that ended COMPLETED or is unknown
  to SLURM without a result pickle gets ``--grace-s`` seconds (a shared file system may show the pickle
  late). So a dead job is reported at most ``--poll-s`` + 10 s (failed) or ``--poll-s + --grace-s``
  (vanished), plus command latency, after SLURM notices it: 40 s / 90 s with the defaults.
- One submitter. ``<jobs-dir>/<run>.lock`` (``fcntl.flock``) serialises check-record-submit, so two
  launchers (two workflows) started at once for the same run share one job.

Logs of a run's jobs: ``<jobs-dir>/<run>/<job id>_0_log.{out,err}`` (submitit's stdout/stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lps.errors import LPSError

PREFIX = "[lps.launch]"

# SLURM job states (long names, as scontrol/sacct print them) in which the job may still produce a result
ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD", "POWER_UP_NODE",
}
# states that wait for a person (scontrol release / hold) rather than for resources
HELD_STATES = {"REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "SUSPENDED"}
FAILED_GRACE_S = 10  # how long a failed state must last before it is reported (requeues are immediate)
OOM_PATTERNS = ("exceeded memory limit", "oom-kill", "out of memory", "out_of_memory", "oom_kill")


_SIGNALLED: list[float] = []  # times submitit's USR2 handler called Job.checkpoint in this process
# submitit's words when it does not requeue a timed-out job; describe_failure recognises them
TIMED_OUT_TOO_OFTEN = "timed-out too many times"


class Job:
    """A picklable submitit callable; ``checkpoint()`` requeues it on preemption or timeout, and the
    requeued job resumes from the run's ``checkpoint.pt``."""

    def __init__(self, kind: str, lps_args: list[str]):
        self.kind, self.lps_args = kind, list(lps_args)

    def __call__(self) -> str:
        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id:
            start = int(os.environ.get("SLURM_RESTART_COUNT", 0)) + 1
            print(f"{PREFIX} SLURM job {job_id} on {socket.gethostname()}, start {start} "
                  f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')})", flush=True)
        cfg = build(self.lps_args)
        if self.kind == "pretrain":
            from lps.pretrain import pretrain

            out = str(pretrain(cfg))
        else:
            from lps.trainer import train

            out = train(cfg)["run_id"]
        if _SIGNALLED:
            # submitit requeues by exiting from its USR2 handler (SystemExit). Getting here after the
            # handler ran means it decided not to requeue (time-outs exhausted) and raised its
            # UncompletedJobError inside code that caught it (an ``except Exception`` while loading):
            # the job still ends as submitit decided, instead of running on past its notice.
            from submitit.core.utils import UncompletedJobError

            raise UncompletedJobError(f"Job not requeued after SIGUSR2 ({TIMED_OUT_TOO_OFTEN}); the run "
                                      "resumes from its last checkpoint when started again")
        return out

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2 (time limit near, or preemption): requeue this same job. Nothing to
        save here: the trainer checkpoints every epoch and resumes from the last one."""
        import submitit

        _SIGNALLED.append(time.time())
        print(f"{PREFIX} checkpoint(): requeueing; the run resumes from its last epoch checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(Job(self.kind, self.lps_args))


def build(lps_args: list[str]):
    from lps.config import build_config

    files, overrides, it = [], [], iter(lps_args)
    for a in it:
        if a in ("-c", "--config"):
            try:
                files.append(next(it))
            except StopIteration:
                raise LPSError(f"{a} needs a config file argument") from None
        else:
            overrides.append(a)
    return build_config(files, overrides)


def expected_output(kind: str, lps_args: list[str]) -> Path:
    from lps.identity import pretrain_dir, run_dir

    cfg = build(lps_args)
    if kind == "pretrain":
        return pretrain_dir(cfg) / "backbone.pt"
    return run_dir(cfg) / "result.parquet"


def run_name(kind: str, out: Path) -> str:
    """The run's name: the run folder (``<run_id>``, or ``simclr-<dataset>-<hash>`` for pretraining)."""
    return out.parent.name


# --------------------------------------------------------------------------------------------
# small helpers


def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        say(f"ignoring unreadable job record {path} ({e})")
        return None


@contextlib.contextmanager
def run_lock(path: Path, run: str):
    """Exclusive ``flock`` on ``path`` (released when the process ends, whatever the cause)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"{run}: another launcher holds {path}; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def tail(path: Path, n: int = 10) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def _cmd(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", f"{args[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(args)}: no answer within {timeout:.0f} s"
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------------------------
# SLURM job state


@dataclass
class SlurmState:
    state: str  # long state name (RUNNING, CANCELLED, ...); "" when SLURM does not know the job
    reason: str = ""
    exit_code: str = ""  # "<exit status>:<signal>"
    restarts: int = 0
    source: str = ""  # scontrol | sacct | ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def describe(self) -> str:
        if not self.state:
            return "unknown to SLURM"
        s = self.state
        if self.reason and self.reason not in ("None", "(null)"):
            s += f" ({self.reason})"
        return s


def _field(text: str, key: str) -> str:
    m = re.search(rf"(?:^|\s){key}=(\S*)", text)
    return m.group(1) if m else ""


def slurm_state(job_id: str) -> SlurmState | None:
    """The job's state from the controller (``scontrol show job``), or from accounting (``sacct``) once
    the controller has purged it (``MinJobAge``). ``None`` if SLURM cannot be reached."""
    rc, out, err = _cmd(["scontrol", "show", "job", "-o", job_id])
    if rc == 0 and "JobState=" in out:
        state = _field(out, "JobState")
        return SlurmState(state=state, reason=_field(out, "Reason"), exit_code=_field(out, "ExitCode"),
                          restarts=int(_field(out, "Restarts") or 0), source="scontrol")
    if "invalid job id" not in (out + err).lower():
        return None  # controller unreachable or another error: try again later
    return sacct_state(job_id) or SlurmState(state="")


def sacct_state(job_id: str) -> SlurmState | None:
    """The job's last state in SLURM accounting; None without accounting or if it has no record."""
    rc, out, _ = _cmd(["sacct", "-n", "-P", "-X", "-j", job_id, "-S", "2000-01-01",
                       "-o", "JobID,State,ExitCode,Reason"])
    rows = [r for r in (ln.split("|") for ln in out.splitlines()) if r[0] == job_id] if rc == 0 else []
    if not rows:
        return None
    r = rows[-1] + ["", "", ""]
    return SlurmState(state=r[1].split()[0] if r[1] else "", exit_code=r[2], reason=r[3], source="sacct")


def find_active_job(name: str, folder: Path) -> str | None:
    """An active job of this user named ``name`` whose log goes to ``folder`` (a submission whose record
    was never written, e.g. the launcher was killed right after sbatch)."""
    rc, out, _ = _cmd(["squeue", "-h", "-u", getpass.getuser(), "-n", name, "-o", "%i"])
    if rc != 0:
        return None
    for job_id in out.split():
        rc, info, _ = _cmd(["scontrol", "show", "job", "-o", job_id])
        if rc == 0 and _field(info, "StdOut").startswith(str(folder) + "/") and \
                _field(info, "JobState") in ACTIVE_STATES:
            return job_id
    return None


def read_result(path: Path) -> tuple[str, object] | None:
    """submitit's result pickle: ("success", value) or ("error", traceback text); None if absent."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as e:  # noqa: BLE001  (a truncated file on a slow file system: read it again later)
        say(f"cannot read {path} yet ({type(e).__name__}: {e})")
        return None


# --------------------------------------------------------------------------------------------
# the SLURM path


@dataclass
class Paths:
    folder: Path
    job_id: str

    @property
    def stdout(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.out"

    @property
    def stderr(self) -> Path:
        return self.folder / f"{self.job_id}_0_log.err"

    @property
    def result(self) -> Path:
        return self.folder / f"{self.job_id}_0_result.pkl"


def signal_delay(time_min: int) -> int:
    """Seconds before the time limit at which SLURM is asked to send USR2: 10 % of the limit, between
    15 and 90 s. slurmctld checks time limits every 30 s and sends the signal at the check before it is
    due, so it comes 0-30 s earlier than asked (sbatch(1): "up to 60 seconds earlier"), and the kill at
    the limit comes 0-30 s late. The handler needs only seconds: the trainer checkpoints every epoch,
    ``Job.checkpoint`` just requeues."""
    return int(max(15, min(90, time_min * 6)))


def submit_slurm(a, kind: str, lps_args: list[str], run: str, folder: Path) -> str:
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
    for kv in a.sbatch:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise LPSError(f"--sbatch {kv!r}: expected KEY=VALUE (e.g. --sbatch qos=high)")
        extra[k.lstrip("-")] = v
    if extra:
        params["slurm_additional_parameters"] = extra
    try:
        ex.update_parameters(**params)
    except ValueError as e:
        raise LPSError(f"{run}: invalid SLURM parameters: {e}") from None
    t0 = time.time()
    try:
        job = ex.submit(Job(kind, lps_args))
    except Exception as e:  # noqa: BLE001  (sbatch's own message says what it rejected)
        for tmp in folder.glob("*"):  # submitit's files for the job that was never submitted
            if re.fullmatch(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh", tmp.name) and \
                    tmp.stat().st_mtime >= t0 - 1:
                tmp.unlink(missing_ok=True)
        detail = getattr(e, "output", None) or getattr(e, "stderr", None) or ""
        raise LPSError(f"{run}: sbatch failed: {e} {detail}".strip() +
                       "\n  check --partition/--account/--gpus/--cpus/--mem-gb/--time-min against `sinfo`") from None
    paths = Paths(folder, job.job_id)
    # a result pickle left by an earlier cluster incarnation that reused this job id
    with contextlib.suppress(OSError):
        if paths.result.stat().st_mtime < t0:
            paths.result.unlink()
    return job.job_id


def describe_failure(run: str, job_id: str, st: SlurmState | None, res, a, paths: Paths, rec: dict) -> str:
    log_tail = tail(paths.stderr, 10)
    time_min = rec.get("time_min", a.time_min)
    if res is not None and res[0] == "error":
        tb = str(res[1]).rstrip().splitlines()
        if any(TIMED_OUT_TOO_OFTEN in ln for ln in tb):
            what = (f"reached its time limit ({time_min} min) more often than --max-timeouts="
                    f"{rec.get('max_timeouts', a.max_timeouts)} allows and was not requeued again; "
                    "raise --time-min or --max-timeouts (the run resumes from its checkpoint)")
            body = [f"  {tb[-1].strip()}"] if tb else []
        else:
            what = "failed with an exception"
            tb = [ln for ln in tb if ln.strip() and set(ln.strip()) - set("^~")]  # drop 3.11 caret lines
            body = ["  traceback (last lines):"] + [f"    {ln}" for ln in tb[-10:]]
    else:
        state = st.state if st else ""
        oom = any(p in ln.lower() for ln in log_tail for p in OOM_PATTERNS)
        if state == "OUT_OF_MEMORY" or oom:
            what = f"ran out of memory (limit --mem-gb={rec.get('mem_gb', a.mem_gb)}); raise --mem-gb"
        elif state == "CANCELLED":
            what = "was cancelled (scancel, or by an administrator)"
        elif state == "TIMEOUT":
            what = (f"was killed at its time limit ({time_min} min) without being requeued "
                    "(the USR2 signal came too late or the job could not checkpoint)")
        elif state in ("NODE_FAIL", "BOOT_FAIL"):
            what = f"lost its node ({state})"
        elif state == "PREEMPTED":
            what = "was preempted and not requeued"
        elif state == "":
            what = "is no longer known to SLURM and wrote no result (killed, or the cluster was restarted)"
        elif state == "COMPLETED":
            what = "ended COMPLETED but wrote no result pickle"
        else:
            status, _, sig = (st.exit_code if st else "").partition(":")
            if sig in ("", "0") and status.isdigit() and int(status) > 128:  # srun reports 128 + signal
                sig = str(int(status) - 128)
            how = f", killed by signal {sig}" if sig not in ("", "0") else ""
            what = (f"ended {st.describe()} without a result (exit code {st.exit_code or '?'}{how}): "
                    "the job process died (killed, or crashed outside Python)")
        body = []
    lines = [f"run {run}: SLURM job {job_id} {what}"] + body
    lines.append(f"  log: {paths.stderr}")
    lines.append(f"  stdout: {paths.stdout}")
    if log_tail and not body:
        lines.append(f"  last lines of {paths.stderr.name}:")
        lines += [f"    {ln}" for ln in log_tail]
    return "\n".join(lines)


def wait_slurm(a, run: str, job_id: str, paths: Paths, out: Path, rec: dict) -> None:
    """Wait until the job has written its result; raise LPSError on failure (never waits forever on a
    job that has ended)."""
    t0 = time.monotonic()
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
            st = slurm_state(job_id)
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


def launch_slurm(a, kind: str, lps_args: list[str], out: Path) -> None:
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


def launch_local(a, kind: str, lps_args: list[str], out: Path) -> None:
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


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="python -m lps.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["train", "pretrain"])
    p.add_argument("--executor", choices=["none", "local", "slurm"], default="none")
    p.add_argument("--jobs-dir", default="results/jobs",
                   help="job records, locks and submitit folders (logs, pickles); on a shared file system")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per job (--gpus-per-node); 0 for none")
    p.add_argument("--cpus", type=int, default=8, help="CPUs per task")
    p.add_argument("--mem-gb", type=float, default=32, help="memory per job in GB (fractions allowed)")
    p.add_argument("--time-min", type=int, default=600, help="time limit of one attempt, minutes")
    p.add_argument("--max-timeouts", type=int, default=3,
                   help="how often a job that reaches its time limit is requeued before it fails")
    p.add_argument("--signal-delay-s", type=int, default=0,
                   help="USR2 this many seconds before the time limit (0: automatic, 15..90 s)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --sbatch qos=high --sbatch constraint=a100 (repeatable)")
    p.add_argument("--poll-s", type=float, default=30, help="seconds between SLURM state queries")
    p.add_argument("--grace-s", type=float, default=60,
                   help="how long a job that ended COMPLETED, or is unknown to SLURM, may lack its result "
                        "pickle before it is reported failed (failed states: at most 10 s)")
    p.add_argument("--unreachable-s", type=float, default=900,
                   help="give up after SLURM has not answered for this long (the job keeps running)")
    p.add_argument("lps_args", nargs="*", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after the first "--" belongs to lps (argparse.REMAINDER would also swallow our options)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = p.parse_args(argv)
    a.lps_args = list(a.lps_args) + rest
    for name, lo in (("gpus", 0), ("cpus", 1), ("time_min", 1), ("max_timeouts", 0)):
        if getattr(a, name) < lo:
            p.error(f"--{name.replace('_', '-')} must be >= {lo}")
    if a.mem_gb <= 0 or a.poll_s <= 0 or a.grace_s < 0:
        p.error("--mem-gb and --poll-s must be > 0, --grace-s >= 0")
    return a


def _stop(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    lps_args = a.lps_args
    out = None
    if a.executor != "none":
        signal.signal(signal.SIGTERM, _stop)
    try:
        out = expected_output(a.kind, lps_args)
        if a.executor == "none":
            run = run_name(a.kind, out)
            with run_lock(Path(a.jobs_dir).expanduser().absolute() / f"{run}.lock", run):
                Job(a.kind, lps_args)()
        elif a.executor == "local":
            launch_local(a, a.kind, lps_args, out)
        else:
            launch_slurm(a, a.kind, lps_args, out)
        if not out.exists():
            raise LPSError(f"{a.kind} finished but {out} is missing")
        return 0
    except LPSError as e:
        print(f"lps.launch: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        if a.executor == "slurm" and out is not None:
            print(f"lps.launch: stopped ({e or 'interrupted'}); a submitted SLURM job keeps running: run the "
                  f"same command again to reattach to it", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    # run the copy imported as ``lps.launch``: jobs pickle ``lps.launch.Job``, not ``__main__.Job``
    from lps.launch import main as _main

    sys.exit(_main())
