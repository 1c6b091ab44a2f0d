# 3. One generic training rule for every cell of every table and figure. The output path is the run
#    folder lps.trainer writes, named by the run id (see common.smk): method, dataset, seen-class
#    ratio, label ratio, freeze policy, overrides and seed are resolved into it, so a cell shared by
#    several tables is one job. `params.lps_args` is the run's complete scientific setting; launcher
#    and site settings travel as resources/config so that changing the executor reruns nothing.
#    python -m lps.launch submits it (none/local/slurm), waits, reattaches to a running job, and the
#    trainer resumes from the run's checkpoint.pt.


rule train:
    input:
        unpack(train_inputs),
    output:
        f"{RESULTS}/runs/{{run_id}}/result.parquet",
    log:
        f"{RESULTS}/logs/train/{{run_id}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run_id}}.tsv"
    params:
        kind="train",
        lps_args=lambda wc: _run(wc)["args"],
    threads: LAUNCH_THREADS
    resources:
        **launch_resources("train"),
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/launch.py"
