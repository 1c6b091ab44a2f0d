"""Run one training or pretraining job through lps.launch (the project's only launcher).

The job's scientific settings are ``params.lps_args``; the executor and SLURM settings are the rule's
resources (from the profile, LPS_* variables, --config or --set-resources), turned into one
``lps.launch.LaunchSettings``; site settings (data folders) and the output folder come from the config.
Everything the launcher and the run print goes to the rule's log.
"""

import os
import shlex
import sys
from pathlib import Path

sm = snakemake  # noqa: F821  (injected by snakemake)
cfg, res = sm.config, sm.resources

log_fd = os.open(sm.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
sys.stdout.flush()
sys.stderr.flush()
os.dup2(log_fd, 1)
os.dup2(log_fd, 2)
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)

from lps.errors import LPSError  # noqa: E402
from lps.launch import LaunchSettings, launch  # noqa: E402

results = Path(cfg["results_dir"]).absolute()
try:
    settings = LaunchSettings(
        executor=res.launch_executor, jobs_dir=str(results / "jobs"), time_min=int(res.launch_time_min),
        partition=res.slurm_partition, account=res.slurm_account, gpus=int(res.slurm_gpus),
        cpus=int(res.slurm_cpus), mem_gb=float(res.slurm_mem_gb), max_timeouts=int(res.slurm_max_timeouts),
        sbatch=list(cfg.get("slurm_sbatch") or []))
except LPSError as e:
    print(f"lps.launch: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)

site = [f"output_dir={results / 'runs'}", "train.progress=log"]
if cfg.get("data_dir"):
    site.append(f"data.data_dir={Path(cfg['data_dir']).absolute()}")
if cfg.get("imagenet_dir"):
    site.append(f"data.imagenet_dir={Path(cfg['imagenet_dir']).absolute()}")
site.append(f"data.num_workers={cfg['num_workers']}")
if settings.executor != "slurm":
    site.append(f"train.threads={sm.threads}")
lps_args = [*sm.params.lps_args, *site]

print(f"[lps.launch] {sm.params.kind} with {settings}", flush=True)
print("[lps.launch] lps args: " + shlex.join(lps_args), flush=True)
# the planner named the output (lps.plan); the launcher does not resolve the config again
sys.exit(launch(sm.params.kind, lps_args, settings, output=Path(sm.output[0])))
