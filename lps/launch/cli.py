"""Run one training or pretraining job through submitit and wait for its result.

This is the only place that submits jobs. The workflow's rules call :func:`launch` (through
``workflow/scripts/launch.py``); by hand::

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

Here: options -> :class:`LaunchSettings` -> :func:`launch`; the workflow calls :func:`launch` with
settings built from its resources.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path

from lps.errors import LPSError
from lps.launch.job import Job, expected_output, run_name
from lps.launch.records import run_lock
from lps.launch.settings import LaunchSettings
from lps.launch.slurm import launch_local, launch_slurm

def _parser() -> argparse.ArgumentParser:
    d = LaunchSettings()
    p = argparse.ArgumentParser(prog="python -m lps.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["train", "pretrain"])
    p.add_argument("--executor", choices=["none", "local", "slurm"], default=d.executor)
    p.add_argument("--jobs-dir", default=d.jobs_dir,
                   help="job records, locks and submitit folders (logs, pickles); on a shared file system")
    p.add_argument("--partition", default=d.partition)
    p.add_argument("--account", default=d.account)
    p.add_argument("--gpus", type=int, default=d.gpus, help="GPUs per job (--gpus-per-node); 0 for none")
    p.add_argument("--cpus", type=int, default=d.cpus, help="CPUs per task")
    p.add_argument("--mem-gb", type=float, default=d.mem_gb, help="memory per job in GB (fractions allowed)")
    p.add_argument("--time-min", type=int, default=d.time_min, help="time limit of one attempt, minutes")
    p.add_argument("--max-timeouts", type=int, default=d.max_timeouts,
                   help="how often a job that reaches its time limit is requeued before it fails")
    p.add_argument("--signal-delay-s", type=int, default=d.signal_delay_s,
                   help="USR2 this many seconds before the time limit (0: automatic, 15..90 s)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --sbatch qos=high --sbatch constraint=a100 (repeatable)")
    p.add_argument("--poll-s", type=float, default=d.poll_s, help="seconds between SLURM state queries")
    p.add_argument("--grace-s", type=float, default=d.grace_s,
                   help="how long a job that ended COMPLETED, or is unknown to SLURM, may lack its result "
                        "pickle before it is reported failed (failed states: at most 10 s)")
    p.add_argument("--unreachable-s", type=float, default=d.unreachable_s,
                   help="give up after SLURM has not answered for this long (the job keeps running)")
    p.add_argument("--submit-retries", type=int, default=d.submit_retries,
                   help="sbatch attempts after a transient failure (slurmctld busy or unreachable)")
    p.add_argument("--submit-backoff-s", type=float, default=d.submit_backoff_s,
                   help="seconds before the first sbatch retry; doubled after each")
    p.add_argument("lps_args", nargs="*", help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> tuple[str, list[str], LaunchSettings]:
    """``(kind, lps args, settings)`` of a command line; everything after the first ``--`` is lps's."""
    p = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after the first "--" belongs to lps (argparse.REMAINDER would also swallow our options)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = p.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(LaunchSettings)}
    try:
        settings = LaunchSettings(**{k: v for k, v in vars(a).items() if k in fields})
    except LPSError as e:
        p.error(str(e))
    return a.kind, list(a.lps_args) + rest, settings


NESTED_HELP = (
    "{who} runs {where} and would submit each run as a further SLURM job. The "
    "workflow's SLURM path is the launcher itself (profiles/slurm: Snakemake runs on the login node and "
    "submits through submitit), so Snakemake must not also submit its jobs: run `snakemake --profile "
    "profiles/slurm` from a login node, without `--executor slurm` (check a global profile in "
    "~/.config/snakemake or $SNAKEMAKE_PROFILE for `executor: slurm`). To run inside an allocation on "
    "purpose (salloc/tmux on a compute node whose jobs may submit jobs), set LPS_ALLOW_NESTED_SLURM=1.")


def nested_allowed() -> bool:
    return os.environ.get("LPS_ALLOW_NESTED_SLURM", "") in ("1", "true", "yes")


def refuse_nested(executor: str) -> None:
    """A SLURM launcher inside a SLURM job: a Snakemake SLURM executor (plugin or global profile) put it
    there, and each run would hold a job (and its GPUs) while waiting for the job it submitted."""
    job = os.environ.get("SLURM_JOB_ID")
    if executor == "slurm" and job and not nested_allowed():
        raise LPSError(NESTED_HELP.format(who="this launcher", where=f"inside SLURM job {job}"))


def resolve_output(kind: str, lps_args: list[str]) -> Path:
    """The run's output path, resolved in a child process: resolving a config imports torch (~500 MB
    resident), which a launcher that only waits for its job should not keep."""
    import json
    import subprocess

    code = ("import json, sys; from lps.errors import LPSError; from lps.launch.job import expected_output\n"
            "try: print(json.dumps({'out': str(expected_output(sys.argv[1], sys.argv[2:]))}))\n"
            "except LPSError as e: print(json.dumps({'error': str(e)}))")
    r = subprocess.run([sys.executable, "-c", code, kind, *lps_args], capture_output=True, text=True)
    try:
        answer = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise LPSError(f"could not resolve the run's config: {r.stderr.strip()[-2000:]}") from None
    if "error" in answer:
        raise LPSError(answer["error"])
    return Path(answer["out"])


def _stop(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(signal.Signals(signum).name)



def launch(kind: str, lps_args: list[str], settings: LaunchSettings, output: Path | None = None) -> int:
    """Run one training or pretraining with ``settings``; 0 once its output exists, 1 with a message
    on stderr otherwise, 130 when interrupted. ``output``: the file the run writes, when the caller
    knows it already (the workflow's planner does); else it is resolved from ``lps_args``."""
    a = settings
    out = None
    if a.executor != "none":
        signal.signal(signal.SIGTERM, _stop)
    try:
        refuse_nested(a.executor)
        if output is not None:
            out = Path(output).absolute()
        elif a.executor == "none":  # the run happens in this process: resolving here costs nothing more
            out = expected_output(kind, lps_args)
        else:
            out = resolve_output(kind, lps_args)
        if a.executor == "none":
            run = run_name(kind, out)
            with run_lock(Path(a.jobs_dir).expanduser().absolute() / f"{run}.lock", run):
                Job(kind, lps_args)()
        elif a.executor == "local":
            launch_local(a, kind, lps_args, out)
        else:
            launch_slurm(a, kind, lps_args, out)
        if not out.exists():
            raise LPSError(f"{kind} finished but {out} is missing")
        return 0
    except LPSError as e:
        print(f"lps.launch: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        if a.executor == "slurm" and out is not None:
            print(f"lps.launch: stopped ({e or 'interrupted'}); a submitted SLURM job keeps running: run the "
                  f"same command again to reattach to it", file=sys.stderr, flush=True)
        return 130


def main(argv: list[str] | None = None) -> int:
    kind, lps_args, settings = parse_args(argv)
    return launch(kind, lps_args, settings)
