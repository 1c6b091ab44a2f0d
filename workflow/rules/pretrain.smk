# 2. SimCLR pretraining, once per dataset and architecture (lps.identity.pretrain_dir): every run
#    whose resolved config has the same pretraining identity reads the same backbone.pt (its default
#    location, so no `pretrain.checkpoint=` override is needed). Launched like training.


rule pretrain:
    input:
        data=lambda wc: ancient(data_manifest(PRETRAIN[wc.pretrain_id]["dataset"])),
    output:
        f"{RESULTS}/pretrain/{{pretrain_id}}/backbone.pt",
    log:
        f"{RESULTS}/logs/pretrain/{{pretrain_id}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{pretrain_id}}.tsv"
    params:
        kind="pretrain",
        lps_args=lambda wc: PRETRAIN[wc.pretrain_id]["args"],
    threads: PRETRAIN_THREADS
    resources:
        **launch_resources("pretrain"),
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/launch.py"
