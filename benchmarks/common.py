"""What several benchmarks share: the docs' marked sections, the CPU's name, and their plots (not rnp's: no stage draws them)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt

from rnp.plots import SERIES, png

__all__ = ["write_marked", "cpu_name", "sweeps_png", "scatter_png"]


def write_marked(table: str, readme: Path, marker: str = "effectiveness") -> None:
    """Replace the text between <!-- marker:start --> and <!-- marker:end --> in a docs page (or the README)."""
    text = readme.read_text()
    pattern = rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)"
    new, n = re.subn(pattern, lambda m: m[1] + table + "\n" + m[2], text, flags=re.S)
    if n != 1:
        raise SystemExit(f"{readme} has no <!-- {marker}:start/end --> markers")
    readme.write_text(new)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def sweeps_png(panels: dict[str, list[dict]], columns: int = 2) -> bytes:
    """Threshold sweeps side by side, one panel per title: CA, ASR and held-out accuracy against t."""
    rows_n = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.3 * rows_n), squeeze=False, sharey=True)
    for ax, (title, rows) in zip(axes.flat, panels.items()):
        for key, (label, style) in SERIES.items():
            if key in rows[0]:
                ax.plot([r["threshold"] for r in rows], [100 * r[key] for r in rows], style, ms=3, label=label)
        ax.set_title(title, fontsize=8)
        ax.set_ylim(-2, 104)
        ax.set_xlabel("mask threshold", fontsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("%")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return png(fig)


def scatter_png(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
                vline: float | None = None, logx: list[float] | None = None) -> bytes:
    """Points (x, y) of each named series, an optional dashed vertical line at x = vline; logx: a log x axis with these ticks."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = ["tab:green", "tab:orange", "tab:red", "tab:grey"]
    for i, (label, points) in enumerate(series.items()):
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=18, alpha=0.8, label=f"{label} ({len(points)})", color=colours[i % 4])
    if vline is not None:
        ax.axvline(vline, color="black", linestyle="--", linewidth=1)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(logx, [f"{v:g}" for v in logx])
        ax.minorticks_off()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return png(fig)
