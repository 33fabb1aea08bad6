"""Screening a different channel ranking (issue 14): channels that push clean images to the suspected target.

    python -m benchmarks.ranking wrn16_1:badnets small_cnn:trojan ...   # cells benchmarks.quality has made (seed 0)
    python -m benchmarks.ranking wrn16_1:trojan --seeds 1 2 --sweeps "masks × push, fine-tuned"
    python -m benchmarks.ranking --table-only                           # the table from the saved results

RNP ranks BN channels by their recovered masks. The quality benchmark found that no
threshold of any mask lever cleans a cell, so the ranking itself fails. This screen
ranks channels instead by a first-order (Taylor) estimate of how much each one raises
log p(suspected target) on the defender's clean images of the other classes:
activation × gradient, summed over positions and averaged over images. The
suspected target is `rnp defend`'s detection, so no test label is used to rank.
Two models are scored: the unlearned one (batch statistics, as unlearning saw the
data: it sends clean images to the target) and the original one. Each ranking then
prunes its top k channels in the original model, as RNP prunes (BN weight 0, bias kept),
and test CA / ASR are measured at every k: an oracle sweep, to see whether any k could
meet the target before building a selection rule for it.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnp.config import PruneParams
from rnp.data import DeviceData, ImageSet
from rnp.datafiles import load_imageset
from rnp.defense import bn_layers, detect_target
from rnp.defense.prune import apply_pruning, constant_fitter, refit_classifier_bias
from rnp.io import atomic_write_bytes, json_bytes, load_tensors, read_json
from rnp.metrics import accuracy, attack_metrics
from rnp.models import load_model

from .common import write_marked
from .levers import REPAIRS, repair_fitter
from .quality import ARCHS, ATTACKS, NUM_CLASSES, WORK
from .quality import LEVERS_DOC as DOC

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ranking"
KS = [4, 8, 12, 16, 24, 32]
TUNED_KS = KS + [48, 64]  # fine-tuning keeps CA flat in k, so its sweeps go further
CA_BUDGET = 0.02
ORDER = ["masks (RNP)", "push to target, original model", "push to target, unlearned model",
         "push to target, unlearned model, 4 at a time", "push to target, unlearned model, constants fitted",
         "masks × push", "masks × push, constants fitted", "masks (RNP), fine-tuned", "push to target, unlearned model, fine-tuned",
         "masks × push, fine-tuned"]  # the table's columns
TEST_IMAGES = 2000


def target_scores(model: nn.Module, clean: DeviceData, target: int, batch_stats: bool) -> dict[str, torch.Tensor]:
    """Per BN channel: activation × d log p(target) / d activation, over the clean images not of `target`."""
    model = copy.deepcopy(model).train(batch_stats)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    hooks = [layer.register_forward_hook(keep(name)) for name, layer in bn_layers(model).items()]
    others = clean.normalise(clean.images[clean.labels != target])
    torch.log_softmax(model(others).float(), 1)[:, target].mean().backward()
    for h in hooks:
        h.remove()
    return {name: (out * out.grad).sum(dim=(0, 2, 3)).detach() / others.shape[0] for name, out in outputs.items()}


def iterative_scores(unlearned: nn.Module, clean: DeviceData, target: int, k_max: int, step: int = 4) -> dict[str, torch.Tensor]:
    """Greedy: score, prune the `step` best in the unlearned model, score again; a channel's score is its rank from
    the end (the first chosen highest), so `top_channels(scores, k)` takes the first k chosen."""
    model = copy.deepcopy(unlearned)
    layers = bn_layers(model)
    order = {name: torch.full((len(layer.weight),), -1.0) for name, layer in layers.items()}
    taken = 0
    while taken < k_max:
        scores = target_scores(model, clean, target, batch_stats=True)
        for name in scores:
            scores[name][order[name] >= 0] = -torch.inf
        chosen = top_channels(scores, step)
        with torch.no_grad():
            for name, c in chosen.items():
                layers[name].weight[c] = 0.0
                order[name][c] = float(k_max - taken)
        taken += step
    return order


def masks_times_push(mask_scores: dict[str, torch.Tensor], push: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Both signals at once: (1 - mask) × the positive part of the push to the target, in units of its spread."""
    spread = torch.cat(list(push.values())).std()
    return {name: mask_scores[name] * torch.relu(push[name] / spread) for name in push}


