"""unlearn: backdoored model + clean defense data -> unlearned model."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..defense import unlearn
from ..io import StageWriter, csv_bytes, json_bytes
from ..metrics import accuracy, attack_metrics
from ..models import load_model, model_bytes
from ..training import seeded_generator
from ._common import load_imageset, progress, resolve_compute, say, seed_everything

__all__ = ["run"]


def run(cfg: Config, poison_dir: Path, train_dir: Path, out: Path) -> dict:
    defense_set, info, _ = load_imageset(poison_dir / "defense.safetensors")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    model, spec, _ = load_model(train_dir / "model.safetensors", hint=" (run the train stage first: dvc repro train)")
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)
    compute.place(model)
    defense, test, triggered = info.to_device(defense_set, compute), info.to_device(test_set, compute), info.to_device(trig_set, compute)

    history = []
    bar = progress(None, "unlearn", total=cfg.unlearn.max_epochs)

    def report(epoch, stats, m):  # test metrics are for the history only; unlearning never sees them
        history.append({"epoch": epoch, "loss": stats.loss, "defense_acc": stats.acc, "ca": accuracy(m, test),
                        **attack_metrics(m, triggered, extra["targets"])})
        bar.set_postfix(defense_acc=f"{stats.acc:.3f}")
        bar.update()

    start = time.perf_counter()
    unlearned, epochs = unlearn(model, defense, cfg.unlearn, cfg.augment, seeded_generator(cfg.seed), report)
    bar.close()
    seconds = time.perf_counter() - start
    last = history[-1]
    metrics = {
        "epochs": epochs,
        "defense_acc": last["defense_acc"],
        "reached_threshold": last["defense_acc"] <= cfg.unlearn.clean_threshold,
        "ca": last["ca"],
        "asr": last["asr"],
        "ra": last["ra"],
    }
    with StageWriter(out) as w:
        w.write("model.safetensors", model_bytes(unlearned, spec, {"params": cfg.to_dict(), "stage": "unlearn"}))
        w.write("history.csv", csv_bytes(history))
        w.write("metrics.json", json_bytes(metrics))
    stop = "reached" if metrics["reached_threshold"] else "did NOT reach"
    say(f"unlearn: {epochs} epochs ({seconds:.1f} s), defense accuracy {last['defense_acc']:.1%} ({stop} {cfg.unlearn.clean_threshold:.0%}) -> {out}")
    return metrics
