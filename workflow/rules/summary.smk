# The paper-style table and figure over every cell.

from rnp.grid import summary_csv, summary_markdown, summary_png, summary_rows
from rnp.io import atomic_write_bytes


rule summary:
    input:
        expand(RESULTS + "/{cell}/prune/metrics.json", cell=[c.defense_dir for c in GRID]),
        expand(RESULTS + "/{cell}/unlearn/metrics.json", cell=[c.defense_dir for c in GRID]),
    output:
        csv=report(RESULTS + "/summary.csv", caption="../report/summary.rst", category="Summary"),
        md=RESULTS + "/summary.md",
        png=report(RESULTS + "/summary.png", caption="../report/figure.rst", category="Summary"),
    localrule: True
    run:
        rows = summary_rows(Path(RESULTS), GRID, Path(BENCH))
        atomic_write_bytes(output.csv, summary_csv(rows))
        atomic_write_bytes(output.md, summary_markdown(rows).encode())
        atomic_write_bytes(output.png, summary_png(rows))
        print(f"summary: {len(rows)} cells -> {output.md}")