def top_channels(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Per layer, a bool mask of the channels among the k highest scores overall."""
    flat = torch.cat(list(scores.values()))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True)[:k]] = True
    return dict(zip(scores, chosen.split([len(s) for s in scores.values()])))


def prune_top(model: nn.Module, scores: dict[str, torch.Tensor], k: int, fit_on: DeviceData | None = None,
              tune_on: DeviceData | None = None) -> nn.Module:
    """A copy of `model` with its k highest-scoring BN channels pruned as RNP prunes (weight 0, bias kept), or with
    `fit_on` their constants fitted on those clean images (`prune.fill: fit`), or with `tune_on` the whole model
    fine-tuned on them afterwards, the pruned channels held at 0 (the lever screen's repair_all)."""
    pruned = copy.deepcopy(model)
    layers = bn_layers(pruned)
    chosen = top_channels(scores, k)
    apply_pruning(layers, {name: layer.weight.detach().clone() for name, layer in layers.items()}, chosen)
    if fit_on is not None:
        constant_fitter(pruned, layers, fit_on, PruneParams(), seed=0)(chosen)
    if tune_on is not None:
        repair_fitter(pruned, layers, tune_on, *REPAIRS["repair_all"], seed=0)(chosen)
    return pruned


def asr(model: nn.Module, triggered: DeviceData, target: int) -> float:
    return attack_metrics(model, triggered, torch.full_like(triggered.labels, target))["asr"]


def device_data(path: Path, n: int | None = None) -> DeviceData:
    images, info, _ = load_imageset(path)
    if n is not None:
        images = ImageSet(images.images[:n], images.labels[:n])
    return info.to_device(images, "cpu")


def screen_cell(arch: str, attack: str, seed: int = 0, work: Path = WORK, saved: dict | None = None,
                only: list[str] | None = None, save: Callable[[dict], None] | None = None) -> dict:
    """Every ranking's sweep for one cell (or the sweeps named in `only`); sweeps already in `saved` are kept, not
    rerun; `save` gets the result after each sweep, so an interrupted screen keeps what it finished."""
    top = work / attack / f"seed{seed}"
    original, _, _ = load_model(top / arch / "train" / "model.safetensors")
    unlearned, _, _ = load_model(top / arch / "reference" / "unlearn" / "model.safetensors")
    masks, _ = load_tensors(top / arch / "reference" / "recover" / "masks.safetensors")
    clean_defense = device_data(top / "poison" / "defense.safetensors")
    holdout = device_data(top / "poison" / "holdout.safetensors")
    test = device_data(top / "poison" / "test_clean.safetensors", TEST_IMAGES)
    triggered = device_data(top / "poison" / "test_poison.safetensors", TEST_IMAGES)
    true_target = read_json(top / "poison" / "params.json")["attack"]["target"]
    suspected = detect_target(unlearned, clean_defense, NUM_CLASSES).target
    rankings = {
        "masks (RNP)": {name: 1 - m.flatten().float() for name, m in masks.items()},
        "push to target, unlearned model": target_scores(unlearned, clean_defense, suspected, batch_stats=True),
        "push to target, original model": target_scores(original, clean_defense, suspected, batch_stats=False),
    }
    greedy = "push to target, unlearned model, 4 at a time"
    if only is None or greedy in only:  # the costly one: scored again after every 4 channels
        rankings[greedy] = iterative_scores(unlearned, clean_defense, suspected, max(KS))
    rankings["masks × push"] = masks_times_push(rankings["masks (RNP)"], rankings["push to target, unlearned model"])
    result = {"arch": arch, "attack": attack, "seed": seed, "target": true_target, "suspected": suspected,
              "before": [accuracy(original, test), asr(original, triggered, true_target)], "test_images": TEST_IMAGES,
              "before_holdout": accuracy(original, holdout), "sweeps": dict(saved["sweeps"]) if saved else {}}
    # each sweep: its scores and how the pruned channels are treated; constants fitted: a fourth number, ASR once
    # the 10 class biases are refitted (the check of every purified model); fine-tuned: held-out accuracy, which
    # alone chooses k (auto_k), to k = 64
    push, both = "push to target, unlearned model", "masks × push"
    sweeps = {name: (scores, {}) for name, scores in rankings.items()}
    sweeps |= {f"{b}, constants fitted": (rankings[b], {"fit_on": clean_defense}) for b in (push, both)}
    sweeps |= {f"{b}, fine-tuned": (rankings[b], {"tune_on": clean_defense}) for b in ("masks (RNP)", push, both)}
    for name, (scores, how) in sweeps.items():
        ks = TUNED_KS if "tune_on" in how else KS
        if [p[0] for p in result["sweeps"].get(name, [])] == ks or (only is not None and name not in only):
            continue
        points = []
        for k in ks:
            pruned = prune_top(original, scores, k, **how)
            point = [k, accuracy(pruned, test), asr(pruned, triggered, true_target)]
            if "fit_on" in how:
                point.append(asr(refit_classifier_bias(pruned, clean_defense, NUM_CLASSES, PruneParams(), seed=0), triggered, true_target))
            if "tune_on" in how:
                point.append(accuracy(pruned, holdout))
            points.append(point)
        result["sweeps"][name] = points
        if save is not None:
            save(result)
        print(f"{arch} × {attack}: {name} done", flush=True)
    return result


def meets(before_ca: float, ca: float, asr: float) -> bool:
    return asr <= 0.05 and ca >= before_ca - CA_BUDGET


def auto_k(before_holdout: float, points: list[list[float]], budget: float = CA_BUDGET) -> list[float] | None:
    """The largest k whose held-out accuracy (fine-tuned sweeps: [k, ca, asr, holdout]) is within `budget` of the
    unpruned model's: prune as much as the defender's own images allow. None: no k does."""
    ok = [p for p in points if p[3] >= before_holdout - budget - 1e-9]
    return max(ok, key=lambda p: p[0]) if ok else None


def point_text(before_ca: float, point: list[float], note: str = "") -> str:
    """A sweep point as 'k: CA / ASR', in bold where it meets the target."""
    k, ca, asr_after = point[:3]
    bold = "**" if meets(before_ca, ca, asr_after) else ""
    return f"{bold}{k}: {100 * ca:.1f} / {100 * asr_after:.1f}{bold}{note}"


def held_out_measured(r: dict, name: str) -> bool:
    """The sweep exists and carries held-out accuracy (sweeps saved before it was recorded do not)."""
    return len(r["sweeps"].get(name, [[]])[0]) > 3


def auto_clean(r: dict, name: str, budget: float) -> bool:
    chosen = auto_k(r["before_holdout"], r["sweeps"][name], budget)
    return chosen is not None and meets(r["before"][0], chosen[1], chosen[2])


def auto_table(results: list[dict], budgets: tuple[float, ...] = (CA_BUDGET, 0.03)) -> str:
    """The fine-tuned sweeps with k chosen on the held-out images alone: CA / ASR there (first budget), and per budget the
    cells it cleans, seed 0 (where the rule was set) apart from seeds 1-2 (the check)."""
    results = [r for r in results if "before_holdout" in r]
    names = [n for n in ORDER if n.endswith("fine-tuned") and any(held_out_measured(r, n) for r in results)]
    lines = ["| cell | before CA / ASR (held-out) | " + " | ".join(f"{n}: auto k, CA / ASR" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for r in results:
        ca0, asr0 = r["before"]
        cells = []
        for n in names:
            if not held_out_measured(r, n):
                cells.append("—")
                continue
            chosen = auto_k(r["before_holdout"], r["sweeps"][n], budgets[0])
            cells.append("none within budget" if chosen is None else point_text(ca0, chosen))
        lines.append(f"| {r['arch']} × {r['attack']}, seed {r['seed']} | {100 * ca0:.1f} / {100 * asr0:.1f} "
                     f"({100 * r['before_holdout']:.1f}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Automatic k: the largest of {', '.join(map(str, TUNED_KS))} whose held-out accuracy after fine-tuning is within "
                 f"the budget of the unpruned model's (the table: {100 * budgets[0]:g} points). Cells clean after (ASR ≤ 5 %, test CA "
                 f"within 2 points):")
    lines.append("")
    for budget in budgets:
        counts = []
        for n in names:
            for label, group in (("seed 0", [0]), ("seeds 1–2", [1, 2])):
                rs = [r for r in results if r["seed"] in group and held_out_measured(r, n)]
                if rs:
                    counts.append(f"{n}, {label}: {sum(auto_clean(r, n, budget) for r in rs)} of {len(rs)}")
        lines.append(f"- held-out budget {100 * budget:g} points: " + "; ".join(counts) + ".")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    """Per cell and ranking: the best k (highest CA with ASR <= 5 %), and whether it meets the target."""
    saved = dict.fromkeys(n for r in results for n in r["sweeps"])  # every ranking any cell has; a cell may lack the newer ones
    names = sorted(saved, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    lines = ["| cell | before CA / ASR | " + " | ".join(f"{n}: best k, CA / ASR" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for r in results:
        ca0, asr0 = r["before"]
        cells = []
        for n in names:
            if n not in r["sweeps"]:
                cells.append("—")
                continue
            ok = [p for p in r["sweeps"][n] if p[2] <= 0.05]
            if not ok:
                cells.append("never ≤ 5 %")
                continue
            best = max(ok, key=lambda p: p[1])
            check = f" (class biases refitted: {100 * best[3]:.1f})" if n.endswith("constants fitted") else ""
            cells.append(point_text(ca0, best, check))
        suspected = "" if r["suspected"] == r["target"] else f" (suspected {r['suspected']}, target {r['target']})"
        lines.append(f"| {r['arch']} × {r['attack']}, seed {r['seed']}{suspected} | {100 * ca0:.1f} / {100 * asr0:.1f} | " + " | ".join(cells) + " |")
    had = {n: [r for r in results if n in r["sweeps"]] for n in names}
    hits = {n: sum(any(meets(r["before"][0], p[1], p[2]) for p in r["sweeps"][n]) for r in rs) for n, rs in had.items()}
    lines.append("")
    lines.append(f"Cells where some k meets the target (ASR ≤ 5 %, CA within 2 points; test labels, k = {', '.join(map(str, KS))}; "
                 f"fine-tuned also {', '.join(map(str, TUNED_KS[len(KS):]))}): "
                 + "; ".join(f"{n} {h} of {len(had[n])}" for n, h in hits.items()) + ".")
    return "\n".join(lines)


def cell_spec(text: str) -> tuple[str, str]:
    """'wrn16_1:badnets' -> ('wrn16_1', 'badnets'); anything else is one argparse line (exit 2)."""
    arch, _, attack = text.partition(":")
    if arch not in ARCHS or attack not in ATTACKS:
        raise argparse.ArgumentTypeError(f"{text!r} is not ARCH:ATTACK with ARCH in {', '.join(ARCHS)} and ATTACK in {', '.join(ATTACKS)}")
    return arch, attack


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cells", nargs="*", type=cell_spec, metavar="ARCH:ATTACK", help="cells benchmarks.quality has made")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="the cells' seeds (default 0)")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--sweeps", nargs="+", choices=ORDER, metavar="NAME", help="run only these sweeps (default: every one)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where screened cells are saved (default benchmarks/results/ranking)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="print the tables, leave the docs alone")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if not args.table_only:
        for seed, (arch, attack) in itertools.product(args.seeds, args.cells):
            if not (args.work / attack / f"seed{seed}" / arch / "reference" / "recover" / "masks.safetensors").exists():
                ap.error(f"no cached {arch} x {attack} seed-{seed} cell under {args.work}: run python -m benchmarks.quality "
                         f"--seeds {seed} --archs {arch} --attacks {attack} first")
            path = args.results / f"{arch}-{attack}-seed{seed}.json"
            saved = read_json(path) if path.exists() else None
            path.parent.mkdir(parents=True, exist_ok=True)
            screen_cell(arch, attack, seed, args.work, saved, args.sweeps, lambda result, path=path: atomic_write_bytes(path, json_bytes(result)))
    results = [read_json(p) for p in sorted(args.results.glob("*.json"))]
    text = table(results)
    auto = auto_table(results)
    print(text + "\n\n" + auto)
    if not args.no_doc:
        write_marked(text, DOC, "ranking")
        write_marked(auto, DOC, "ranking_auto")
    return text


if __name__ == "__main__":
    main()
