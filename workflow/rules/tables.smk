# 5. One aggregation path for every table: the runs of its cells -> mean ± std over seeds, the
#    paper's value (lps/data/paper_tables.csv) and the difference beside each cell, in the paper's
#    layout (lps.tables). A table depends on its own runs only, so a rerun of one run rebuilds the
#    tables that contain it.


rule table:
    input:
        lambda wc: needs(study_results(wc.table)),
    output:
        parquet=f"{AGG}/tables/{{table}}.parquet",
        csv=report(
            f"{AGG}/tables/{{table}}.csv",
            category="Tables",
            subcategory="{table}",
            caption="../report/table.rst",
            labels={"table": "{table}", "format": "csv"},
        ),
        md=report(
            f"{AGG}/tables/{{table}}.md",
            category="Tables",
            subcategory="{table}",
            caption="../report/table.rst",
            labels={"table": "{table}", "format": "markdown"},
        ),
    log:
        f"{AGG}/logs/tables/{{table}}.log",
    benchmark:
        f"{AGG}/benchmarks/tables/{{table}}.tsv"
    params:
        results=lambda wc: study_results(wc.table),
        spec=lambda wc: TABLE_SPECS[wc.table],
        cells=lambda wc: STUDY_CELLS[wc.table],
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/make_table.py"
