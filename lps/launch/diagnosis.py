"""What went wrong with a SLURM job, in words: the message a failed run ends with."""

from __future__ import annotations

import os
from pathlib import Path

from lps.launch.job import TIMED_OUT_TOO_OFTEN
from lps.launch.records import Paths
from lps.launch.settings import LaunchSettings
from lps.launch.slurm_state import SlurmState

OOM_PATTERNS = ("exceeded memory limit", "oom-kill", "out of memory", "out_of_memory", "oom_kill")



def tail(path: Path, n: int = 10) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def describe_failure(run: str, job_id: str, st: SlurmState | None, res, a: LaunchSettings, paths: Paths,
                     rec: dict) -> str:
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

