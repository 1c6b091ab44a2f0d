# 1. Data preparation: load each dataset once where snakemake runs (downloads CIFAR through
#    torchvision when missing, checks an ImageNet folder) and record what was found. Compute nodes
#    then only read files that exist. Site settings (data_dir, imagenet_dir) come from the config.


rule prepare_data:
    output:
        f"{RESULTS}/data/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_data/{{dataset}}.tsv"
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/prepare_data.py"
