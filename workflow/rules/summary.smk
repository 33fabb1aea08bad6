# The paper-style table and figure over every cell.


rule summary:
    input:
        get_summary_inputs(),
    output:
        csv=report(f"{RESULTS}/summary.csv", caption="../report/summary.rst", category="Summary"),
        md=f"{RESULTS}/summary.md",
        png=report(f"{RESULTS}/summary.png", caption="../report/figure.rst", category="Summary"),
    log:
        f"{RESULTS}/summary.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/summary.py"
