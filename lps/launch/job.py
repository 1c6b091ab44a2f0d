"""The submitit job: what runs on the compute node (or in this process), and which output it makes."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from lps.errors import LPSError

PREFIX = "[lps.launch]"


_SIGNALLED: list[float] = []  # times submitit's USR2 handler called Job.checkpoint in this process


TIMED_OUT_TOO_OFTEN = "timed-out too many times"



def say(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


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

