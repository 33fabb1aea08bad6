"""benchmarks/levers.py: the scoring that decides whether a lever is kept (pure, on hand-made results)."""

from benchmarks.levers import score, table
from rnp.config import PruneParams


def _result(attack: str, curve: list[tuple[float, float, float]], target: int = 0, detected: int = 0, backdoored: bool = True) -> dict:
    rows = [{"point": i * 0.05, "threshold": i * 0.05, "pruned": 10 * i, "holdout_acc": h, "ca": ca, "asr": asr}
            for i, (h, ca, asr) in enumerate(curve)]
    return {
        "arch": "small_cnn", "attack": attack, "seed": 0, "target": target,
        "before": {"holdout_acc": 0.95, "ca": 0.92, "asr": 1.0 if attack != "clean" else 0.01},
        "curve": rows, "masks": {"zero": 3}, "seconds": {"total": 10.0},
        "detection": {"backdoored": backdoored, "target": detected, "score": 0.5},
    }


def test_a_lever_counts_clean_after_only_within_two_points_and_scores_detection_per_model():
    prune = PruneParams(max_clean_drop=0.01)
    cleaned = _result("badnets", [(0.95, 0.91, 0.02), (0.90, 0.80, 0.0)])  # t = 0 removes it at 1 point: chosen
    # the second point is within 1 point of t = 0: chosen, ASR gone, but 5 points below the model
    costly = _result("blend", [(0.94, 0.88, 0.03), (0.93, 0.87, 0.0)], target=1, detected=6)
    clean = _result("clean", [(0.95, 0.92, 0.01)], backdoored=True)  # flagged: a false alarm
    s = score(cleaned, prune)
    assert s["learnt"] and s["clean_after"] and s["detected"] and abs(s["ca_drop"] - 0.01) < 1e-9
    s = score(costly, prune)
    assert s["learnt"] and not s["clean_after"] and not s["detected"] and s["chosen"]["asr"] == 0.0
    assert not score(clean, prune)["learnt"] and score(clean, prune)["detected"]
    row = table({"lever": [cleaned, costly, clean]}, prune).splitlines()[2]
    # CA drops 1 and 5 points; ASR 2 % and 0 %; the oracle (best CA at ASR <= 5 %) could clean only the first: 1 and 4 points
    assert row == "| lever | 1 / 2 | 1 / 2 | 3.0 | 2.5 | 1.0 | — | 0 | 1 / 2 | 1 / 1 | 3 | 10 |"  # — : saved without the bias check
    cleaned["bias_refit"] = {"point": 0.0, "ca": 0.92, "asr": 0.9}  # the check at the chosen point (t = 0)
    costly["bias_refit"] = {"point": 0.05, "ca": 0.9, "asr": 0.5}
    assert score(cleaned, prune)["refit_asr"] == 0.9
    assert table({"lever": [cleaned, costly, clean]}, prune).splitlines()[2].split(" | ")[6] == "70.0"
    assert score(cleaned, prune)["oracle_clean"] and not score(costly, prune)["oracle_clean"]


def test_the_oracle_column_counts_cells_no_threshold_cleans():
    from benchmarks.levers import oracle_drop

    prune = PruneParams(max_clean_drop=0.01)
    never = _result("sig", [(0.95, 0.91, 0.60), (0.90, 0.60, 0.30)])
    once = _result("badnets", [(0.95, 0.91, 0.60), (0.90, 0.86, 0.04)])
    assert score(never, prune)["oracle_drop"] is None and not score(never, prune)["oracle_clean"]
    assert oracle_drop([score(never, prune), score(once, prune)]) == "6.0 (1 never ≤ 5 %)"


def test_the_consistent_detection_rule_needs_the_same_leader_from_the_first_epoch():
    from benchmarks.levers import detection_rules, detection_table

    def model(attack, target, leaders, flagged=True):
        trace = [{"scores": [0.5 if c == lead else 0.1 for c in range(10)]} for lead in leaders]
        return {"attack": attack, "target": target, "detection": {"backdoored": flagged, "target": leaders[-1]}, "unlearn_trace": trace}

    steady, wandering = model("badnets", 0, [0, 0, 0]), model("clean", 0, [6, 4, 0])
    assert detection_rules(steady) == {"current": (True, 0), "consistent": (True, 0)}
    assert detection_rules(wandering) == {"current": (True, 0), "consistent": (False, 0)}
    table = detection_table([steady, wandering, model("blend", 1, [6, 1])])
    assert "| current | 2 / 2 | 1 / 1 |" in table and "| consistent | 1 / 2 | 0 / 1 |" in table


def test_the_constants_figure_needs_all_four_badnets_sweeps():
    from benchmarks.levers import constants_png

    def sweep(arch: str) -> dict:
        return {**_result("badnets", [(0.95, 0.91, 0.3), (0.9, 0.85, 0.01)]), "arch": arch}

    full = {lever: [sweep("small_cnn"), sweep("wrn16_1")] for lever in ("recover_epochs_5", "fill_fit_recover_epochs_5")}
    png = constants_png(full)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert constants_png({**full, "fill_fit_recover_epochs_5": [sweep("small_cnn")]}) is None  # a panel missing: no half figure


def test_repair_fine_tunes_from_the_trained_model_each_time_and_keeps_pruned_channels_at_zero():
    import torch
    from torch import nn

    from benchmarks.levers import repair_fitter
    from rnp.compute import resolve_compute
    from rnp.data import DeviceData, ImageSet
    from rnp.defense import mask_layers
    from rnp.defense.prune import apply_pruning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    data = DeviceData(ImageSet(images, torch.randint(0, 3, (64,))), (0.5,), (0.25,), resolve_compute("cpu", "fp32"))
    layers = mask_layers(model, "bn")
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    original = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    prune = {name: torch.tensor([True, False, False, True]) for name in layers}

    def repaired() -> dict:
        apply_pruning(layers, original, prune)
        fitter(prune)
        return {k: v.clone() for k, v in model.state_dict().items()}

    results = {}
    for which, distil in (("bn", False), ("all", False), ("all", True)):  # distil: the trained model's outputs as targets
        model.load_state_dict(trained)
        fitter = repair_fitter(model, layers, data, which, 2, 0.05, distil, 0)
        first = results[which, distil] = repaired()
        (bn,) = layers.values()
        assert bn.weight[0] == 0 and bn.weight[3] == 0 and bn.weight[1] != trained["1.weight"][1]  # pruned stay 0, the rest moved
        assert torch.equal(first["4.weight"], trained["4.weight"]) == (which == "bn")  # "bn" leaves the classifier alone
        assert all(torch.equal(first[k], v) for k, v in repaired().items())  # restored first: the same again
        apply_pruning(layers, original, {name: torch.zeros(4, dtype=torch.bool) for name in layers})
        fitter({name: torch.zeros(4, dtype=torch.bool) for name in layers})  # nothing pruned: the trained model back
        assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    assert not torch.equal(results["all", False]["4.weight"], results["all", True]["4.weight"])  # labels and soft targets differ
