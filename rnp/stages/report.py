"""report: the one table a person wants from a pipeline run (`dvc metrics show` prints every key of every file)."""

from __future__ import annotations

from pathlib import Path

from ..errors import RnpError
from ..io import read_json

__all__ = ["run", "table"]


def _pct(v) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else ""


def table(m: dict[str, dict], markdown: bool = False) -> str:
    """One row per model the pipeline made: CA, ASR, RA, and what the stage did."""
    train, unlearn, recover, prune = (m.get(s, {}) for s in ("train", "unlearn", "recover", "prune"))
    rows = [("model", "CA", "ASR", "RA", "how")]
    if train:
        rows.append(("backdoored (train)", _pct(train["ca"]), _pct(train["asr"]), _pct(train["ra"]), ""))
    if unlearn:
        reached = "reached" if unlearn["reached_threshold"] else "did NOT reach"
        rows.append(("unlearned", _pct(unlearn["ca"]), _pct(unlearn["asr"]), _pct(unlearn["ra"]),
                     f"{unlearn['epochs']} epochs, defense accuracy {_pct(unlearn['defense_acc'])} ({reached} the threshold)"))
    if recover:
        rows.append(("masks (recover)", "", "", "", f"{recover['channels']} channels in {recover['layers']} layers, "
                     f"{recover['zero_masks']} at 0, mean {recover['mean_mask']:.2f}"))
    if prune:
        how = ("nothing pruned" if prune["threshold"] is None else f"threshold {prune['threshold']:g}, {prune['pruned']} channels pruned")
        rows.append(("purified (prune)", _pct(prune["ca"]), _pct(prune["asr"]), _pct(prune["ra"]), f"{how}; DER {prune['der']:.3f}"))
        rows.append(("oracle (test labels)", _pct(prune["oracle_ca"]), _pct(prune["oracle_asr"]), "",
                     f"threshold {prune['oracle_threshold']:g}, {prune['oracle_pruned']} channels; for reporting only"))
        if prune.get("asr_bias_refit") is not None:
            rows.append(("purified, classifier biases refitted", _pct(prune["ca_bias_refit"]), _pct(prune["asr_bias_refit"]), "",
                         "a check: does the backdoor come back when only the class biases are refitted on the clean images?"))
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join([lines[0], "|---|---:|---:|---:|---|", *lines[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows)


def run(data: Path, markdown: bool = False) -> str:
    found = {s: read_json(data / s / "metrics.json") for s in ("train", "unlearn", "recover", "prune") if (data / s / "metrics.json").exists()}
    if not found:
        raise RnpError(f"no stage metrics under {data} (run the pipeline first: dvc repro)")
    text = table(found, markdown)
    print(text)
    return text
