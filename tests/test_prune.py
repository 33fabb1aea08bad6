import csv
import json

import torch

from rnp.config import PruneParams
from rnp.defense import bn_layers, decide_pruning
from rnp.defense.prune import choose_point, oracle_point, pruning_sets, select_auto, sweep_points
from rnp.io import load_tensors
from rnp.models import load_model


def test_default_run_really_defends(default_run):
    """Issue 3's bar: after RNP at the automatic threshold ASR <= 5%, CA at most 3 points below."""
    _, root, metrics = default_run
    m = json.loads((root / "prune/metrics.json").read_text())
    assert m["ca_before"] >= 0.95 and m["asr_before"] >= 0.95
    assert m["asr"] <= 0.05
    assert m["ca"] >= m["ca_before"] - 0.03
    assert m["der"] > 0.9
    assert {"ca", "asr", "ra", "der", "pruned", "threshold", "oracle_threshold", "oracle_ca", "oracle_asr"} <= set(m)


def test_pruned_model_zeros_exactly_the_channels_with_mask_at_most_t(default_run):
    _, root, _ = default_run
    m = json.loads((root / "prune/metrics.json").read_text())
    masks, _ = load_tensors(root / "recover/masks.safetensors")
    original, _, _ = load_model(root / "train/model.safetensors")
    pruned, _, meta = load_model(root / "prune/model.safetensors")
    assert meta["threshold"] == m["threshold"]
    orig_bn, pruned_bn = bn_layers(original), bn_layers(pruned)
    zeroed = 0
    for name, mask in masks.items():
        chosen = mask <= m["threshold"]
        assert (pruned_bn[name].weight[chosen] == 0).all()
        assert torch.equal(pruned_bn[name].weight[~chosen], orig_bn[name].weight[~chosen])
        assert torch.equal(pruned_bn[name].bias, orig_bn[name].bias)  # bias kept
        zeroed += int(chosen.sum())
    assert zeroed == m["pruned"]


