"""Screening RNP's levers on the quality benchmark's backdoored models, on a fixed test subset.

    python -m benchmarks.levers                          # every lever on every cached model, then the table
    python -m benchmarks.levers --levers reference recover_bn_running
    python -m benchmarks.levers --table-only

`benchmarks.quality` trains each (architecture, attack, seed) model once under
results/quality/. A lever changes only the defense (unlearn, recover, prune params),
so this script reuses those models and reruns the defense in-process with the same
functions the stages call. It measures CA and ASR on a fixed random 2,000-image
subset of the clean and triggered test sets (4 times fewer images than the full
sets: the sweep dominates a defense run on a CPU), so a lever costs about two
minutes per model here. A lever that wins is then confirmed on the full benchmark
before it becomes a default. Each result is saved as
benchmarks/results/levers/<lever>/<arch>-<attack>-seed<k>.json and never rerun.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnp.compute import resolve_compute
from rnp.data import DeviceData, ImageSet
from rnp.datafiles import load_imageset
from rnp.defense import detect_target, mask_layers, prune_step, recover, recover_step, unlearn_step
from rnp.defense.prune import constant_fitter, refit_classifier_bias
from rnp.defense.recover import channel_view
from rnp.io import atomic_write_bytes, json_bytes, read_json
from rnp.metrics import accuracy, attack_metrics
from rnp.models import load_model
from rnp.training import fit_parameters, seeded_generator

from .common import sweeps_png, write_marked
from .quality import ARCHS, ATTACKS, CLEAN, CPU_ARCHS, WORK, cell_config, cell_name, pct
from .quality import LEVERS_DOC as DOC
from .quality import RESULTS as QUALITY_RESULTS
from .quality import score as quality_score

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "levers"
CONSTANTS_PNG = ROOT / "docs" / "img" / "constants.png"
SUBSET = 2000  # test images per set (clean and triggered), drawn once with seed 0
# name -> defense overrides on top of the benchmark's setting (the reference's rates)
LEVERS: dict[str, dict[str, object]] = {
    "reference": {},
    "recover_lr_0.05": {"recover.lr": 0.05},
    "recover_bn_running": {},  # recover(bn_stats="running"): BN on the unlearned model's statistics (BN_RUNNING)
    "recover_bn_running_lr_0.05": {"recover.lr": 0.05},
    "recover_epochs_5": {"recover.epochs": 5},
    "unlearn_lr_0.005": {"unlearn.lr": 0.005},
    "unlearn_lr_0.005_recover_lr_0.05": {"unlearn.lr": 0.005, "recover.lr": 0.05},
    "recover_lr_0.02": {"recover.lr": 0.02},
    # the k lowest masks, k = 0, 2, 4, ... 60: a finer first step than t = 0, which takes every zero mask at once
    "recover_lr_0.05_number": {"recover.lr": 0.05, "prune.sweep": "number", "prune.max_number": 60, "prune.number_step": 2},
    "recover_lr_0.02_number": {"recover.lr": 0.02, "prune.sweep": "number", "prune.max_number": 60, "prune.number_step": 2},
    # a pruned channel's constant output fitted on the defense data instead of its trained bias
    "fill_fit": {},  # (FILL_FIT: rnp.defense.constant_fitter after every pruning)
    "fill_fit_recover_epochs_5": {"recover.epochs": 5},
    # fine-tuning after pruning on the defense images (REPAIRS), the pruned channels held at 0
    "repair_bn": {},
    "repair_all": {},
    "repair_distill": {},
    # the benchmark runs the defense in bf16 for speed (masks and BN statistics fp32): is recovery the same in fp32?
    "fp32": {"precision": "fp32"},
    # the reference trains, unlearns and recovers on randomly cropped (4-pixel padding) and flipped images; the
    # benchmark's models were trained without, so this is the reference's augmentation in the defense alone
    "augment_reference": {"augment.crop_padding": 4, "augment.flip": True},
    "unlearn_retry": {},
}
BN_RUNNING = {"recover_bn_running", "recover_bn_running_lr_0.05"}  # levers that are no params key: the core's keywords and hooks
FILL_FIT = {"fill_fit", "fill_fit_recover_epochs_5"}
# lever -> (running accuracy below which unlearning overshot, the rate's factor for the next try, tries at most): unlearning
# that ends below the floor is rerun from the trained model at a smaller rate; the last try is kept whatever it ends at
RETRIES: dict[str, tuple[float, float, int]] = {"unlearn_retry": (0.10, 0.5, 4)}
# lever -> (which parameters, epochs, Adam's learning rate, distil) of the fine-tuning after every pruning; distil: the
# targets are the unpruned model's softmax outputs on the same clean images instead of their labels
REPAIRS: dict[str, tuple[str, int, float, bool]] = {
    "repair_bn": ("bn", 10, 0.01, False), "repair_all": ("all", 10, 3e-4, False), "repair_distill": ("all", 10, 3e-4, True)}


def constants_png(results: dict[str, list[dict]]) -> bytes | None:
    """BadNets sweeps with the trained biases (the reference's pruning) and with the pruned channels' constants fitted."""
    panels = {}
    for arch in ("small_cnn", "wrn16_1"):
        for lever, how in (("recover_epochs_5", "bias kept"), ("fill_fit_recover_epochs_5", "prune.fill fit")):
            r = next((r for r in results.get(lever, []) if (r["arch"], r["attack"], r["seed"]) == (arch, "badnets", 0)), None)
            if r is not None:
                panels[f"{arch} × BadNets, 5 recovery epochs, {how}"] = r["curve"]
    return sweeps_png(panels) if len(panels) == 4 else None


def repair_fitter(model: nn.Module, layers: dict[str, nn.Module], clean: DeviceData, which: str, epochs: int, lr: float,
                  distil: bool, seed: int) -> Callable[..., None]:
    """An `on_pruned` for decide_pruning: after each pruning, fine-tune on clean data with the pruned channels held at 0.

    which="bn": the masked layers' weights and biases only (a few thousand numbers); "all": every parameter.
    Each call first restores every parameter the pruning does not set (apply_pruning sets the masked weights),
    so each sweep point is fine-tuned from the trained model, with the same batch order (Adam, no augmentation,
    as the benchmark trains). BN stays on its running statistics. Nothing pruned: nothing fine-tuned, unless
    `always` (the fine-tuning alone, for comparison).
    distil (with which="all"): the targets are the model's softmax outputs as it is when the fitter is made (unpruned),
    on the same images: clean images never carry the trigger, so the teacher passes on its clean behaviour only,
    with more to learn from per image than a label.
    """
    start = {name: q.detach().clone() for name, q in model.named_parameters()}
    teacher = copy.deepcopy(model).eval() if distil else None
    owned = {f"{name}.weight" for name in layers}
    params = ([q for layer in layers.values() for q in (layer.weight, layer.bias) if q is not None] if which == "bn"
              else list(model.parameters()))

    def refit(chosen: dict[str, torch.Tensor], always: bool = False) -> None:
        with torch.no_grad():
            for name, q in model.named_parameters():
                if name not in owned:
                    q.copy_(start[name])
        pruned = {name: c.to(layers[name].weight.device) for name, c in chosen.items() if bool(c.any())}
        if not pruned and not always:
            return

        @torch.no_grad()
        def keep_pruned() -> None:
            for name, c in pruned.items():
                layers[name].weight.masked_fill_(channel_view(c, layers[name].weight), 0.0)

        if teacher is None:
            fit_parameters(model, params, clean, epochs, lr, seeded_generator(seed), keep_pruned)
            return
        optimizer = torch.optim.Adam(params, lr=lr)  # which="all": nothing to freeze
        gen = seeded_generator(seed)
        model.eval()
        for _ in range(epochs):
            for x, _ in clean.batches(128, gen):
                with clean.compute.autocast():
                    logits = model(x)
                    with torch.no_grad():
                        soft = teacher(x).float().softmax(1)
                loss = nn.functional.cross_entropy(logits.float(), soft)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                keep_pruned()
        model.zero_grad(set_to_none=True)

    return refit


def cached_models(work: Path, archs, attacks, seeds, results: Path = QUALITY_RESULTS) -> list[tuple[str, str, int]]:
    """(arch, attack, seed) whose trained model `benchmarks.quality` has cached and measured (its reference cell is saved).

    Not keyed on today's params: models cached before a params key existed (e.g. attack.lc.perturb_background,
    added after seed 0) are the very models the saved cells measured.
    """
    found = []
    for seed, attack, arch in itertools.product(seeds, attacks, archs):
        trained = work / attack / f"seed{seed}" / arch / "train" / "metrics.json"
        if trained.exists() and (results / "reference" / f"{cell_name(arch, attack, seed)}.json").exists():
            found.append((arch, attack, seed))
    return found


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """The options of every screen over the models `benchmarks.quality` cached: which models, and whether to run."""
    ap.add_argument("--archs", nargs="+", default=CPU_ARCHS, choices=list(ARCHS))
    ap.add_argument("--attacks", nargs="+", default=ATTACKS + [CLEAN], choices=ATTACKS + [CLEAN])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--table-only", action="store_true", help="score the saved results; run nothing")
    ap.add_argument("--no-doc", action="store_true", help="print the table, leave the docs alone")


def subset(data: ImageSet, extra: dict, n: int) -> tuple[ImageSet, dict]:
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return data.subset(pick), {k: v[pick] for k, v in extra.items()}


def run_lever(params: dict, arch: str, attack: str, seed: int, lever: str, work: Path) -> dict:
    cfg = cell_config(params, arch, attack, seed, "reference", {**LEVERS[lever], "device": "cpu"})
    top = work / attack / f"seed{seed}"
    fit_set, info, _ = load_imageset(top / "poison" / "defense.safetensors")
    held_set, _, _ = load_imageset(top / "poison" / "holdout.safetensors")
    test_set, _ = subset(load_imageset(top / "poison" / "test_clean.safetensors")[0], {}, SUBSET)
    trig_full, _, extra = load_imageset(top / "poison" / "test_poison.safetensors", "targets")
    trig_set, extra = subset(trig_full, extra, SUBSET)
    model, _, _ = load_model(top / arch / "train" / "model.safetensors")
    compute = resolve_compute(cfg.device, cfg.precision)
    fit, held, test, trig = (DeviceData(s, info.mean, info.std, compute) for s in (fit_set, held_set, test_set, trig_set))
    every = DeviceData(ImageSet(torch.cat([fit_set.images, held_set.images]), torch.cat([fit_set.labels, held_set.labels])),
                       info.mean, info.std, compute)
    original = compute.place(model).eval()
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    last, trace = {}, []

    def on_epoch(epoch, stats, m) -> None:  # where unlearning sends other classes' clean images, epoch by epoch
        last.update(acc=stats.acc)
        trace.append({"epoch": epoch, "acc": stats.acc, "scores": detect_target(m, every, info.num_classes, stats.acc).scores})

    floor, factor, tries = RETRIES.get(lever, (0.0, 1.0, 1))
    for tried in range(1, tries + 1):  # rnp's unlearning step, retried at a lower rate (lever unlearn_retry)
        trace.clear()
        lr = cfg.unlearn.lr * factor ** (tried - 1)
        step = unlearn_step(original, fit, every, cfg.model_copy(update={"unlearn": cfg.unlearn.model_copy(update={"lr": lr})}),
                            info.num_classes, on_epoch)
        if last["acc"] >= floor:
            break
    unlearned, epochs, detection = step.model, step.epochs, step.detection
    if lever in BN_RUNNING:  # the core's research keyword: no params key, so not a pipeline step
        masks = recover(unlearned, fit, cfg.recover, cfg.augment, seeded_generator(cfg.seed), bn_stats="running")
    else:
        masks, _ = recover_step(unlearned, fit, cfg)
    defense_s = time.perf_counter() - start
    pruned = copy.deepcopy(original)

    def measure(model: nn.Module = pruned) -> dict:
        return {"holdout_acc": accuracy(model, held), "ca": accuracy(model, test), **attack_metrics(model, trig, extra["targets"])}

    layers = mask_layers(pruned, "bn")
    on_pruned = constant_fitter(pruned, layers, fit, cfg.prune, cfg.seed) if lever in FILL_FIT else None
    if lever in REPAIRS:
        on_pruned = repair_fitter(pruned, layers, fit, *REPAIRS[lever], cfg.seed)
    decision = prune_step(pruned, masks, "bn", cfg, measure, None, on_pruned=on_pruned)  # levers prune whatever detection says
    check = refit_classifier_bias(pruned, fit, info.num_classes, cfg.prune, cfg.seed)  # the chosen model, class biases refitted
    tuned_only = None
    if lever in REPAIRS:  # the same fine-tuning with nothing pruned: how much of the effect is the fine-tuning alone
        tuned = copy.deepcopy(original)
        repair_fitter(tuned, mask_layers(tuned, "bn"), fit, *REPAIRS[lever], cfg.seed)({}, always=True)
        tuned_only = measure(tuned)
    flat = torch.cat(list(masks.values()))
    result = {
        "arch": arch, "attack": attack, "seed": seed, "lever": lever, "overrides": LEVERS[lever], "target": cfg.attack.target,
        "before": decision.unpruned, "curve": decision.curve, "holdout_n": len(held_set), "test_subset": SUBSET,
        "bias_refit": {"point": decision.chosen["point"], "ca": accuracy(check, test), **attack_metrics(check, trig, extra["targets"])},
        "unlearn": {"epochs": epochs, "acc": last["acc"], "lr": lr, "tries": tried},
        "masks": {"total": flat.numel(), "zero": int((flat == 0).sum()), "below_0_2": int((flat <= 0.2).sum())},
        "detection": {"backdoored": detection.backdoored, "target": detection.target, "score": detection.score, "scores": detection.scores},
        "unlearn_trace": trace,
        **({"finetune_only": tuned_only} if tuned_only is not None else {}),
        "seconds": {"defense": round(defense_s, 1), "total": round(time.perf_counter() - start, 1)},
        "threads": torch.get_num_threads(),
    }
    atomic_write_bytes(RESULTS / lever / f"{cell_name(arch, attack, seed)}.json", json_bytes(result))
    return result


def score(r: dict, prune) -> dict:
    """benchmarks.quality's verdicts (a lever result has a cell's shape), plus the CA the choice cost."""
    s = quality_score(r, prune)
    oracle = s["oracle"]
    refit = r.get("bias_refit")  # the chosen model with its class biases refitted on the clean images (results since prune.fill)
    return {
        **s,
        "ca_drop": r["before"]["ca"] - s["chosen"]["ca"],
        "oracle_drop": None if oracle is None else r["before"]["ca"] - oracle["ca"],
        "refit_asr": refit["asr"] if refit is not None and refit["point"] == s["chosen"].get("point") else None,
    }


def refit_asr(scored: list[dict]) -> str:
    """Mean ASR of the chosen models once their class biases are refitted (— for results saved before the check)."""
    found = [s["refit_asr"] for s in scored if s["refit_asr"] is not None]
    return pct(sum(found) / len(found)) if found and len(found) == len(scored) else "—"


def oracle_drop(scored: list[dict]) -> str:
    """Mean CA the best ASR <= 5 % point costs, over the cells that have one (and how many have none)."""
    drops = [s["oracle_drop"] for s in scored if s["oracle_drop"] is not None]
    mean = f"{pct(sum(drops) / len(drops))}" if drops else "—"
    missing = len(scored) - len(drops)
    return f"{mean} ({missing} never ≤ 5 %)" if missing else mean


def table(results: dict[str, list[dict]], prune) -> str:
    lines = [
        "| lever | clean after (learnt) | possible (oracle) | mean CA drop | mean oracle CA drop | mean ASR after "
        "| mean ASR after, class biases refitted | worse than chance | target named | false alarms | zero masks (mean) | s / model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lever, rs in results.items():
        scored = [(r, score(r, prune)) for r in rs]
        learnt = [s for r, s in scored if s["learnt"]]
        bd = [s for r, s in scored if r["attack"] != CLEAN]
        clean = [s for r, s in scored if r["attack"] == CLEAN]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        lines.append(
            f"| {lever} | {sum(s['clean_after'] for s in learnt)} / {len(learnt)} | {sum(s['oracle_clean'] for s in learnt)} / {len(learnt)} | "
            f"{pct(mean([s['ca_drop'] for s in learnt]))} | {oracle_drop(learnt)} | {pct(mean([s['chosen']['asr'] for s in learnt]))} | "
            f"{refit_asr(learnt)} | {sum(s['worse_than_chance'] for s in learnt)} | "
            f"{sum(s['detected'] for s in bd)} / {len(bd)} | {sum(s['detected'] for s in clean)} / {len(clean)} | "
            f"{mean([r['masks']['zero'] for r in rs]):.0f} | {mean([r['seconds']['total'] for r in rs]):.0f} |"
        )
    return "\n".join(lines)


def leader(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda c: scores[c])


def detection_rules(r: dict) -> dict[str, tuple[bool, int]]:
    """(backdoored?, suspected class) under each candidate rule, from the saved unlearning trace.

    current: collapsed and >= 25 % of other classes' images go to one class (rnp.defend's rule);
    consistent: the same, and that class already led after the first epoch and never lost the lead.
    """
    det, trace = r["detection"], r["unlearn_trace"]
    target = det["target"]
    steady = all(leader(t["scores"]) == target for t in trace)
    return {"current": (det["backdoored"], target), "consistent": (det["backdoored"] and steady, target)}


def detection_table(rs: list[dict]) -> str:
    """Per rule: targets named on backdoored models, false alarms on clean ones (models with a saved trace)."""
    rs = [r for r in rs if "unlearn_trace" in r]
    lines = ["| detection rule | target named | false alarms |", "|---|---:|---:|"]
    for rule in ("current", "consistent"):
        verdicts = [(r, detection_rules(r)[rule]) for r in rs]
        named = sum(flag and cls == r["target"] for r, (flag, cls) in verdicts if r["attack"] != CLEAN)
        alarms = sum(flag for r, (flag, _) in verdicts if r["attack"] == CLEAN)
        n_bd = sum(r["attack"] != CLEAN for r in rs)
        lines.append(f"| {rule} | {named} / {n_bd} | {alarms} / {len(rs) - n_bd} |")
    return "\n".join(lines)


def cells_table(results: dict[str, list[dict]], prune) -> str:
    """Per model and lever: CA / ASR at the automatic choice (before: the unpruned model)."""
    models = sorted({(r["arch"], r["attack"], r["seed"]) for rs in results.values() for r in rs})
    lines = ["| model | before CA / ASR | " + " | ".join(results) + " |", "|---|---:|" + "---:|" * len(results)]
    for arch, attack, seed in models:
        cells, before = [], None
        for rs in results.values():
            r = next((r for r in rs if (r["arch"], r["attack"], r["seed"]) == (arch, attack, seed)), None)
            if r is None:
                cells.append("—")
                continue
            before = r["before"]
            c = score(r, prune)["chosen"]
            cells.append(f"{pct(c['ca'])} / {pct(c['asr'])}")
        lines.append(f"| {arch} × {attack}, seed {seed} | {pct(before['ca'])} / {pct(before['asr'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    add_model_options(ap)
    args = ap.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    models = cached_models(args.work, args.archs, args.attacks, args.seeds)
    if not args.table_only:
        for lever, (arch, attack, seed) in itertools.product(args.levers, models):
            if not (RESULTS / lever / f"{cell_name(arch, attack, seed)}.json").exists():
                r = run_lever(params, arch, attack, seed, lever, args.work)
                print(f"{lever} {cell_name(arch, attack, seed)}: {r['seconds']['total']:.0f} s", flush=True)
    results = {lever: [read_json(p) for p in sorted((RESULTS / lever).glob("*.json"))] for lever in args.levers if (RESULTS / lever).exists()}
    prune = cell_config(params, "small_cnn", "badnets", 0, "reference").prune
    text = table(results, prune) + "\n\n" + cells_table(results, prune)
    if "reference" in results:
        text += "\n\n" + detection_table(results["reference"])
    print(text)
    if not args.no_doc:
        write_marked(text, DOC, "levers")
        png = constants_png(results)
        if png is not None:
            atomic_write_bytes(CONSTANTS_PNG, png)
    return text


if __name__ == "__main__":
    main()
