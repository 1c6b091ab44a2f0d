# 6. Figures (lps.figures.FIGURES; PNG for the report, PDF for print): fig2, fig4, fig5, fig6, each
#    drawn from the runs of its own cells (`figures:` in the experiment set). A new kind of figure is
#    one entry of lps.figures.FIGURES: its draw function, the cells it needs and its caption.


rule figure:
    input:
        lambda wc: needs(study_results(wc.fig)),
    output:
        png=report(
            f"{AGG}/figures/{{fig}}.png",
            category="Figures",
            caption="../report/figure.rst",
            labels={"figure": "{fig}"},
        ),
        pdf=f"{AGG}/figures/{{fig}}.pdf",
    log:
        f"{AGG}/logs/figures/{{fig}}.log",
    benchmark:
        f"{AGG}/benchmarks/figures/{{fig}}.tsv"
    params:
        results=lambda wc: study_results(wc.fig),
        name=lambda wc: wc.fig,
        spec=lambda wc: FIGURES[wc.fig],
        cells=lambda wc: STUDY_CELLS[wc.fig],
        caption=lambda wc: FIGURE_KINDS[wc.fig].caption,
    threads: CONFIG["local_threads"]
    localrule: True
    conda:
        "../envs/lps.yaml"
    script:
        "../scripts/make_figure.py"
