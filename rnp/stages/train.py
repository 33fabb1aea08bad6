"""train: poisoned training set -> backdoored model."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..io import StageWriter, csv_bytes, json_bytes
from ..metrics import accuracy, attack_metrics
from ..models import create_model, model_bytes
from ..training import fit, seeded_generator
from ._runtime import load_imageset, progress, resolve_compute, say, seed_everything

__all__ = ["run"]


def run(cfg: Config, poison_dir: Path, out: Path) -> dict:
    train_set, info, _ = load_imageset(poison_dir / "train.safetensors", "poisoned")
    test_set, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig_set, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    compute = resolve_compute(cfg.device, cfg.precision)
    seed_everything(cfg.seed)
    spec = info.model_spec(cfg.model.arch)
    model = compute.place(create_model(spec))
    train, test, triggered = info.to_device(train_set, compute), info.to_device(test_set, compute), info.to_device(trig_set, compute)

    p = cfg.train
    history, start = [], time.perf_counter()
    bar = progress(None, "train", total=p.epochs)

    def report(epoch, stats):  # test metrics are for the history only
        row = {"epoch": epoch, "loss": stats.loss, "train_acc": stats.acc, "ca": accuracy(model, test),
               **attack_metrics(model, triggered, extra["targets"])}
        history.append(row)
        bar.set_postfix(loss=f"{stats.loss:.3f}", ca=f"{row['ca']:.3f}", asr=f"{row['asr']:.3f}")
        bar.update()

    fit(model, train, p, cfg.augment, seeded_generator(cfg.seed), report)
    bar.close()
    seconds = time.perf_counter() - start

    last = history[-1]
    metrics = {"ca": last["ca"], "asr": last["asr"], "ra": last["ra"], "train_acc": last["train_acc"]}
    with StageWriter(out) as w:
        w.write("model.safetensors", model_bytes(model, spec, {"params": cfg.to_dict(), "stage": "train"}))
        w.write("history.csv", csv_bytes(history))
        w.write("metrics.json", json_bytes(metrics))
    say(f"train: {spec.arch} backdoored in {p.epochs} epochs ({seconds:.1f} s): CA {last['ca']:.1%}, ASR {last['asr']:.1%} -> {out}")
    return metrics
