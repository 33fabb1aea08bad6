"""Parity with the reference code: rnp's unlearning and masks against RNP's own training steps (and ANP's masks against
ANP's), on the same model, data and batch order.

    git clone https://github.com/bboylyg/RNP /tmp/RNP     # never vendored: read where it lies
    python -m benchmarks.parity --reference /tmp/RNP
    git clone https://github.com/csdongxian/ANP_backdoor /tmp/ANP
    python -m benchmarks.parity --reference /tmp/ANP --defense anp

The reference's `train_step_unlearning`, `train_step_recovering` and `clip_mask` are read from its main.py (which
cannot be imported as it is: it loads CIFAR-10 at import) and its `MaskBatchNorm2d` from models/mask_batchnorm.py.
rnp's digits pipeline poisons and trains a model (train.epochs short: parity needs a model, not a good one); then
both codes unlearn a copy of it for the epochs rnp took, and recover masks on rnp's unlearned model, every epoch on
the same batches (rnp's seeded order and augmentation, drawn once and fed to both). The reference's BatchNorm layers
are its MaskBatchNorm2d with the same weights. Exit 1 unless the unlearned weights and the masks are equal.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from rnp.config import config_from_dict, with_overrides
from rnp.data import DeviceData
from rnp.datafiles import load_imageset
from rnp.defense import bn_layers, recover_step, unlearn_step
from rnp.defense.anp import anp_masks, sampled_batch
from rnp.io import atomic_write_bytes, json_bytes
from rnp.models import load_model
from rnp.stages import poison, train
from rnp.training import seeded_generator

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "parity"


def _functions(path: Path, wanted: set[str], namespace: dict) -> dict:
    """Compile only the named top-level functions of a reference script (its module level parses arguments or loads data)."""
    tree = ast.parse(path.read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)  # the user's own checkout of the reference
    return {k: namespace[k] for k in wanted}


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_anp(repo: Path, p) -> dict:
    """ANP's mask_train and helpers from optimize_mask_cifar.py, with its NoisyBatchNorm2d, bound to ANP's arguments `p`."""
    bn = _module(repo / "models" / "anp_batchnorm.py", "reference_anp_batchnorm")
    args = argparse.Namespace(anp_eps=p.eps, anp_steps=p.steps, anp_alpha=p.alpha)
    namespace = {"torch": torch, "nn": nn, "device": torch.device("cpu"), "args": args, "models": bn}
    wanted = {"mask_train", "clip_mask", "sign_grad", "include_noise", "exclude_noise", "reset"}
    return {**_functions(repo / "optimize_mask_cifar.py", wanted, namespace), "NoisyBatchNorm2d": bn.NoisyBatchNorm2d}


def reference_steps(repo: Path) -> dict:
    """RNP's step functions, compiled from its main.py, and its MaskBatchNorm2d."""
    namespace = {"torch": torch, "nn": nn, "device": torch.device("cpu")}
    steps = _functions(repo / "main.py", {"train_step_unlearning", "train_step_recovering", "clip_mask"}, namespace)
    return {**steps, "MaskBatchNorm2d": _module(repo / "models" / "mask_batchnorm.py", "reference_mask_batchnorm").MaskBatchNorm2d}


class Batches:
    """One epoch's batches as the reference's loop reads a DataLoader: iterable, with len() and .dataset."""

    def __init__(self, batches: list, n: int):
        self.batches, self.dataset = batches, range(n)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def epochs_of_batches(data: DeviceData, batch_size: int, augment, seed: int, epochs: int) -> list[Batches]:
    """The batches rnp's run_epoch draws, epoch after epoch, from one seeded generator."""
    gen = seeded_generator(seed)
    return [Batches([(x.clone(), y.clone()) for x, y in data.batches(batch_size, gen, augment.crop_padding, augment.flip)], len(data))
            for _ in range(epochs)]


