"""One table of the set: lps.tables.build_table on the table's runs, written as Parquet, CSV, Markdown."""

import sys

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # messages and tracebacks go to the rule's log

import lps  # noqa: E402,F401
from lps.tables import build_table, collect_runs, write_table  # noqa: E402

runs = collect_runs(sm.params.results)
table = build_table(runs, sm.params.cells, sm.params.spec)
write_table(table, parquet=sm.output.parquet, csv=sm.output.csv, md=sm.output.md)
print(table.markdown)
