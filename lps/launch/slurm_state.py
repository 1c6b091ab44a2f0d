"""SLURM job states: ``scontrol show job`` (the controller), ``sacct`` (accounting, once the
controller has purged the job), ``squeue`` (an active job whose record was lost)."""

from __future__ import annotations

import getpass
import re
import subprocess
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

