# Reproduces the tables and figures of the LPS paper (Ye et al., open-world semi-supervised
# learning) with the `lps` package. Experiment sets: workflow/config/{paper,demo}.yaml; profiles:
# profiles/local (demo set, this machine) and profiles/slurm (paper set, one SLURM job per run).
#
#   snakemake --profile profiles/local          # CPU demo on Fashion-MNIST, tables + figures + report
#   snakemake -n --profile profiles/slurm       # plan of the full paper set
#
# Config validation and the run table: workflow/rules/common.smk.


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


wildcard_constraints:
    run_id=r"[A-Za-z0-9_.=-]+",
    pretrain_id=r"simclr-[A-Za-z0-9_.-]+",
    dataset="|".join(CONFIG["datasets"]),
    table="|".join(TABLE_SPECS),
    fig="|".join(f for f in FIGURE_NAMES if FIGURES.get(f)),


rule all:
    default_target: True
    input:
        all_targets(),
