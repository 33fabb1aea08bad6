"""Speed: rnp's device-resident stages against a plain, reference-style baseline doing the same work.

    python -m benchmarks.speed --workload a        # default digits pipeline (small CNN)
    python -m benchmarks.speed --workload b        # digits32 with ResNet-18
    python -m benchmarks.speed --workload c        # synthetic CIFAR-10 shapes, ResNet-18 (for a GPU)
    python -m benchmarks.speed --workload tiny     # seconds: what the test suite runs
    --precision fp32,bf16                          # rnp once per precision (default both), the baseline in fp32

The baseline is written the way the reference implementation works: a torch
DataLoader over a per-sample dataset with torchvision transforms (PIL, crop,
ToTensor, Normalize), and a full evaluation of the clean and triggered test
sets after every epoch and at every sweep point (on a freshly loaded model copy).
Both sides do the same number of optimisation steps (early stopping off), so
the ratio measures the implementation, not the stopping rule.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from rnp.compute import Compute, native_cpu_bf16, resolve_compute
from rnp.config import AugmentParams, PruneParams, RecoverParams, TrainParams, UnlearnParams
from rnp.data import DeviceData, ImageSet
from rnp.defense import attach_masks, mask_layers, recover, unlearn
from rnp.defense.prune import pruning_sets, sweep_curve, sweep_points
from rnp.metrics import accuracy
from rnp.models import ModelSpec, create_model
from rnp.training import fit, seeded_generator

from .common import cpu_name, write_marked

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Workload:
    name: str
    arch: str
    shape: tuple[int, int, int]
    n_train: int
    n_defense: int
    n_test: int  # clean; the triggered set is 90 % of it
    train_epochs: int
    unlearn_epochs: int
    recover_epochs: int
    crop: int


WORKLOADS = {
    "tiny": Workload("tiny", "small_cnn", (1, 8, 8), 256, 64, 64, 1, 1, 1, 0),
    "a": Workload("a: digits, small CNN", "small_cnn", (1, 8, 8), 1336, 198, 359, 30, 8, 20, 0),
    "b": Workload("b: digits32, ResNet-18", "resnet18", (3, 32, 32), 1336, 198, 359, 1, 5, 5, 4),
    "c": Workload("c: CIFAR-10 shapes, ResNet-18", "resnet18", (3, 32, 32), 50_000, 500, 10_000, 1, 20, 20, 4),
}
MEAN, STD = 0.5, 0.25


def synthetic(w: Workload, n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 256, (n, *w.shape), generator=g, dtype=torch.uint8)
    images[:, :, :4, :4] = (labels * 25).view(-1, 1, 1, 1).to(torch.uint8)  # learnable signal
    return ImageSet(images, labels)


# --- the plain baseline ----------------------------------------------------------------


class PerSample(torch.utils.data.Dataset):
    def __init__(self, data: ImageSet, transform):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = self.data.images[i]
        pil = transforms.functional.to_pil_image(img[0] if img.shape[0] == 1 else img)
        return self.transform(pil), int(self.data.labels[i])


def baseline_loader(data: ImageSet, w: Workload, train: bool, batch: int) -> DataLoader:
    c = w.shape[0]
    steps = [transforms.RandomCrop(w.shape[1], padding=w.crop)] if train and w.crop else []
    steps += [transforms.ToTensor(), transforms.Normalize((MEAN,) * c, (STD,) * c)]
    return DataLoader(PerSample(data, transforms.Compose(steps)), batch_size=batch, shuffle=train, num_workers=0)


def baseline_eval(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def baseline_epoch(model, loader, optimizer, sign=1.0, after=None):
    model.train()
    device = next(model.parameters()).device
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = sign * nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after:
            after()


def run_baseline(w: Workload, sets: dict, spec: ModelSpec, device: str = "cpu", batch_size: int = 128,
                 t: dict | None = None, phase_done: Callable[[], None] = lambda: None) -> dict:
    """The reference's way, in fp32 on `device`: per-sample PIL transforms in a DataLoader, full evaluations.
    Each phase's seconds go into `t` as soon as it ends, then `phase_done()` runs: a run stopped at a time budget
    (the GPU check's) keeps the phases it finished."""
    t = {} if t is None else t
    train_l, def_l = baseline_loader(sets["train"], w, True, batch_size), baseline_loader(sets["defense"], w, True, 128)
    evals = [baseline_loader(sets[k], w, False, 256) for k in ("test", "poison")]
    torch.manual_seed(0)
    model = create_model(spec).to(device)
    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    for _ in range(w.train_epochs):
        baseline_epoch(model, train_l, opt)
        [baseline_eval(model, e) for e in evals]
    t["train"] = time.perf_counter() - start
    phase_done()

    start = time.perf_counter()
    unlearned = copy.deepcopy(model)
    opt = torch.optim.SGD(unlearned.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(w.unlearn_epochs):
        baseline_epoch(unlearned, def_l, opt, sign=-1.0)
        [baseline_eval(unlearned, e) for e in evals]
    t["unlearn"] = time.perf_counter() - start
    phase_done()

    start = time.perf_counter()
    masked = copy.deepcopy(unlearned).requires_grad_(False)
    masks = attach_masks(masked)
    opt = torch.optim.SGD(masks.values(), lr=0.2, momentum=0.9)

    def clamp():
        with torch.no_grad():
            for m in masks.values():
                m.clamp_(0, 1)

    for _ in range(w.recover_epochs):
        baseline_epoch(masked, def_l, opt, sign=0.2, after=clamp)
        [baseline_eval(masked, e) for e in evals]
    t["recover"] = time.perf_counter() - start
    phase_done()

    start = time.perf_counter()
    state = model.state_dict()
    for chosen in pruning_sets({k: v.detach() for k, v in masks.items()}, "threshold", sweep_points(PruneParams(), 0)):
        pruned = create_model(spec).to(device)
        pruned.load_state_dict(state)
        layers = mask_layers(pruned, "bn")
        with torch.no_grad():
            for name, prune in chosen.items():
                layers[name].weight[prune] = 0.0
        [baseline_eval(pruned, e) for e in [baseline_loader(sets["holdout"], w, False, 256), *evals]]
    t["prune"] = time.perf_counter() - start
    phase_done()
    return t


# --- rnp -------------------------------------------------------------------------------


def run_rnp(w: Workload, sets: dict, spec: ModelSpec, compute: Compute, compile: bool = False, batch_size: int = 128) -> tuple[dict, int]:
    """Seconds per stage, and how many of the sweep's points pruned a distinct set (each is measured once).

    compile: train with `train.compile` (torch.compile; its compile time counts in train's seconds).
    """
    t, on = {}, lambda k: DeviceData(sets[k], (MEAN,) * w.shape[0], (STD,) * w.shape[0], compute)  # noqa: E731
    train, defense, test, poison, holdout = (on(k) for k in ("train", "defense", "test", "poison", "holdout"))
    augment = AugmentParams(crop_padding=w.crop)
    torch.manual_seed(0)
    model = compute.place(create_model(spec))
    start = time.perf_counter()
    fit(model, train, TrainParams(epochs=w.train_epochs, batch_size=batch_size, compile=compile), augment, seeded_generator(0))
    t["train"] = time.perf_counter() - start

    start = time.perf_counter()
    p = UnlearnParams(lr=0.01, batch_size=128, max_epochs=w.unlearn_epochs, clean_threshold=0.0)
    unlearned, _ = unlearn(model, defense, p, augment, seeded_generator(0))
    t["unlearn"] = time.perf_counter() - start

    start = time.perf_counter()
    masks = recover(unlearned, defense, RecoverParams(lr=0.2, epochs=w.recover_epochs), augment, seeded_generator(0))
    t["recover"] = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    rows = sweep_curve(mask_layers(model, "bn"), masks, "threshold", sweep_points(PruneParams(), 0),
                       lambda: {"holdout": accuracy(model, holdout), "ca": accuracy(model, test), "asr": accuracy(model, poison)})
    t["prune"] = time.perf_counter() - start
    return t, len({r["pruned"] for r in rows})  # the sweep measures each distinct pruning set once


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=list(WORKLOADS), default="a")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32,bf16",
                    help="comma-separated precisions rnp runs in (fp32, bf16, auto); a '+compile' suffix also sets train.compile")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch, both sides (default 128, the reference's)")
    ap.add_argument("--baseline-last", action="store_true",
                    help="run the baseline after every precision, not right after the first (the GPU check: it is slow there)")
    ap.add_argument("--json", help="also write the figures here (default: benchmarks/results/speed_<workload>.json)")
    ap.add_argument("--readme", action="store_true", help="rewrite docs/speed.md's table from every saved result")
    ap.add_argument("--readme-only", action="store_true", help="rewrite docs/speed.md's table from the saved results; run nothing")
    args = ap.parse_args(argv)
    if args.readme_only:
        return write_saved_table()
    w = WORKLOADS[args.workload]
    sets = {"train": synthetic(w, w.n_train, 1), "defense": synthetic(w, w.n_defense, 2), "holdout": synthetic(w, w.n_defense // 2, 3),
            "test": synthetic(w, w.n_test, 4), "poison": synthetic(w, w.n_test * 9 // 10, 5)}
    spec = ModelSpec(w.arch, 10, w.shape, (MEAN,) * w.shape[0], (STD,) * w.shape[0])
    warm = create_model(spec)  # first-call costs (allocator, kernels) are paid here, not by whichever side runs first
    nn.functional.cross_entropy(warm(torch.zeros(8, *w.shape)), torch.zeros(8, dtype=torch.long)).backward()
    cuda = args.device.startswith("cuda")
    torch.backends.cudnn.benchmark = cuda  # fixed shapes: let cuDNN time its algorithms once (the stages stay deterministic)
    result = {"workload": w.name, "device": args.device, "threads": torch.get_num_threads(), "cpu": cpu_name(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_cpu_bf16(),
              "gpu": torch.cuda.get_device_name() if cuda else None, "batch_size": args.batch_size,
              "n_train": w.n_train * w.train_epochs, "rnp": {}, "baseline": {}, "distinct_points": {}, "peak_gpu_mib": {} if cuda else None}
    path = Path(args.json) if args.json else RESULTS / f"speed_{args.workload}.json"

    def save() -> None:  # after every run, so a run stopped at its time budget keeps what it measured
        if args.workload != "tiny" or args.json:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))

    precisions = args.precision.split(",")
    for i, p in enumerate(precisions):
        with peak_memory(args.device) as mib:
            result["rnp"][p], result["distinct_points"][p] = run_rnp(
                w, sets, spec, resolve_compute(args.device, p.removesuffix("+compile")), p.endswith("+compile"), args.batch_size)
        if cuda:
            result["peak_gpu_mib"][p] = mib()
        save()
        if i == (len(precisions) - 1 if args.baseline_last else 0):  # by default right after the first precision: its ratio is then complete
            with peak_memory(args.device) as mib:
                run_baseline(w, sets, spec, args.device, args.batch_size, t=result["baseline"], phase_done=save)
            if cuda:
                result["peak_gpu_mib"]["baseline"] = mib()
            save()
    print(f"{w.name} on {args.device} ({result['gpu'] or result['cpu']}, {result['threads']} threads)")
    print(speed_table([result]))
    if args.readme:
        write_saved_table()
    return result


@contextlib.contextmanager
def peak_memory(device: str):
    """Yields a function giving the peak GPU memory (MiB) allocated inside the block; None off a GPU."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result: dict = {}
    yield lambda: result.get("mib")
    if cuda:
        torch.cuda.synchronize()
        result["mib"] = round(torch.cuda.max_memory_allocated() / 2**20)


def write_saved_table() -> dict:
    """docs/speed.md's table from every saved result (speed_<workload>[_<machine>].json), in name order."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("speed_*.json"))]
    write_marked(speed_table(results), ROOT / "docs" / "speed.md", "speed")
    return {"results": results}


def short_cpu(name: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon', for the table."""
    return name.replace("(R)", "").replace("(TM)", "").replace(" Processor", "").strip()


DEFENSE = ("unlearn", "recover", "prune")


def speed_table(results: list[dict]) -> str:
    """One markdown row per workload and stage: seconds per rnp precision, the baseline's, and the speed-ups."""
    precisions = list(dict.fromkeys(p for r in results for p in r["rnp"]))
    head = ["workload", "stage", *(f"rnp {p} s" for p in precisions), "baseline s", *(f"speed-up {p}" for p in precisions)]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]

    def row(workload, stage, ours: dict, base, fmt=".1f", ratio=True):
        cells = [f"{ours[p]:{fmt}}" if p in ours else "—" for p in precisions] + [f"{base:{fmt}}" if base else "—"]
        cells += [(f"**{base / ours[p]:.1f}×**" if ratio else f"{ours[p] / base:.1f}×") if base and p in ours else "—" for p in precisions]
        lines.append(f"| {workload} | {stage} | " + " | ".join(cells) + " |")

    for r in results:
        where = r.get("gpu") or short_cpu(r.get("cpu", "?"))
        if not r.get("gpu") and r.get("native_bf16") is False:  # the same CPU name can come with or without bf16 hardware
            where += f", {r['cpu_capability']}, bf16 emulated"
        workload = f"{r['workload']} ({where}{', ' + r['run'] if r.get('run') else ''})"  # run: which of several runs on one machine kind
        base = dict(r["baseline"])
        if all(k in base for k in DEFENSE):  # a baseline stopped at a time budget has only the phases it finished
            base["defense"] = sum(base[k] for k in DEFENSE)
        stages = {p: {**t, "defense": sum(t[k] for k in DEFENSE)} for p, t in r["rnp"].items()}
        distinct = ", ".join(f"{p} {n}" for p, n in r.get("distinct_points", {}).items())
        for stage in ("train", *DEFENSE, "defense"):
            label = "**defense** (unlearn + recover + prune)" if stage == "defense" else stage
            label += f" (distinct points: {distinct})" if stage == "prune" and distinct else ""
            row(workload, label, {p: t[stage] for p, t in stages.items()}, base.get(stage))
        ips = {p: r["n_train"] / t["train"] for p, t in r["rnp"].items()}
        row(workload, "training, images/s", ips, r["n_train"] / base["train"] if "train" in base else None, ".0f", ratio=False)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
