"""Defense quality on real images at the paper's ratios: Fashion-MNIST, 10 % poisoned, 1 % clean data.

    python -m benchmarks.quality                      # run the missing cells, then rewrite docs/quality.md
    python -m benchmarks.quality --seeds 0 --archs small_cnn --attacks badnets blend
    python -m benchmarks.quality --table-only         # re-score the saved cells, run nothing

A cell is (architecture, attack or `clean`, seed) under one defense setting. The
poisoned data is made once per (attack, seed) and the backdoored model trained
once per architecture, under results/quality/ (ignored by git, like the grid's
results/); every defense setting reuses them. Each finished cell is saved as
benchmarks/results/quality/<defense>/<arch>-<attack>-seed<k>.json: the unpruned
model, the whole pruning curve (held-out, test CA, ASR, RA), the detection
verdict and the seconds each stage took. A saved cell is not rerun; the table is
scored from the saved curves, so a new selection rule is re-scored in seconds.

Every cell also runs the baselines (`--baselines`, default ANP and plain fine-tuning) through `rnp.defend` on
the model it trained, with the same 600 clean images and the same 204 held out for the choice; their
after-points, sweeps (test CA and ASR at every point, for the oracle) and seconds go into the cell's
"baselines", and the side-by-side table (RNP, ANP, FT) is scored from them. A saved cell without a
baseline gets it from its cached model in --work, when that model is still there.

A backdoored cell is **clean after defense** when the automatic choice leaves
ASR <= 5 % and CA no more than 2 points below the backdoored model. The oracle
is the best test CA among sweep points with ASR <= 5 % (for reporting only).
Detection names the target when `rnp.defend`'s rule calls the model backdoored
and its suspected class is the attack's target; on clean models it must say
"no evidence".
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rnp.compute import resolve_compute
from rnp.config import PruneParams, config_from_dict, with_overrides
from rnp.data import DeviceData, ImageSet
from rnp.datafiles import load_imageset
from rnp.defense import detect_target
from rnp.defense.prune import choose_point, refit_classifier_bias
from rnp.io import atomic_write_bytes, json_bytes, read_json
from rnp.metrics import accuracy, attack_metrics
from rnp.models import load_model
from rnp.presets import get_preset
from rnp.stages import STAGES, baseline, poison, prune, recover, train, unlearn

from .common import cpu_name, write_marked

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "results" / "quality"
RESULTS = ROOT / "benchmarks" / "results" / "quality"
DOC = ROOT / "docs" / "quality.md"
LEVERS_DOC = ROOT / "docs" / "levers.md"  # the other defenses' tables go with the levers they measure

ATTACKS = ["badnets", "blend", "trojan", "sig", "wanet", "lc", "iad", "adaptive_blend"]
CLEAN = "clean"  # trained without poison; its triggered test set uses the BadNets trigger
ARCHS = {"small_cnn": {"model.arch": "small_cnn"}, "wrn16_1": {"model.arch": "wrn16_1"}, "resnet18": {"model.arch": "resnet18"},
         "resnet18_half": {"model.arch": "resnet18_half"}}
CPU_ARCHS = ["small_cnn", "wrn16_1"]  # resnet18 on the full training set is a GPU row (benchmarks/device_check.sh)
# LC's perturbation of the black background is itself learnt as the target class (docs/quality.md), so it stays on the clothes
PER_ATTACK = {CLEAN: {"attack.name": "badnets"}, "lc": {"attack.lc.perturb_background": False}}
NUM_CLASSES = 10
# bf16 on the CPU is 2-3x faster here (measured in docs/quality.md); masks and BN statistics stay fp32
SETTING = {**get_preset("fashion_mnist"), "precision": "bf16"}
# name -> overrides of the defense stages only (unlearn, recover, prune); the backdoored models are shared
DEFENSES: dict[str, dict[str, object]] = {
    "reference": {},
    "recover_lr_0.05": {"recover.lr": 0.05},  # levers screened in benchmarks/levers.py, confirmed here on the full test sets
    "recover_epochs_5": {"recover.epochs": 5},
}
MAX_ASR, CA_BUDGET, LEARNT = 0.05, 0.02, 0.5
BASELINES = ["anp", "ft"]  # registered defenses run beside RNP on every cell's model (rnp.defend)


def cell_name(arch: str, attack: str, seed: int) -> str:
    return f"{arch}-{attack}-seed{seed}"


def attack_target(attack: str, seed: int) -> int:
    """Each attack and seed its own target class, so that a detector that always names one class cannot score."""
    return 0 if attack == CLEAN else (ATTACKS.index(attack) + seed) % NUM_CLASSES


def cell_config(params: dict, arch: str, attack: str, seed: int, defense: str, extra: dict | None = None):
    overrides = {
        **SETTING, **ARCHS[arch], "attack.name": attack, "attack.target": attack_target(attack, seed),
        **PER_ATTACK.get(attack, {}), "seed": seed, **DEFENSES[defense], **(extra or {}),
    }
    return config_from_dict(with_overrides(params, overrides))


def stage_keys(cfg) -> dict[str, dict]:
    """Per stage, the params it and its upstream stages read (dvc.yaml's `params:` lists): a cached stage is reused only under the same key."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    values, keys, upstream = cfg.to_dict(), {}, {}
    for name in STAGES:
        upstream = {**upstream, **{k: values[k] for k in stages[name]["params"]}}
        keys[name] = upstream
    return keys


def write_subset(n_train: int, work: Path) -> Path:
    """The first n_train training and n_train / 6 test images of Fashion-MNIST as IDX files: a data.root for quick runs."""
    from rnp.datasets import find_idx, read_idx

    root = work / f"subset-{n_train}"
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", max(1, n_train // 6))):
        for kind, ndim, magic in (("images-idx3-ubyte", 3, 2051), ("labels-idx1-ubyte", 1, 2049)):
            array = read_idx(find_idx(ROOT / "data" / "raw", f"{split}-{kind}"), ndim)[:n]
            header = np.array([magic, *array.shape], dtype=">u4").tobytes()
            atomic_write_bytes(folder / f"{split}-{kind}", header + array.tobytes())
    return root


def stage_done(done: Path, key: dict) -> bool:
    """The stage in `done` finished (metrics.json is written last) under the params `key`."""
    key_file = done / "params.json"
    return (done / "metrics.json").exists() and key_file.exists() and read_json(key_file) == json.loads(json_bytes(key))


def _stage(done: Path, key: dict, fn, *args, **kwargs) -> float:
    """Run a stage unless it finished under the same params; returns its seconds."""
    key_file = done / "params.json"
    if stage_done(done, key):
        return 0.0
    if done.exists():
        shutil.rmtree(done)  # stale: made under other params (its downstream stages are keyed on these params too)
    start = time.perf_counter()
    fn(*args, **kwargs)
    atomic_write_bytes(key_file, json_bytes(key))
    return time.perf_counter() - start


def detection(poison_dir: Path, unlearn_dir: Path, device: torch.device) -> dict:
    """rnp.defend's detection rule on the unlearned model, over all 600 clean images."""
    fit, info, _ = load_imageset(poison_dir / "defense.safetensors")
    held, _, _ = load_imageset(poison_dir / "holdout.safetensors")
    every = ImageSet(torch.cat([fit.images, held.images]), torch.cat([fit.labels, held.labels]))
    unlearned, _, _ = load_model(unlearn_dir / "model.safetensors")
    acc = read_json(unlearn_dir / "metrics.json")["defense_acc"]
    d = detect_target(unlearned.to(device), DeviceData(every, info.mean, info.std, device), info.num_classes, acc)
    return {"backdoored": d.backdoored, "target": d.target, "score": d.score, "unlearned_acc": acc}


def bias_check(cfg, poison_dir: Path, prune_dir: Path) -> dict:
    """The purified model with only its classifier biases refitted on the defense images: CA and ASR on the full test sets."""
    fit, info, _ = load_imageset(poison_dir / "defense.safetensors")
    test, _, _ = load_imageset(poison_dir / "test_clean.safetensors")
    trig, _, extra = load_imageset(poison_dir / "test_poison.safetensors", "targets")
    compute = resolve_compute(cfg.device, cfg.precision)
    model, _, _ = load_model(prune_dir / "model.safetensors")
    check = refit_classifier_bias(compute.place(model).eval(), info.to_device(fit, compute), info.num_classes, cfg.prune, cfg.seed)
    return {"ca": accuracy(check, info.to_device(test, compute)), **attack_metrics(check, info.to_device(trig, compute), extra["targets"])}


def backfill_bias_check(params: dict, cell_path: Path, work: Path) -> None:
    """Cells saved before the prune stage made the check: add it from the cached purified model (the one the cell measured)."""
    cell = read_json(cell_path)
    if "bias_refit" in cell:
        return
    cfg = cell_config(params, cell["arch"], cell["attack"], cell["seed"], cell["defense"], cell.get("settings"))
    top = work / cell["attack"] / f"seed{cell['seed']}"
    prune_dir = top / cell["arch"] / cell["defense"] / "prune"
    if not (prune_dir / "model.safetensors").exists():
        return
    cell["bias_refit"] = bias_check(cfg, top / "poison", prune_dir)
    atomic_write_bytes(cell_path, json_bytes(cell))


def run_baseline(cfg, name: str, poison_dir: Path, train_dir: Path, out: Path) -> dict:
    """Defense `name` on the cell's trained model by the `rnp baseline` stage (rnp.defend on the RNP stages' clean images
    and held-out split): its after-point, its sweep with test CA and ASR at every point (pruning defenses), its seconds."""
    m = baseline.run(cfg, poison_dir, train_dir, out, name)
    curve = [{k: float(v) for k, v in r.items()} for r in _csv_rows(out / "curve.csv")] if (out / "curve.csv").exists() else []
    after = {k: m[k] for k in ("ca", "asr", "ra", "holdout_acc", "threshold", "pruned")}
    return {"after": after, "curve": curve, "seconds": m["seconds"], "verdict": m["verdict"],
            "extra": {k: m[k] for k in ("reference_threshold",) if k in m}}


def add_baselines(cell: dict, cfg, names: list[str], poison_dir: Path, train_dir: Path) -> bool:
    """Run the baselines the cell lacks on its trained model (when `train_dir` holds it); True if any was added."""
    todo = [n for n in names if n not in cell.get("baselines", {})]
    if not todo or not (train_dir / "model.safetensors").exists():
        return False
    for name in todo:
        start = time.perf_counter()
        cell.setdefault("baselines", {})[name] = run_baseline(cfg, name, poison_dir, train_dir, train_dir.parent / name)
        print(f"{cell_name(cell['arch'], cell['attack'], cell['seed'])}: {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return True


def backfill_baselines(params: dict, cell_path: Path, work: Path, names: list[str]) -> None:
    """Cells saved before the baselines ran (or with fewer of them): add them from the cached model, when it is the cell's."""
    cell = read_json(cell_path)
    cfg = cell_config(params, cell["arch"], cell["attack"], cell["seed"], cell["defense"], cell.get("settings"))
    top = work / cell["attack"] / f"seed{cell['seed']}"
    train_dir = top / cell["arch"] / "train"
    if stage_done(train_dir, stage_keys(cfg)["train"]) and add_baselines(cell, cfg, names, top / "poison", train_dir):
        atomic_write_bytes(cell_path, json_bytes(cell))


def run_cell(params: dict, arch: str, attack: str, seed: int, defense: str, extra: dict, work: Path, results: Path,
             baselines: list[str] = ()) -> dict:
    cfg = cell_config(params, arch, attack, seed, defense, extra)
    top = work / attack / f"seed{seed}"
    p, t, d = top / "poison", top / arch / "train", top / arch / defense
    key = stage_keys(cfg)
    seconds = {"poison": _stage(p, key["poison"], poison.run, cfg, p, clean=attack == CLEAN)}
    seconds["train"] = _stage(t, key["train"], train.run, cfg, p, t)
    seconds["unlearn"] = _stage(d / "unlearn", key["unlearn"], unlearn.run, cfg, p, t, d / "unlearn")
    seconds["recover"] = _stage(d / "recover", key["recover"], recover.run, cfg, p, d / "unlearn", d / "recover")
    seconds["prune"] = _stage(d / "prune", key["prune"], prune.run, cfg, p, t, d / "recover", d / "prune")
    m = read_json(d / "prune" / "metrics.json")
    curve = [{k: float(v) for k, v in r.items()} for r in _csv_rows(d / "prune" / "curve.csv")]
    cell = {
        "arch": arch, "attack": attack, "seed": seed, "defense": defense, "target": cfg.attack.target,
        "before": {"ca": m["ca_before"], "asr": m["asr_before"], "ra": m["ra_before"], "holdout_acc": m["holdout_acc_before"]},
        "holdout_n": m["holdout_size"],
        "curve": curve,
        "detection": detection(p, d / "unlearn", resolve_compute(cfg.device, "fp32").device),
        "bias_refit": {"ca": m["ca_bias_refit"], "asr": m["asr_bias_refit"]},  # the prune stage's own check
        "unlearn": read_json(d / "unlearn" / "metrics.json"),
        "seconds": seconds,
        "settings": extra,
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
    }
    add_baselines(cell, cfg, list(baselines), p, t)
    path = results / defense / f"{cell_name(arch, attack, seed)}.json"
    atomic_write_bytes(path, json_bytes(cell))
    return cell


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def score(cell: dict, prune: PruneParams) -> dict:
    """prune.select on the saved curve (held-out accuracy only), the oracle, and the verdicts."""
    before, curve = cell["before"], cell["curve"]
    i, _ = choose_point([r["holdout_acc"] for r in curve], before["holdout_acc"], [r["point"] for r in curve], prune)
    chosen = curve[i] if i is not None else {**before, "threshold": None, "pruned": 0}
    ok = [r for r in curve if r["asr"] <= MAX_ASR]
    oracle = max(ok, key=lambda r: r["ca"]) if ok else None
    backdoored = cell["attack"] != CLEAN
    det = cell["detection"]
    return {
        "chosen": chosen,
        "oracle": oracle,
        "learnt": backdoored and before["asr"] >= LEARNT,
        "clean_after": chosen["asr"] <= MAX_ASR and chosen["ca"] >= before["ca"] - CA_BUDGET - 1e-9,
        # could any threshold have done it? (the oracle reads test labels: an upper bound on every selection rule)
        "oracle_clean": oracle is not None and oracle["ca"] >= before["ca"] - CA_BUDGET - 1e-9,
        "worse_than_chance": chosen["ca"] < 0.1,
        # still clean once the class biases are refitted on the clean images (None: saved without the check)
        "holds": None if "bias_refit" not in cell else chosen["asr"] <= MAX_ASR and cell["bias_refit"]["asr"] <= MAX_ASR,
        "detected": det["backdoored"] and (not backdoored or det["target"] == cell["target"]),
    }


DEFENSE_NAMES = {"rnp": "RNP", "anp": "ANP", "ft": "FT"}


def outcome(cell: dict, name: str, prune: PruneParams) -> dict | None:
    """Defense `name` on a cell: its chosen point (re-chosen from the saved sweep, as for RNP), the oracle, the verdicts and
    its seconds; None where it was not run. RNP's seconds are its unlearn and recover stages: the pruning sweep on the 204
    held-out images, which every pruning defense makes alike, is in ANP's, and RNP's prune stage also measures the test sets."""
    if name == "rnp":
        return {**score(cell, prune), "seconds": cell["seconds"]["unlearn"] + cell["seconds"]["recover"]}
    b = cell.get("baselines", {}).get(name)
    if b is None:
        return None
    before, curve = cell["before"], b["curve"]
    chosen = b["after"]
    if curve:
        i, _ = choose_point([r["holdout_acc"] for r in curve], before["holdout_acc"], [r["point"] for r in curve], prune)
        chosen = curve[i] if i is not None else {**before, "threshold": None, "pruned": 0}
    ok = [r for r in curve if r["asr"] <= MAX_ASR]
    return {
        "chosen": chosen,
        "oracle": max(ok, key=lambda r: r["ca"]) if ok else None,
        "learnt": cell["attack"] != CLEAN and before["asr"] >= LEARNT,
        "clean_after": chosen["asr"] <= MAX_ASR and chosen["ca"] >= before["ca"] - CA_BUDGET - 1e-9,
        "worse_than_chance": chosen["ca"] < 0.1,
        "seconds": b["seconds"],
    }


def side_by_side(cells: list[dict], prune: PruneParams, names: list[str]) -> str:
    """RNP and the baselines on the same models and clean data: a row per cell, a summary line per defense, a sentence per attack."""
    cells = [c for c in cells if all(n in c.get("baselines", {}) for n in names if n != "rnp")]
    if not cells:
        return ""
    heads = " | ".join(f"{DEFENSE_NAMES[n]}: CA / ASR (t) | {DEFENSE_NAMES[n]} s" for n in names)
    lines = [f"| cell | before CA / ASR | {heads} | {DEFENSE_NAMES[names[0]]} oracle | "
             + " | ".join(f"{DEFENSE_NAMES[n]} oracle" for n in names[1:] if n != "ft") + " |",
             "|---|---:|" + "---:|---:|" * len(names) + "---:|" * (1 + sum(n != "ft" for n in names[1:]))]
    results = {n: [] for n in names}
    for c in cells:
        row = [f"{c['arch']} × {c['attack']}, seed {c['seed']}", f"{pct(c['before']['ca'])} / {pct(c['before']['asr'])}"]
        oracles = []
        for n in names:
            o = outcome(c, n, prune)
            results[n].append((c, o))
            ch = o["chosen"]
            t = "" if n == "ft" else " (none)" if ch.get("threshold") is None else f" ({ch['threshold']:.2f})"
            mark = "**" if o["learnt"] and o["clean_after"] else ""
            row += [f"{mark}{pct(ch['ca'])} / {pct(ch['asr'])}{mark}{t}", f"{o['seconds']:.0f}"]
            if n != "ft":
                oracles.append(f"{o['oracle']['threshold']:.2f}: {pct(o['oracle']['ca'])} / {pct(o['oracle']['asr'])}" if o["oracle"] else "—")
        lines.append("| " + " | ".join(row + oracles) + " |")
    text = "\n".join(lines) + "\n\nBold: clean after (ASR ≤ 5 %, CA ≥ before − 2 points) on a learnt backdoor.\n\n"
    for n in names:
        learnt = [(c, o) for c, o in results[n] if o["learnt"]]
        clean_models = [(c, o) for c, o in results[n] if c["attack"] == CLEAN]
        drops = [c["before"]["ca"] - o["chosen"]["ca"] for c, o in results[n]]
        harmed = sum(c["before"]["ca"] - o["chosen"]["ca"] > CA_BUDGET + 1e-9 for c, o in clean_models)
        seconds = sum(o["seconds"] for _, o in results[n]) / len(results[n])
        text += (f"- **{DEFENSE_NAMES[n]}**: clean after in **{sum(o['clean_after'] for _, o in learnt)} of {len(learnt)}** learnt cells; "
                 f"worse than chance in {sum(o['worse_than_chance'] for _, o in results[n])}; "
                 f"clean models losing more than 2 points: {harmed} of {len(clean_models)}; "
                 f"mean CA drop {100 * sum(drops) / len(drops):.1f} points; mean {seconds:.0f} s.\n")
    if "rnp" in names and "anp" in names:
        text += "\n" + "\n".join(rnp_against_anp(results["rnp"], results["anp"])) + "\n"
    return text


def rnp_against_anp(rnp: list[tuple[dict, dict]], anp: list[tuple[dict, dict]]) -> list[str]:
    """Per attack: does RNP beat ANP here, as the paper says? More learnt cells clean after wins; on a tie, the lower mean ASR
    after (by more than one point), then the higher mean CA."""
    out = []
    for attack in dict.fromkeys(c["attack"] for c, _ in rnp):
        if attack == CLEAN:
            continue
        r = [o for c, o in rnp if c["attack"] == attack and o["learnt"]]
        a = [o for c, o in anp if c["attack"] == attack and o["learnt"]]
        if not r:
            out.append(f"- {attack}: no learnt backdoor, nothing to compare.")
            continue
        rc, ac = sum(o["clean_after"] for o in r), sum(o["clean_after"] for o in a)
        r_asr, a_asr = (sum(o["chosen"]["asr"] for o in x) / len(x) for x in (r, a))
        r_ca, a_ca = (sum(o["chosen"]["ca"] for o in x) / len(x) for x in (r, a))
        if rc != ac:
            verdict = "RNP beats ANP, as the paper says" if rc > ac else "ANP beats RNP, against the paper"
        elif abs(r_asr - a_asr) > 0.01:
            verdict = "RNP ahead on ASR, as the paper says" if r_asr < a_asr else "ANP ahead on ASR, against the paper"
        else:
            verdict = "a tie" if abs(r_ca - a_ca) <= 0.01 else "RNP ahead on CA" if r_ca > a_ca else "ANP ahead on CA"
        out.append(f"- {attack}: clean after in {rc} of {len(r)} (RNP) and {ac} of {len(a)} (ANP); mean after ASR {pct(r_asr)} % against "
                   f"{pct(a_asr)} %, CA {pct(r_ca)} % against {pct(a_ca)} %: {verdict}.")
    return out


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(cells: list[dict], prune: PruneParams) -> str:
    lines = [
        "| cell | before CA / ASR / RA | auto t | after CA / ASR / RA | class biases refitted: CA / ASR | oracle t: CA / ASR | detection | s "
        "| clean after |",
        "|---|---:|---:|---:|---:|---:|---|---:|:---:|",
    ]
    scored = []
    for c in cells:
        s = score(c, prune)
        scored.append((c, s))
        b, ch, o, det = c["before"], s["chosen"], s["oracle"], c["detection"]
        t = "none" if ch["threshold"] is None else f"{ch['threshold']:.2f}"
        oracle = f"{o['threshold']:.2f}: {pct(o['ca'])} / {pct(o['asr'])}" if o else "—"
        refit = f"{pct(c['bias_refit']['ca'])} / {pct(c['bias_refit']['asr'])}" if "bias_refit" in c else "—"
        verdict = f"target {det['target']} ({pct(det['score'])} %)" if det["backdoored"] else "no evidence"
        verdict = verdict if s["detected"] or c["attack"] == CLEAN else f"**{verdict}**"
        verdict = f"**{verdict}**" if c["attack"] == CLEAN and det["backdoored"] else verdict
        outcome = "—" if c["attack"] == CLEAN else "not learnt" if not s["learnt"] else "yes" if s["clean_after"] else "**no**"
        lines.append(
            f"| {c['arch']} × {c['attack']}, seed {c['seed']} | {pct(b['ca'])} / {pct(b['asr'])} / {pct(b['ra'])} | {t} | "
            f"{pct(ch['ca'])} / {pct(ch['asr'])} / {pct(ch['ra'])} | {refit} | {oracle} | {verdict} | {sum(c['seconds'].values()):.0f} | {outcome} |"
        )
    return "\n".join(lines) + "\n\n" + summary(scored)


def summary(scored: list[tuple[dict, dict]]) -> str:
    learnt = [s for c, s in scored if s["learnt"]]
    backdoored = [s for c, s in scored if c["attack"] != CLEAN]
    clean = [s for c, s in scored if c["attack"] == CLEAN]
    holdout = sorted({c["holdout_n"] for c, _ in scored})
    return (
        f"**Summary.** Clean after defense (ASR ≤ 5 %, CA ≥ before − 2 points): **{sum(s['clean_after'] for s in learnt)} of "
        f"{len(learnt)}** learnt cells ({len(backdoored) - len(learnt)} not learnt: ASR before < {LEARNT:.0%}); "
        f"worse than chance after: {sum(s['worse_than_chance'] for s in learnt)}; "
        f"a threshold that meets it exists (oracle, test labels) in {sum(s['oracle_clean'] for s in learnt)} of {len(learnt)}. "
        f"ASR ≤ 5 % that survives a refit of the classifier's biases: {sum(bool(s['holds']) for s in learnt)} of "
        f"{sum(s['holds'] is not None for s in learnt)} checked. "
        f"Target named on **{sum(s['detected'] for s in backdoored)} of {len(backdoored)}** backdoored models; "
        f"false alarms on **{sum(s['detected'] for s in clean)} of {len(clean)}** clean models. "
        f"Held-out images: {', '.join(map(str, holdout))}."
    )


def doc_section(defense: str, archs: list[str], results: Path = RESULTS) -> tuple[Path, str]:
    """The page and marked section a table goes to: the reference's tables in quality.md, the other defenses' with the
    levers; one section for the CPU architectures, one per other set (the GPU's resnet18 row), and one per other
    results folder (e.g. regime15: models trained as the reference trains them)."""
    marker = f"quality-{defense}" if list(archs) == CPU_ARCHS else f"quality-{defense}-{'-'.join(archs)}"
    marker = marker if results.resolve() == RESULTS.resolve() else f"{marker}-{results.name}"
    return (DOC if defense == "reference" else LEVERS_DOC), marker


def load_cells(results: Path, defense: str, archs, attacks, seeds) -> list[dict]:
    cells = []
    for seed, attack, arch in itertools.product(seeds, attacks, archs):
        path = results / defense / f"{cell_name(arch, attack, seed)}.json"
        if path.exists():
            cells.append(read_json(path))
    return cells


def missing_cells(folder: Path, archs, attacks, seeds) -> list[tuple[int, str, str]]:
    """(seed, attack, arch) of the cells not saved in `folder`, seed-major: early results cover every attack."""
    return [(seed, attack, arch) for seed, attack, arch in itertools.product(seeds, attacks, archs)
            if not (folder / f"{cell_name(arch, attack, seed)}.json").exists()]


def shard(cells: list[tuple[int, str, str]], k: int, n: int) -> list[tuple[int, str, str]]:
    """Worker k of n's share of `cells`: every n-th (attack, seed) from the k-th. The architectures of one (attack, seed)
    stay in one worker, because they share its poisoned data, which two processes must not write at once."""
    groups = list(dict.fromkeys((seed, attack) for seed, attack, _ in cells))
    mine = set(groups[k::n])
    return [c for c in cells if c[:2] in mine]


def shard_arg(text: str) -> tuple[int, int]:
    """'K/N' (worker K of N, from 0) for --shard."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be K/N, e.g. 0/3, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: K must be in 0..N-1")
    return k, n


def main(argv: list[str] | None = None) -> str:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=CPU_ARCHS, choices=list(ARCHS))
    ap.add_argument("--attacks", nargs="+", default=ATTACKS + [CLEAN], choices=ATTACKS + [CLEAN])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--defense", default="reference", choices=list(DEFENSES))
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--device", default="auto", help="params' device for every stage (default auto)")
    ap.add_argument("--subset", type=int, help="train on the first N Fashion-MNIST training images (quick checks; says so in the cell)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra dotted override (YAML value), e.g. train.epochs=1")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where cells are saved (default benchmarks/results/quality)")
    ap.add_argument("--work", type=Path, default=WORK, help="poisoned data and models (default results/quality)")
    ap.add_argument("--baselines", nargs="*", default=BASELINES, choices=BASELINES,
                    help="defenses run beside RNP on each cell's model (default: anp ft; none: --baselines)")
    ap.add_argument("--table-only", action="store_true", help="score the saved cells; run nothing")
    ap.add_argument("--no-doc", action="store_true", help="print the table, leave the docs alone")
    ap.add_argument("--shard", type=shard_arg, default=(0, 1), metavar="K/N",
                    help="run only worker K's share of the missing cells, of N workers started together (a GPU runs several at once)")
    args = ap.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    extra = {"device": args.device, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    if args.subset:
        extra["data.root"] = str(write_subset(args.subset, args.work))
    if not args.table_only:
        missing = missing_cells(args.results / args.defense, args.archs, args.attacks, args.seeds)
        for seed, attack, arch in shard(missing, *args.shard):
            start = time.perf_counter()
            run_cell(params, arch, attack, seed, args.defense, extra, args.work, args.results, args.baselines)
            print(f"{cell_name(arch, attack, seed)} ({args.defense}): {time.perf_counter() - start:.0f} s", flush=True)
        for path in sorted((args.results / args.defense).glob("*.json")):
            backfill_bias_check(params, path, args.work)
        for path in [args.results / args.defense / f"{cell_name(a, k, s)}.json" for s, k, a in
                     itertools.product(args.seeds, args.attacks, args.archs)]:
            if path.exists():
                backfill_baselines(params, path, args.work, args.baselines)
    cfg = cell_config(params, args.archs[0], args.attacks[0], args.seeds[0], args.defense, extra)
    cells = load_cells(args.results, args.defense, args.archs, args.attacks, args.seeds)
    table = markdown(cells, cfg.prune)
    print(table)
    versus = side_by_side(cells, cfg.prune, ["rnp", *BASELINES])
    if versus:
        print(versus)
    if not args.no_doc:
        write_marked(table, *doc_section(args.defense, args.archs, args.results))
        page, marker = doc_section(args.defense, args.archs, args.results)
        if versus and f"<!-- {marker}-side-by-side:start -->" in page.read_text():
            write_marked(versus, page, f"{marker}-side-by-side")
        elif versus:
            print(f"(the side-by-side table is kept in {page.name} between <!-- {marker}-side-by-side:start/end --> markers)")
    return table


if __name__ == "__main__":
    main()
