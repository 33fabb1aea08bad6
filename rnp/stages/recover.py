"""recover: unlearned model + clean defense data -> one [0, 1] mask per BN (or norm / conv) channel."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import Config
from ..defense import mask_layers, recover_step
from ..defense.recover import MASK_ON, zero_masks_warning
from ..errors import RnpError
from ..io import StageWriter, csv_bytes, json_bytes, tensors_bytes
from ..models import load_model
from ..plots import masks_png
from ._runtime import load_imageset, progress, resolve_compute, say, seed_everything

__all__ = ["run"]


def run(cfg: Config, poison_dir: Path, unlearn_dir: Path, out: Path) -> dict:
    defense_set, info, _ = load_imageset(poison_dir / "defense.safetensors")
    unlearned, spec, meta = load_model(unlearn_dir / "model.safetensors", hint=" (run the unlearn stage first: dvc repro unlearn)")
    if not mask_layers(unlearned, cfg.recover.mask_on):
        raise RnpError(f"recover.mask_on {cfg.recover.mask_on}: {spec.arch} has no such layer to mask (use one of {', '.join(MASK_ON)})")
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)
    compute.place(unlearned)
    defense = info.to_device(defense_set, compute)

    history = []
    bar = progress(None, "recover", total=cfg.recover.epochs)

    def report(epoch, stats, masks):
        flat = torch.cat([m.flatten() for m in masks.values()])
        zero = int((flat == 0).sum())
        history.append({"epoch": epoch, "loss": stats.loss, "defense_acc": stats.acc, "mean_mask": flat.mean().item(), "zero_masks": zero})
        bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        bar.update()

    start = time.perf_counter()
    masks, kind = recover_step(unlearned, defense, cfg, report)
    bar.close()
    seconds = time.perf_counter() - start
    flat = torch.cat([m.flatten() for m in masks.values()]).cpu()
    rows = [{"layer": name, "channel": c, "mask": v} for name, m in masks.items() for c, v in enumerate(m.cpu().tolist())]
    metrics = {
        "layers": len(masks),
        "channels": flat.numel(),
        "mean_mask": flat.mean().item(),
        "zero_masks": int((flat == 0).sum()),
        "masks_below_0_2": int((flat <= 0.2).sum()),
        "defense_acc": history[-1]["defense_acc"],
    }
    with StageWriter(out) as w:
        # the unlearned model's detection travels with the masks to the prune stage, which acts on both
        w.write("masks.safetensors", tensors_bytes(masks, {"model": spec.__dict__, "stage": "recover", "mask_on": kind,
                                                           "detection": meta.get("detection")}))
        w.write("masks.csv", csv_bytes(rows))
        w.write("masks.png", masks_png(masks))
        w.write("history.csv", csv_bytes(history))
        w.write("metrics.json", json_bytes(metrics))
    say(f"recover: {metrics['channels']} masks over {metrics['layers']} {kind} layers ({seconds:.1f} s), "
        f"{metrics['zero_masks']} at 0, {metrics['masks_below_0_2']} <= 0.2 -> {out}")
    warning = zero_masks_warning(metrics["zero_masks"], metrics["channels"])
    if warning:
        say(f"recover: WARNING: {warning}")
    return metrics
