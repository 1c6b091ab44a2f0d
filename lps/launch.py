"""Run one training or pretraining job through submitit and wait for its result.

This is the only place that submits jobs. The workflow's rules call::

    python -m lps.launch {train|pretrain} --executor {none,local,slurm} [slurm options] -- [lps args]

``lps args`` are what ``lps train``/``lps pretrain`` take (``-c FILE``, ``key=value``). The command exits 0
once the run's output exists, and non-zero with a message naming the run, the job id and its log
otherwise. ``--executor none`` runs in this process (no submitit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lps.errors import LPSError


class Job:
    """A picklable submitit callable; ``checkpoint()`` requeues it on preemption or timeout, and the
    requeued job resumes from the run's ``checkpoint.pt``."""

    def __init__(self, kind: str, lps_args: list[str]):
        self.kind, self.lps_args = kind, list(lps_args)

    def __call__(self) -> str:
        cfg = build(self.lps_args)
        if self.kind == "pretrain":
            from lps.pretrain import pretrain

            return str(pretrain(cfg))
        from lps.trainer import train

        return train(cfg)["run_id"]

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(Job(self.kind, self.lps_args))


def build(lps_args: list[str]):
    from lps.config import build_config

    files, overrides, it = [], [], iter(lps_args)
    for a in it:
        if a in ("-c", "--config"):
            files.append(next(it))
        else:
            overrides.append(a)
    return build_config(files, overrides)


def expected_output(kind: str, lps_args: list[str]) -> Path:
    cfg = build(lps_args)
    if kind == "pretrain":
        from lps.pretrain import pretrain_dir

        return pretrain_dir(cfg) / "backbone.pt"
    from lps.trainer import run_id

    return Path(cfg.output_dir) / run_id(cfg) / "result.parquet"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lps.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["train", "pretrain"])
    p.add_argument("--executor", choices=["none", "local", "slurm"], default="none")
    p.add_argument("--jobs-dir", default="results/jobs", help="submitit folder (logs, pickles)")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--cpus", type=int, default=8)
    p.add_argument("--mem-gb", type=int, default=32)
    p.add_argument("--time-min", type=int, default=600)
    p.add_argument("--max-timeouts", type=int, default=3)
    p.add_argument("lps_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    lps_args = a.lps_args[1:] if a.lps_args[:1] == ["--"] else a.lps_args
    try:
        out = expected_output(a.kind, lps_args)
        if a.executor == "none":
            Job(a.kind, lps_args)()
        else:
            import submitit

            ex = submitit.AutoExecutor(folder=a.jobs_dir, cluster=a.executor, slurm_max_num_timeout=a.max_timeouts)
            params = {"timeout_min": a.time_min, "name": out.parent.name}
            if a.executor == "slurm":
                params.update(slurm_partition=a.partition or None, gpus_per_node=a.gpus, cpus_per_task=a.cpus,
                              mem_gb=a.mem_gb)
                if a.account:
                    params["slurm_account"] = a.account
            ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
            job = ex.submit(Job(a.kind, lps_args))
            print(f"[lps.launch] {out.parent.name}: submitted job {job.job_id} ({a.executor}); "
                  f"log {job.paths.stdout}", flush=True)
            try:
                job.result()
            except Exception as e:  # noqa: BLE001
                raise LPSError(f"{out.parent.name}: job {job.job_id} failed: {e}\n  log: {job.paths.stderr}") from None
        if not out.exists():
            raise LPSError(f"{a.kind} finished but {out} is missing")
        return 0
    except LPSError as e:
        print(f"lps.launch: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
