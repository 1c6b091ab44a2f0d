"""Device-hours spent per table and figure (lps.status.spent_markdown) from runs.parquet."""

import sys

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)

import pandas as pd  # noqa: E402

from lps.status import spent_markdown  # noqa: E402
from lps.utils import atomic_write_text  # noqa: E402

atomic_write_text(sm.output[0], spent_markdown(pd.read_parquet(sm.input[0]), sm.params.study_runs))
