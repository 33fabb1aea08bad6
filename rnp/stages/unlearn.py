"""unlearn: backdoored model + clean defense data -> unlearned model, and what it says of a backdoor (detection)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import Config
from ..data import ImageSet
from ..defense import unlearn_step
from ..io import StageWriter, csv_bytes, json_bytes
from ..metrics import accuracy, attack_metrics
from ..models import load_model, model_bytes
from ._runtime import load_imageset, progress, resolve_compute, say, seed_everything

__all__ = ["run"]


def run(cfg: Config, poison_dir: Path, train_dir: Path, out: Path) -> dict:
    defense_set, info, _ = load_imageset(poison_dir / "defense.safetensors")
    holdout_set, _, _ = load_imageset(poison_dir / "holdout.safetensors")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    model, spec, _ = load_model(train_dir / "model.safetensors", hint=" (run the train stage first: dvc repro train)")
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)
    compute.place(model)
    defense, test, triggered = info.to_device(defense_set, compute), info.to_device(test_set, compute), info.to_device(trig_set, compute)
    # detection reads every clean image the defender holds, as `rnp defend` does
    every_set = ImageSet(torch.cat([defense_set.images, holdout_set.images]), torch.cat([defense_set.labels, holdout_set.labels]))
    every = info.to_device(every_set, compute)

    history = []
    bar = progress(None, "unlearn", total=cfg.unlearn.max_epochs)

    def report(epoch, stats, m):  # test metrics are for the history only; unlearning never sees them
        history.append({"epoch": epoch, "loss": stats.loss, "defense_acc": stats.acc, "ca": accuracy(m, test),
                        **attack_metrics(m, triggered, extra["targets"])})
        bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        bar.update()

    start = time.perf_counter()
    result = unlearn_step(model, defense, every, cfg, info.num_classes, report)
    bar.close()
    unlearned, epochs, detection = result.model, result.epochs, result.detection
    seconds = time.perf_counter() - start
    last = history[-1]
    metrics = {
        "epochs": epochs,
        "defense_acc": last["defense_acc"],
        "reached_threshold": last["defense_acc"] <= cfg.unlearn.clean_threshold,
        "ca": last["ca"],
        "asr": last["asr"],
        "ra": last["ra"],
        "backdoor_suspected": detection.backdoored,  # unlearn.detection's verdict; prune keeps the model whole without it
        "suspected_target": detection.target,
        "target_score": detection.score,
    }
    with StageWriter(out) as w:
        w.write("model.safetensors", model_bytes(unlearned, spec, {"params": cfg.to_dict(), "stage": "unlearn", "detection": asdict(detection)}))
        w.write("history.csv", csv_bytes(history))
        w.write("metrics.json", json_bytes(metrics))
    stop = "reached" if metrics["reached_threshold"] else "did NOT reach"
    said = f"backdoor suspected, target {detection.target} ({detection.score:.0%})" if detection.backdoored else "no evidence of a backdoor"
    say(f"unlearn: {epochs} epochs ({seconds:.1f} s), defense accuracy {last['defense_acc']:.1%} ({stop} {cfg.unlearn.clean_threshold:.0%}); "
        f"{said} ({cfg.unlearn.detection}) -> {out}")
    return metrics
