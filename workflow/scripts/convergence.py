"""Flag runs that have not converged: acc_all over the last 20 % of epochs moves by >= 1.5 points."""

import sys

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)

import pandas as pd  # noqa: E402

from lps.tables import convergence, convergence_markdown  # noqa: E402
from lps.utils import atomic_write, atomic_write_text  # noqa: E402

conv = convergence(pd.read_parquet(sm.input[0]))
atomic_write(sm.output.parquet, lambda tmp: conv.to_parquet(tmp, index=False))
atomic_write_text(sm.output.md, convergence_markdown(conv))
bad = conv[conv["converged"] == False]  # noqa: E712
print(f"{len(conv)} runs, {len(bad)} not converged" + (": " + ", ".join(bad["run_id"]) if len(bad) else ""))
