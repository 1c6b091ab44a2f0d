"""The launcher's settings: one dataclass, the only place their defaults are written.

``python -m lps.launch`` builds it from its options (whose defaults are these), the workflow from the
rule's resources (``workflow/scripts/launch.py``), and ``workflow/rules/common.smk`` fills the
experiment-set keys it does not set (``launch_time_min``, ``slurm_*``) from it
(:meth:`LaunchSettings.workflow_defaults`), so the schema, the profiles and the CLI cannot disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lps.errors import LPSError

# experiment-set key -> LaunchSettings field
WORKFLOW_KEYS = {
    "launch_executor": "executor", "launch_time_min": "time_min", "slurm_partition": "partition",
    "slurm_account": "account", "slurm_gpus": "gpus", "slurm_cpus": "cpus", "slurm_mem_gb": "mem_gb",
    "slurm_max_timeouts": "max_timeouts", "slurm_sbatch": "sbatch",
}


@dataclass
class LaunchSettings:
    executor: str = "none"  # none: in this process; local: a submitit subprocess; slurm: one SLURM job
    jobs_dir: str = "results/jobs"  # job records, locks and submitit folders (logs, pickles); shared FS
    partition: str = ""  # "" = the cluster's default partition
    account: str = ""
    gpus: int = 1  # GPUs per job (--gpus-per-node); 0 for none
    cpus: int = 8  # CPUs per task
    mem_gb: float = 48  # memory per job in GB: ImageNet-100 / ResNet-50 with 8 loader workers
    time_min: int = 720  # time limit of one attempt; a longer run is requeued and resumes from its checkpoint
    max_timeouts: int = 20  # how often a job that reaches its time limit is requeued before it fails
    signal_delay_s: int = 0  # USR2 this many seconds before the time limit (0: automatic, 15..90 s)
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options KEY=VALUE, e.g. qos=high
    poll_s: float = 30  # seconds between SLURM state queries
    grace_s: float = 60  # how long a job that ended COMPLETED, or is unknown to SLURM, may lack its result
    #                      pickle before it is reported failed (failed states: at most 10 s)
    unreachable_s: float = 900  # give up after SLURM has not answered for this long (the job keeps running)
    submit_retries: int = 4  # sbatch attempts after a transient failure (slurmctld busy or unreachable)
    submit_backoff_s: float = 10  # wait before the first retry; doubled after each

    def __post_init__(self) -> None:
        self.sbatch = list(self.sbatch or [])
        self.partition = self.partition or ""
        self.account = self.account or ""
        if self.executor not in ("none", "local", "slurm"):
            raise LPSError(f"launch executor must be none, local or slurm, got {self.executor!r}")
        for name, lo in (("gpus", 0), ("cpus", 1), ("time_min", 1), ("max_timeouts", 0), ("signal_delay_s", 0),
                         ("submit_retries", 0)):
            if getattr(self, name) < lo:
                raise LPSError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(self, name)}")
        if self.mem_gb <= 0 or self.poll_s <= 0 or self.grace_s < 0 or self.unreachable_s <= 0 or \
                self.submit_backoff_s < 0:
            raise LPSError("--mem-gb, --poll-s and --unreachable-s must be > 0, --grace-s and "
                           "--submit-backoff-s >= 0")
        for kv in self.sbatch:
            k, sep, _ = kv.partition("=")
            if not sep or not k:
                raise LPSError(f"--sbatch {kv!r}: expected KEY=VALUE (e.g. --sbatch qos=high)")

    @classmethod
    def workflow_defaults(cls) -> dict:
        """The experiment-set keys of the launcher with their defaults (``launch_time_min: 720``, ...)."""
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(cls)}
        return {key: defaults[name] for key, name in WORKFLOW_KEYS.items()}

    def to_record(self) -> dict:
        return dataclasses.asdict(self)
