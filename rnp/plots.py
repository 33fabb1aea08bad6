"""PNG figures a person would rather see than read (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["trigger_png", "masks_png", "curve_png", "bars_png", "png", "SERIES"]


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _show(ax, img: torch.Tensor) -> None:
    img = img.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def trigger_png(clean: torch.Tensor, triggered: torch.Tensor, labels: list[str], title: str) -> bytes:
    """Two rows: clean images above, the same images with the trigger below."""
    n = clean.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), squeeze=False)
    for i in range(n):
        _show(axes[0, i], clean[i])
        _show(axes[1, i], triggered[i])
        axes[1, i].set_xlabel(labels[i], fontsize=7)
    axes[0, 0].set_ylabel("clean")
    axes[1, 0].set_ylabel("triggered")
    fig.suptitle(title, fontsize=9)
    return png(fig)


def masks_png(masks: dict[str, torch.Tensor], threshold: float | None = None) -> bytes:
    """Mask values per BN layer, in model order: low values show where the backdoor lives."""
    names = list(masks)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 3.6))
    for i, name in enumerate(names):
        values = masks[name].float().cpu()
        jitter = (torch.rand(values.numel(), generator=torch.Generator().manual_seed(i)) - 0.5) * 0.6
        ax.scatter(i + jitter, values, s=6, alpha=0.6, color="tab:blue")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", lw=1, ls="--", label=f"t = {threshold:.2f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("mask value")
    ax.set_title("RNP channel masks per BatchNorm layer", fontsize=9)
    return png(fig)


SERIES = {  # curve column -> (legend label, style); a curve draws the columns it has
    "ca": ("test clean accuracy (CA)", "o-"),
    "asr": ("attack success rate (ASR)", "s-"),
    "holdout_acc": ("held-out clean accuracy (chooses t)", "^:"),
}


def curve_png(rows: list[dict], x: str, selected: int | None, oracle: int | None = None, before: dict | None = None) -> bytes:
    """The pruning sweep: every measured column, the unpruned model left of the first point, the chosen and oracle points."""
    xs = [r[x] for r in rows]
    step = (xs[1] - xs[0]) if len(xs) > 1 and xs[1] != xs[0] else 1.0
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, (label, style) in SERIES.items():
        if key not in rows[0]:
            continue
        line, = ax.plot(xs, [100 * r[key] for r in rows], style, ms=3, label=label)
        if before is not None and key in before:
            ax.plot([xs[0] - step], [100 * before[key]], style[0], ms=6, mfc="none", color=line.get_color())
    if before is not None:
        ax.axvline(xs[0] - step, color="0.8", lw=0.8)
        ax.annotate("unpruned", (xs[0] - step, 101), fontsize=6, ha="center", va="bottom")
    if selected is None:
        ax.plot([], [], color="tab:green", label="selected: nothing pruned")
    else:
        ax.axvline(xs[selected], color="tab:green", lw=1.2, label=f"selected {x}={xs[selected]:g}")
    if oracle is not None:
        ax.axvline(xs[oracle], color="tab:red", lw=1, ls="--", label=f"oracle {x}={xs[oracle]:g} (test labels)")
    ax.set_xlabel("mask threshold" if x == "threshold" else "channels pruned")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 108)
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("RNP pruning sweep", fontsize=9)
    return png(fig)


def bars_png(groups: list[str], series: dict[str, list[float]], title: str) -> bytes:
    """Grouped bars: one group per name, one bar per series."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 3.6))
    width = 0.8 / len(series)
    colours = ["tab:blue", "tab:cyan", "tab:red", "tab:orange", "tab:green", "tab:grey", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for i, (label, values) in enumerate(series.items()):
        ax.bar([g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))], values, width, label=label, color=colours[i % 10])
    ax.set_xticks(range(len(groups)), groups, rotation=30, fontsize=8)
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncols=min(len(series), 4))
    ax.set_title(title, fontsize=9)
    return png(fig)
