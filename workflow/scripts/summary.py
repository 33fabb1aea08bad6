"""Snakemake script of rule summary: results/summary.{csv,md,png} from every cell's metrics."""

import sys
from pathlib import Path

from rnp.grid import check_grid, summary_markdown, summary_png, summary_rows
from rnp.io import atomic_write_bytes, csv_bytes

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with open(snakemake.log[0], "w") as log:
    results = Path(snakemake.config["results"])
    rows = summary_rows(results, check_grid(snakemake.config), results / "benchmarks")
    atomic_write_bytes(snakemake.output.csv, csv_bytes(rows))
    atomic_write_bytes(snakemake.output.md, summary_markdown(rows).encode())
    atomic_write_bytes(snakemake.output.png, summary_png(rows))
    for out in (log, sys.stdout):
        print(f"summary: {len(rows)} cells -> {snakemake.output.md}", file=out)
