# 4. Collection: every run of the set into two tidy files.
#    runs.parquet   one row per run, schema lps.results.RESULT_SCHEMA
#    epochs.parquet one row per run and epoch (metrics.jsonl), with the run's coordinates


rule collect:
    input:
        all_results(),
    output:
        runs=f"{RESULTS}/runs.parquet",
        epochs=f"{RESULTS}/epochs.parquet",
    log:
        f"{RESULTS}/logs/collect.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect.tsv"
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/collect.py"


rule run_counts:
    output:
        report(
            f"{RESULTS}/run_counts.md",
            category="Run counts",
            caption="../report/run_counts.rst",
        ),
    log:
        f"{RESULTS}/logs/run_counts.log",
    benchmark:
        f"{RESULTS}/benchmarks/run_counts.tsv"
    params:
        text=run_counts_markdown(PLAN),
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/write_text.py"


rule convergence:
    input:
        f"{RESULTS}/epochs.parquet",
    output:
        parquet=f"{RESULTS}/convergence.parquet",
        md=report(
            f"{RESULTS}/convergence.md",
            category="Convergence",
            caption="../report/convergence.rst",
        ),
    log:
        f"{RESULTS}/logs/convergence.log",
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/convergence.py"