def test_curve_has_every_sweep_point(default_run):
    cfg, root, _ = default_run
    rows = list(csv.DictReader(open(root / "prune/curve.csv")))
    assert [float(r["threshold"]) for r in rows] == sweep_points(cfg.prune, 10_000)
    pruned = [int(r["pruned"]) for r in rows]
    assert pruned == sorted(pruned)
    assert (root / "prune/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pruning_sets_threshold_and_number():
    masks = {"a": torch.tensor([0.0, 0.5, 0.2]), "b": torch.tensor([0.1, 1.0])}
    by_t = pruning_sets(masks, "threshold", [0.0, 0.2, 1.0])
    assert by_t[0]["a"].tolist() == [True, False, False] and not by_t[0]["b"].any()
    assert by_t[1]["a"].tolist() == [True, False, True] and by_t[1]["b"].tolist() == [True, False]
    assert all(s.all() for s in by_t[2].values())
    by_k = pruning_sets(masks, "number", [0, 1, 2, 3])
    counts = [sum(int(s.sum()) for s in p.values()) for p in by_k]
    assert counts == [0, 1, 2, 3]
    assert by_k[2]["b"].tolist() == [True, False]  # the two lowest: a[0]=0.0 and b[0]=0.1


def test_sweep_points():
    assert sweep_points(PruneParams(), 100) == [round(0.05 * i, 6) for i in range(19)]
    assert 0.33 in sweep_points(PruneParams(select="fixed", threshold=0.33), 100)
    assert sweep_points(PruneParams(sweep="number", max_number=25, number_step=10), 18) == [0, 10]


def test_select_auto_stops_before_the_first_drop_beyond_budget():
    assert select_auto([1.0, 0.99, 0.98, 0.90, 0.99], base_acc=1.0, max_clean_drop=0.02) == 2
    assert select_auto([1.0, 1.0, 1.0], base_acc=1.0, max_clean_drop=0.0) == 2
    # t = 0 costs 20 points: accepted up to max_first_drop, and the budget then counts from there
    assert select_auto([0.8, 0.8, 0.79, 0.7], base_acc=1.0, max_clean_drop=0.01, max_first_drop=0.3) == 2
    assert select_auto([0.5, 0.4], base_acc=1.0, max_clean_drop=0.02, max_first_drop=0.3) is None  # masks failed: prune nothing
    assert select_auto([0.8, 0.8], base_acc=1.0, max_clean_drop=0.02, max_first_drop=0.1) is None
    # a first point better than the unpruned model does not raise the bar
    assert select_auto([1.0, 0.995, 0.985], base_acc=0.99, max_clean_drop=0.01) == 2


def test_choose_point_fixed_auto_and_nothing():
    points = [0.0, 0.1, 0.2]
    i, why = choose_point([1.0, 0.99, 0.5], 1.0, points, PruneParams(max_clean_drop=0.02))
    assert (i, why) == (1, "auto: the last point within prune.max_clean_drop 2% of held-out accuracy")
    assert choose_point([0.1, 0.1, 0.1], 1.0, points, PruneParams(select="fixed", threshold=0.2))[0] == 2  # fixed ignores the curve
    i, why = choose_point([0.5, 0.5, 0.5], 1.0, points, PruneParams())
    assert i is None and why.startswith("NOTHING PRUNED") and "50.0%" in why


def test_decide_pruning_prunes_in_place_at_the_choice_and_only_then():
    layers = {"bn": torch.nn.BatchNorm2d(4)}
    torch.nn.init.constant_(layers["bn"].weight, 1.0)
    masks = {"bn": torch.tensor([0.0, 0.12, 0.5, 0.9])}
    # held-out accuracy: the share of weights still 1 (pruning channel 0 and 1 is harmless, channel 2 is not)
    measure = lambda: {"holdout_acc": 1.0 - 0.5 * float(layers["bn"].weight[2] == 0)}  # noqa: E731
    p = PruneParams(max_threshold=0.6, step=0.1, max_clean_drop=0.01)
    d = decide_pruning(layers, masks, p, measure)
    assert d.threshold == 0.4 and d.pruned == 2 and d.unpruned == {"holdout_acc": 1.0}
    assert layers["bn"].weight.tolist() == [0.0, 0.0, 1.0, 1.0]
    torch.nn.init.constant_(layers["bn"].weight, 1.0)
    d = decide_pruning(layers, masks, p, measure, blocked="no evidence")
    assert (d.selected, d.threshold, d.pruned, d.why) == (None, None, 0, "no evidence")
    assert d.chosen["holdout_acc"] == 1.0 and len(d.curve) == 7  # still measured
    assert layers["bn"].weight.tolist() == [1.0] * 4


def test_oracle_prefers_clean_accuracy_among_low_asr_points():
    pts = [{"threshold": t, "ca": ca, "asr": asr} for t, ca, asr in [(0.0, 0.95, 0.9), (0.1, 0.94, 0.04), (0.2, 0.90, 0.0)]]
    assert oracle_point(pts, 0.05) == 1
    assert oracle_point(pts[:1], 0.05) == 0


def test_number_sweep_and_fixed_choice(tmp_path, default_run):
    from rnp.stages import prune

    from .conftest import make_config

    _, root, _ = default_run
    cfg = make_config(**{"prune.sweep": "number", "prune.max_number": 60, "prune.number_step": 20, "prune.select": "fixed", "prune.number": 25})
    m = prune.run(cfg, root / "poison", root / "train", root / "recover", tmp_path / "prune")
    rows = list(csv.DictReader(open(tmp_path / "prune/curve.csv")))
    assert [int(r["pruned"]) for r in rows] == [0, 20, 25, 40, 60]
    assert m["pruned"] == 25
    masks, _ = load_tensors(root / "recover/masks.safetensors")
    flat = torch.cat(list(masks.values()))
    assert m["threshold"] == flat.sort().values[24].item()  # the 25th lowest mask
    pruned, _, _ = load_model(tmp_path / "prune/model.safetensors")
    assert sum(int((bn.weight == 0).sum()) for bn in bn_layers(pruned).values()) == 25


def test_masks_that_fail_leave_the_model_unpruned_and_say_so(tmp_path, capsys, default_run):
    """All masks at 0: t = 0 prunes every channel, so the stage must keep the model and report it, not ship a broken one."""
    import shutil

    from rnp.io import atomic_write_bytes, tensors_bytes
    from rnp.stages import prune

    from .conftest import make_config

    _, root, _ = default_run
    recover = tmp_path / "recover"
    shutil.copytree(root / "recover", recover)
    masks, meta = load_tensors(recover / "masks.safetensors")
    atomic_write_bytes(recover / "masks.safetensors", tensors_bytes({k: torch.zeros_like(v) for k, v in masks.items()}, meta))
    m = prune.run(make_config(), root / "poison", root / "train", recover, tmp_path / "prune")
    assert m["threshold"] is None and m["pruned"] == 0
    assert (m["ca"], m["asr"]) == (m["ca_before"], m["asr_before"])
    assert "NOTHING PRUNED" in capsys.readouterr().out
    original, _, _ = load_model(root / "train/model.safetensors")
    kept, _, _ = load_model(tmp_path / "prune/model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), kept.state_dict().values()))


def _legend(monkeypatch, **kwargs) -> list[str]:
    import rnp.plots as plots

    seen = {}
    monkeypatch.setattr(plots, "png", lambda fig: seen.setdefault("labels", [t.get_text() for t in fig.axes[0].get_legend().get_texts()]))
    plots.curve_png(**kwargs)
    return seen["labels"]


def test_defend_curve_shows_only_what_defend_measured(monkeypatch):
    rows = [{"threshold": t, "holdout_acc": 0.9 - t / 4} for t in (0.0, 0.05, 0.1)]
    labels = _legend(monkeypatch, rows=rows, x="threshold", selected=1, before={"holdout_acc": 0.92})
    assert labels == ["held-out clean accuracy (chooses t)", "selected threshold=0.05"]


def test_prune_curve_names_test_ca_asr_heldout_and_the_oracle(monkeypatch):
    rows = [{"threshold": t, "holdout_acc": 0.9, "ca": 0.9, "asr": 1 - 2 * t, "ra": 0.0} for t in (0.0, 0.05, 0.1)]
    labels = _legend(monkeypatch, rows=rows, x="threshold", selected=None, oracle=2, before={"ca": 0.95, "asr": 1.0, "holdout_acc": 0.9})
    assert labels == ["test clean accuracy (CA)", "attack success rate (ASR)", "held-out clean accuracy (chooses t)",
                      "selected: nothing pruned", "oracle threshold=0.1 (test labels)"]


def test_report_is_one_row_per_model_with_the_stage_metrics(default_run, capsys):
    from rnp.cli import main

    _, root, metrics = default_run
    assert main(["report", "--data", str(root), "--md"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert list(rows) == ["backdoored (train)", "unlearned", "masks (recover)", "purified (prune)", "oracle (test labels)",
                          "purified, classifier biases refitted"]
    assert f"| {100 * metrics['prune']['asr_bias_refit']:.1f} % |" in rows["purified, classifier biases refitted"]
    assert f"| {100 * metrics['prune']['ca']:.1f} % | {100 * metrics['prune']['asr']:.1f} % |" in rows["purified (prune)"]
    assert f"{metrics['recover']['zero_masks']} at 0" in rows["masks (recover)"]
    assert main(["report", "--data", str(root / "nowhere")]) == 2


def test_the_stage_says_how_coarse_its_held_out_set_is_and_warns_below_the_budget(tmp_path, capsys, default_run):
    from rnp.stages import prune

    from .conftest import make_config

    _, root, _ = default_run
    prune.run(make_config(), root / "poison", root / "train", root / "recover", tmp_path / "a")
    out = capsys.readouterr().out
    assert "(102 held-out images, 1.0% each)" in out and "coarser than" not in out
    assert "prune: WARNING: refitting only the classifier's 10 biases on the clean defense images brings ASR back to" in out
    prune.run(make_config(**{"prune.max_clean_drop": 0.005}), root / "poison", root / "train", root / "recover", tmp_path / "b")
    out = capsys.readouterr().out
    assert "prune: WARNING: 102 held-out images: one image is 1.0% of accuracy, coarser than prune.max_clean_drop 0.5%" in out
    assert "give at least 589 clean images" in out


def _bright_or_dark():
    """A model that tells bright images (class 1) from dark ones (class 0) by channel 0; channel 1 is a
    channel whose trained bias, once its weight is zeroed, pushes every image to class 0."""
    from torch import nn

    from rnp.data import DeviceData, ImageSet

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
        model[0].bias.zero_()
        model[1].running_mean.zero_()
        model[1].running_var.fill_(1.0)
        model[1].weight.copy_(torch.tensor([4.0, -10.0]))
        model[1].bias.copy_(torch.tensor([0.0, 6.0]))
        model[5].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # channel 0 votes for class 1, channel 1 for class 0
        model[5].bias.copy_(torch.tensor([0.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 200, 40).to(torch.uint8).expand(64, 1, 4, 4).clone()
    images = (images.int() + torch.randint(-10, 10, images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    data = DeviceData(ImageSet(images, labels), (0.5,), (0.5,), "cpu")
    return model, data


def test_fitted_constants_undo_the_offset_a_pruned_channel_leaves_and_change_nothing_else():
    from rnp.defense import mask_layers
    from rnp.defense.prune import constant_fitter
    from rnp.metrics import accuracy

    model, data = _bright_or_dark()
    layers = mask_layers(model, "bn")
    assert accuracy(model, data) == 1.0
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[1].weight[1] = 0.0  # prune channel 1: it now outputs 6 for every image, far more than it gave a bright one
    assert accuracy(model, data) == 0.5  # the offset sends the bright images to class 0 too
    fit_constants = constant_fitter(model, layers, data, PruneParams(fit_epochs=60, fit_lr=0.2), seed=0)
    chosen = {"1": torch.tensor([False, True])}
    fit_constants(chosen)
    assert accuracy(model, data) == 1.0
    fitted = model[1].bias.detach().clone()
    assert fitted[0] == weights["1.bias"][0] and fitted[1] < weights["1.bias"][1]  # only the pruned channel's constant moved
    for name, value in model.state_dict().items():
        if name not in ("1.bias", "1.weight"):
            assert torch.equal(value, weights[name]), name  # BN statistics included: eval mode throughout
    assert all(p.requires_grad for p in model.parameters())
    fit_constants(chosen)
    assert torch.equal(model[1].bias, fitted)  # the same channels get the same constants
    fit_constants({"1": torch.tensor([False, False])})
    assert torch.equal(model[1].bias, weights["1.bias"])  # nothing pruned: the trained biases are back


def test_decide_pruning_with_fitted_constants_measures_and_keeps_the_fitted_model():
    from rnp.defense import mask_layers
    from rnp.defense.prune import constant_fitter
    from rnp.metrics import accuracy

    model, data = _bright_or_dark()
    layers = mask_layers(model, "bn")
    masks = {"1": torch.tensor([0.9, 0.0])}
    p = PruneParams(fit_epochs=60, fit_lr=0.2, max_threshold=0.2, step=0.1)
    plain_params = PruneParams(max_threshold=0.2, step=0.1, max_first_drop=1.0)
    plain = decide_pruning(layers, masks, plain_params, lambda: {"holdout_acc": accuracy(model, data)})
    assert [r["holdout_acc"] for r in plain.curve] == [0.5, 0.5, 0.5]
    model, data = _bright_or_dark()
    layers = mask_layers(model, "bn")
    d = decide_pruning(layers, masks, p, lambda: {"holdout_acc": accuracy(model, data)}, on_pruned=constant_fitter(model, layers, data, p, seed=0))
    assert [r["holdout_acc"] for r in d.curve] == [1.0, 1.0, 1.0] and d.threshold == 0.2
    assert model[1].weight[1] == 0 and model[1].bias[1] < 6.0 and accuracy(model, data) == 1.0


def test_refitting_the_classifier_bias_moves_nothing_else_and_undoes_a_constant_offset():
    from rnp.defense.prune import classifier, refit_classifier_bias
    from rnp.metrics import accuracy

    model, data = _bright_or_dark()
    with torch.no_grad():
        model[1].weight[1] = 0.0  # as above: channel 1's constant adds 6 to class 0's logit for every image
    assert accuracy(model, data) == 0.5 and classifier(model, 2) is model[5] and classifier(model, 3) is None
    refitted = refit_classifier_bias(model, data, 2, PruneParams(fit_epochs=60, fit_lr=0.2), seed=0)
    assert accuracy(refitted, data) == 1.0 and accuracy(model, data) == 0.5  # a copy; the input is untouched
    changed = [k for k, v in refitted.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed == ["5.bias"]


def test_the_prune_stage_reports_whether_the_backdoor_survives_a_refit_of_the_classifier_bias(default_run):
    """On the digits default run it does: the pruning shifted the class priors, not the trigger's path (docs/quality.md)."""
    _, root, _ = default_run
    m = json.loads((root / "prune/metrics.json").read_text())
    assert m["asr"] <= 0.05 and m["asr_bias_refit"] >= 0.5  # 10 numbers refitted on the defender's own clean images
    assert m["ca_bias_refit"] >= m["ca"]


def test_the_prune_stage_follows_the_unlearn_stages_detection_as_rnp_defend_does(tmp_path, default_run):
    """One rule in both places: masks that come with "no evidence" leave the model unpruned (the sweep still measured),
    unless prune.force; the default run's own detection ("backdoor suspected") prunes."""
    from dataclasses import asdict, replace

    from rnp.defense import Detection
    from rnp.io import tensors_bytes
    from rnp.stages import prune

    from .conftest import make_config

    cfg, root, _ = default_run
    unlearn_metrics = json.loads((root / "unlearn/metrics.json").read_text())
    masks, meta = load_tensors(root / "recover/masks.safetensors")
    detection = Detection(**meta["detection"])
    assert detection.backdoored == unlearn_metrics["backdoor_suspected"] is True
    assert detection.target == unlearn_metrics["suspected_target"] == cfg.attack.target
    clean_looking = replace(detection, unlearned_acc=0.9)  # unlearning did not collapse: no evidence
    (tmp_path / "recover").mkdir()
    (tmp_path / "recover/masks.safetensors").write_bytes(tensors_bytes(masks, {**meta, "detection": asdict(clean_looking)}))
    kept = prune.run(cfg, root / "poison", root / "train", tmp_path / "recover", tmp_path / "kept")
    forced = prune.run(make_config(**{"prune.force": True}), root / "poison", root / "train", tmp_path / "recover", tmp_path / "forced")
    as_run = json.loads((root / "prune/metrics.json").read_text())
    assert kept["pruned"] == 0 and kept["threshold"] is None and kept["asr"] == kept["asr_before"]
    assert forced["pruned"] == as_run["pruned"] > 0 and forced["asr"] == as_run["asr"]
    with (tmp_path / "kept/curve.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(sweep_points(cfg.prune, sum(m.numel() for m in masks.values())))
