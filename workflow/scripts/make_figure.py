"""One figure of the set (lps.figures.FIGURES[name]) from the runs of its cells, as PNG and PDF."""

import sys

sm = snakemake  # noqa: F821  (injected by snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # messages and tracebacks go to the rule's log

import lps  # noqa: E402,F401
from lps.figures import make_figure  # noqa: E402

make_figure(sm.params.name, sm.params.spec, sm.params.cells, sm.params.results, png=sm.output.png, pdf=sm.output.pdf,
            log=sys.stdout, threads=sm.threads)
