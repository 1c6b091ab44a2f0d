"""SLURM job states: ``scontrol show job`` (the controller), ``sacct`` (accounting, once the
controller has purged the job), ``squeue`` (an active job whose record was lost), and
:class:`SharedSlurmView`: one ``squeue`` per poll interval for every launcher of a jobs folder."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ACTIVE_STATES = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD", "POWER_UP_NODE",
}

# states that wait for a person (scontrol release / hold) rather than for resources
HELD_STATES = {"REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "SUSPENDED"}



def _cmd(args: list[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, "", f"{args[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(args)}: no answer within {timeout:.0f} s"
    return p.returncode, p.stdout, p.stderr


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



def _exit_code(raw: str) -> str:
    """squeue's ``exit_code`` is the wait status (768 = exit 3); sacct's form is ``<status>:<signal>``."""
    try:
        code = int(raw)
    except ValueError:
        return raw
    return f"{code >> 8}:{code & 0x7F}"


SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,RestartCnt:|,exit_code:|"


def squeue_user_jobs(user: str | None = None) -> dict[str, SlurmState] | None:
    """Every job of ``user`` the controller still knows (``squeue -t all``: pending, running and those
    that ended less than ``MinJobAge`` ago), in one call; None if SLURM does not answer."""
    rc, out, _ = _cmd(["squeue", "-h", "-t", "all", "-u", user or getpass.getuser(), "-O", SQUEUE_FORMAT])
    if rc != 0:
        return None
    jobs = {}
    for line in out.splitlines():
        f = [x.strip() for x in line.split("|")]
        if len(f) < 5 or not f[0]:
            continue
        jobs[f[0]] = SlurmState(state=f[1].split()[0] if f[1] else "", reason=f[2], exit_code=_exit_code(f[4]),
                                restarts=int(f[3]) if f[3].isdigit() else 0, source="squeue")
    return jobs


def sacct_states(job_ids: list[str]) -> dict[str, SlurmState]:
    """The last accounting state of each job, in one ``sacct`` call ({} without accounting)."""
    if not job_ids:
        return {}
    rc, out, _ = _cmd(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-S", "2000-01-01",
                       "-o", "JobID,State,ExitCode,Reason"])
    states: dict[str, SlurmState] = {}
    for r in (ln.split("|") for ln in out.splitlines()) if rc == 0 else []:
        r = r + ["", "", ""]
        if r[0] in job_ids:  # the last row of a job id is its latest incarnation
            states[r[0]] = SlurmState(state=r[1].split()[0] if r[1] else "", exit_code=r[2], reason=r[3],
                                      source="sacct")
    return states


class SharedSlurmView:
    """What every waiting launcher of one jobs folder asks SLURM, asked once per ``ttl`` seconds.

    The snapshot (``<jobs_dir>/.slurm/squeue.json``: the time, and the state of every job of this user
    the controller knows) is written atomically on the shared file system. A launcher that finds it
    older than ``ttl`` (or older than its own job's submission) takes ``.slurm/query.lock``, and either
    refreshes it with one ``squeue`` call or, if another launcher did so while it waited, reads that.
    So N waiting launchers cost one ``squeue`` per poll interval, not N ``scontrol`` calls. A job that
    is not in the snapshot has left the controller: its state comes from ``sacct`` (once per poll,
    only for the few seconds between a job's end and its launcher's report).
    """

    def __init__(self, jobs_dir: Path, ttl: float, user: str | None = None):
        self.dir = Path(jobs_dir) / ".slurm"
        self.file = self.dir / "squeue.json"
        self.ttl = float(ttl)
        self.user = user or getpass.getuser()

    def _read(self) -> dict | None:
        try:
            snap = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        return snap if snap.get("user") == self.user else None

    def _fresh(self, snap: dict | None, not_before: float) -> bool:
        return snap is not None and snap["t"] >= not_before and time.time() - snap["t"] < self.ttl

    def snapshot(self, not_before: float = 0.0) -> dict:
        """``{"t": unix time, "ok": bool, "jobs": {job id: state fields}}``, at most ``ttl`` seconds old."""
        snap = self._read()
        if self._fresh(snap, not_before):
            return snap
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "query.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # a launcher querying now holds it for one squeue call
            snap = self._read()
            if self._fresh(snap, not_before):
                return snap
            t = time.time()
            jobs = squeue_user_jobs(self.user)
            snap = {"t": t, "user": self.user, "ok": jobs is not None,
                    "jobs": {k: vars(v) for k, v in (jobs or {}).items()}}
            tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps(snap))
                os.replace(tmp, self.file)
            return snap

    def state(self, job_id: str, not_before: float = 0.0) -> SlurmState | None:
        """The job's state as of the shared snapshot (``None`` while SLURM does not answer); a job the
        controller no longer knows is looked up in accounting."""
        snap = self.snapshot(not_before)
        if not snap["ok"]:
            return None
        if job_id in snap["jobs"]:
            return SlurmState(**snap["jobs"][job_id])
        return sacct_state(job_id) or SlurmState(state="")