def with_mask_bn(model: nn.Module, mask_bn: type) -> nn.Module:
    """A copy of `model` whose BatchNorm2d layers are the reference's MaskBatchNorm2d, same weights and statistics."""
    masked = copy.deepcopy(model)
    for layer in list(masked.modules()):
        for child_name, child in list(layer.named_children()):
            if type(child) is nn.BatchNorm2d:
                new = mask_bn(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                new.load_state_dict({**child.state_dict(), "neuron_mask": torch.ones(child.num_features),
                                     "neuron_noise": torch.zeros(child.num_features), "neuron_noise_bias": torch.zeros(child.num_features)})
                setattr(layer, child_name, new)
    return masked


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/bboylyg/RNP")
    ap.add_argument("--arch", default="small_cnn", help="rnp architecture (its BatchNorm2d layers are swapped)")
    ap.add_argument("--train-epochs", type=int, default=5)
    ap.add_argument("--defense", choices=["rnp", "anp"], default="rnp", help="rnp: bboylyg/RNP; anp: csdongxian/ANP_backdoor")
    ap.add_argument("--anp-iterations", type=int, default=200, help="ANP: mask updates compared (the reference runs 2,000)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/parity/<arch>.json)")
    args = ap.parse_args(argv)
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # the reference's unlearn/recover settings (docs/faithfulness.md), rnp's digits data
    cfg = config_from_dict(with_overrides(params, {"model.arch": args.arch, "train.epochs": args.train_epochs, "device": "cpu",
                                                   "precision": "fp32", "unlearn.lr": 0.01, "recover.lr": 0.2}))
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        poison.run(cfg, root / "poison")
        train.run(cfg, root / "poison", root / "train")
        model, _, _ = load_model(root / "train" / "model.safetensors")
        fit_set, info, _ = load_imageset(root / "poison" / "defense.safetensors")
    fit = DeviceData(fit_set, info.mean, info.std, "cpu")
    if args.defense == "anp":
        return anp_parity(args, cfg.model_copy(update={"anp": cfg.anp.model_copy(update={"iterations": args.anp_iterations})}), model, fit)
    ref = reference_steps(args.reference)

    # 1) unlearning: rnp's pipeline step (what rnp defend and the unlearn stage run), then the reference's for as many
    #    epochs on the same batches
    torch.manual_seed(cfg.seed)
    step = unlearn_step(model, fit, fit, cfg, info.num_classes)
    unlearned, epochs = step.model, step.epochs
    theirs = copy.deepcopy(model)
    u = cfg.unlearn
    optimizer = torch.optim.SGD(theirs.parameters(), lr=u.lr, momentum=u.momentum, weight_decay=u.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=u.milestones, gamma=u.gamma)
    for loader in epochs_of_batches(fit, u.batch_size, cfg.augment, cfg.seed, epochs):
        ref["train_step_unlearning"](None, theirs, nn.CrossEntropyLoss(), optimizer, loader)
        scheduler.step()
    ours_state, theirs_state = unlearned.state_dict(), theirs.state_dict()
    unlearn_diff = max((ours_state[k].float() - theirs_state[k].float()).abs().max().item() for k in ours_state)

    # 2) recovery on rnp's unlearned model: rnp's masks, the reference's MaskBatchNorm2d masks
    masks, kind = recover_step(unlearned, fit, cfg)
    assert kind == "bn", f"{args.arch} has no BatchNorm: nothing to compare with the reference's MaskBatchNorm2d"
    masked = with_mask_bn(unlearned, ref["MaskBatchNorm2d"])
    mask_params = [v for n, v in masked.named_parameters() if "neuron_mask" in n]
    mask_opt = torch.optim.SGD(mask_params, lr=cfg.recover.lr, momentum=cfg.recover.momentum)
    step_args = argparse.Namespace(alpha=cfg.recover.alpha)
    for loader in epochs_of_batches(fit, cfg.recover.batch_size, cfg.augment, cfg.seed, cfg.recover.epochs):
        ref["train_step_recovering"](step_args, masked, nn.CrossEntropyLoss(), mask_opt, loader)
    theirs_masks = {name: layer.neuron_mask.detach() for name, layer in bn_layers(masked).items()}
    assert list(theirs_masks) == list(masks), "the two models' BatchNorm layers differ"
    mask_diff = max((masks[k] - theirs_masks[k]).abs().max().item() for k in masks)

    result = {
        "reference": "github.com/bboylyg/RNP main.py (train_step_unlearning, train_step_recovering, clip_mask), models/mask_batchnorm.py",
        "arch": args.arch, "train_epochs": args.train_epochs, "unlearn_epochs": epochs, "recover_epochs": cfg.recover.epochs,
        "channels": sum(m.numel() for m in masks.values()),
        "unlearned_equal": all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state), "unlearned_max_abs_diff": unlearn_diff,
        "masks_equal": all(torch.equal(masks[k], theirs_masks[k]) for k in masks), "masks_max_abs_diff": mask_diff,
        "torch": torch.__version__,
    }
    atomic_write_bytes(args.out or RESULTS / f"{args.arch}.json", json_bytes(result))
    print(json.dumps(result, indent=1))
    if not (result["unlearned_equal"] and result["masks_equal"]):
        raise SystemExit(1)
    return result


def anp_parity(args, cfg, model: nn.Module, fit: DeviceData) -> dict:
    """rnp's ANP masks against the reference's mask_train: same model, batches (drawn once by rnp's sampler) and noise seed."""
    p = cfg.anp
    ref = reference_anp(args.reference, p)
    torch.manual_seed(cfg.seed)
    masks = anp_masks(model, fit, p, cfg.augment, seeded_generator(cfg.seed))
    gen = seeded_generator(cfg.seed)
    batches = [tuple(t.clone() for t in sampled_batch(fit, p.batch_size, gen, cfg.augment)) for _ in range(p.iterations)]
    noisy = with_mask_bn(model, ref["NoisyBatchNorm2d"])
    params = list(noisy.named_parameters())
    mask_opt = torch.optim.SGD([v for n, v in params if "neuron_mask" in n], lr=p.lr, momentum=0.9)
    noise_opt = torch.optim.SGD([v for n, v in params if "neuron_noise" in n], lr=p.eps / p.steps)
    torch.manual_seed(cfg.seed)
    ref["mask_train"](noisy, nn.CrossEntropyLoss(), mask_opt, noise_opt, Batches(batches, len(batches) * p.batch_size))
    theirs = {name: layer.neuron_mask.detach() for name, layer in bn_layers(noisy).items()}
    assert list(theirs) == list(masks), "the two models' BatchNorm layers differ"
    result = {
        "reference": "github.com/csdongxian/ANP_backdoor optimize_mask_cifar.py (mask_train and helpers), models/anp_batchnorm.py",
        "defense": "anp", "arch": args.arch, "train_epochs": args.train_epochs, "iterations": p.iterations, "eps": p.eps,
        "channels": sum(m.numel() for m in masks.values()),
        "masks_equal": all(torch.equal(masks[k], theirs[k]) for k in masks),
        "masks_max_abs_diff": max((masks[k] - theirs[k]).abs().max().item() for k in masks),
        "torch": torch.__version__,
    }
    atomic_write_bytes(args.out or RESULTS / f"anp-{args.arch}.json", json_bytes(result))
    print(json.dumps(result, indent=1))
    if not result["masks_equal"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
