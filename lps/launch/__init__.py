"""Run one training or pretraining job through submitit and wait for its result (the behaviour, SLURM
requeue, reattach and never-hang rules are in :mod:`lps.launch.cli`'s docstring, which is also
``python -m lps.launch --help``).

Modules: ``settings`` (:class:`LaunchSettings`, every default once), ``job`` (the submitit callable and
the run's expected output), ``slurm_state`` (scontrol / sacct / squeue), ``slurm`` (submit, reattach,
wait; the local executor), ``diagnosis`` (a failed job's message), ``records`` (job records, locks,
result pickles), ``cli`` (options -> settings -> :func:`launch`).
"""

from lps.launch.cli import launch, main
from lps.launch.settings import LaunchSettings

__all__ = ["LaunchSettings", "launch", "main"]
