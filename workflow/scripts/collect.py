"""Concatenate every run of the set: runs.parquet (lps.results.RESULT_SCHEMA) and epochs.parquet."""

import sys

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # messages and tracebacks go to the rule's log

import lps  # noqa: E402,F401
from lps.errors import LPSError  # noqa: E402
from lps.tables import collect_epochs, collect_runs  # noqa: E402

try:
    runs = collect_runs(sm.params.results)
    epochs = collect_epochs(sm.params.results)
except LPSError as e:
    print(f"collect: {e}")
    sys.exit(1)
runs.to_parquet(sm.output.runs, index=False)
epochs.to_parquet(sm.output.epochs, index=False)
print(f"{len(runs)} runs -> {sm.output.runs}; {len(epochs)} epoch rows -> {sm.output.epochs}")
