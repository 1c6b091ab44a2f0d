"""Run one training or pretraining job through `python -m lps.launch` (the project's only launcher).

The job's scientific settings are ``params.lps_args``; the executor and SLURM settings are the rule's
resources (from the profile, LPS_* variables or --config); site settings (data folders) and the output
folder come from the config. Everything the launcher and the run print goes to the rule's log.
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

results = Path(cfg["results_dir"]).absolute()
executor = res.launch_executor
argv = [sm.params.kind, "--executor", executor, "--jobs-dir", str(results / "jobs"),
        "--time-min", str(res.launch_time_min)]
if executor == "slurm":
    argv += ["--partition", res.slurm_partition, "--account", res.slurm_account, "--gpus", str(res.slurm_gpus),
             "--cpus", str(res.slurm_cpus), "--mem-gb", str(res.slurm_mem_gb),
             "--max-timeouts", str(res.slurm_max_timeouts)]
    for opt in cfg.get("slurm_sbatch") or []:
        argv += ["--sbatch", opt]

site = [f"output_dir={results / 'runs'}", "train.progress=log"]
if cfg.get("data_dir"):
    site.append(f"data.data_dir={Path(cfg['data_dir']).absolute()}")
if cfg.get("imagenet_dir"):
    site.append(f"data.imagenet_dir={Path(cfg['imagenet_dir']).absolute()}")
site.append(f"data.num_workers={cfg['num_workers']}")
if executor != "slurm":
    site.append(f"train.threads={sm.threads}")
argv += ["--", *sm.params.lps_args, *site]

print("$ python -m lps.launch " + shlex.join(argv), flush=True)
from lps.launch import main  # noqa: E402

sys.exit(main(argv))
