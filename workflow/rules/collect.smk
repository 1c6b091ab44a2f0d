# 4. Collection: every run of the set into two tidy files.
#    runs.parquet   one row per run, schema lps.results.RESULT_SCHEMA
#    epochs.parquet one row per run and epoch (metrics.jsonl), with the run's coordinates


rule collect:
    input:
        needs(all_results()),
    output:
        runs=f"{AGG}/runs.parquet",
        epochs=f"{AGG}/epochs.parquet",
    log:
        f"{AGG}/logs/collect.log",
    benchmark:
        f"{AGG}/benchmarks/collect.tsv"
    params:
        results=all_results(),
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/collect.py"


rule run_counts:
    output:
        report(
            f"{AGG}/run_counts.md",
            category="Run counts",
            caption="../report/run_counts.rst",
        ),
    log:
        f"{AGG}/logs/run_counts.log",
    benchmark:
        f"{AGG}/benchmarks/run_counts.tsv"
    params:
        text=run_counts_markdown(PLAN),
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/write_text.py"


rule convergence:
    input:
        f"{AGG}/epochs.parquet",
    output:
        parquet=f"{AGG}/convergence.parquet",
        md=report(
            f"{AGG}/convergence.md",
            category="Convergence",
            caption="../report/convergence.rst",
        ),
    log:
        f"{AGG}/logs/convergence.log",
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/convergence.py"


rule spent:
    input:
        f"{AGG}/runs.parquet",
    output:
        report(
            f"{AGG}/spent.md",
            category="Run counts",
            caption="../report/spent.rst",
        ),
    log:
        f"{AGG}/logs/spent.log",
    params:
        study_runs={s: sorted({c["run_id"] for c in cells}) for s, cells in STUDY_CELLS.items()},
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/spent.py"
