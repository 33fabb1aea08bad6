"""Detection rules of rnp defend: "collapse" (the default) and "emergent" (the collapse must start on the final class alone)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnp.config import config_from_dict, with_overrides
from rnp.datafiles import load_imageset
from rnp.defense import CleanData, DefendOptions, defend
from rnp.defense.detection import COLLAPSED, Detection, emerged_alone, sink_scores
from rnp.errors import RnpError
from rnp.models import load_model

# per-epoch shares of other classes' images sent to each class, as unlearning goes (3 classes for brevity)
BACKDOOR_LIKE = [[0.02, 0.03, 0.02], [0.04, 0.12, 0.03], [0.10, 0.50, 0.08], [0.12, 0.70, 0.10]]  # class 1 emerges alone
LOOK_ALIKE = [[0.02, 0.03, 0.02], [0.10, 0.12, 0.09], [0.30, 0.25, 0.20], [0.45, 0.30, 0.20]]  # spread start, leader changes


def test_a_target_that_emerges_alone_passes_and_a_spread_collapse_does_not():
    assert emerged_alone(BACKDOOR_LIKE, target=1)
    assert not emerged_alone(BACKDOOR_LIKE, target=0)  # the emerging class is 1, whatever leads later
    assert not emerged_alone(LOOK_ALIKE, target=0)  # at the first epoch >= 10 %, class 1 led, and not alone
    assert not emerged_alone([[0.02, 0.03, 0.02]] * 5, target=1)  # never collapsed onto anything


@settings(max_examples=100, deadline=None)
@given(st.permutations(range(3)),
       st.one_of(st.sampled_from([BACKDOOR_LIKE, LOOK_ALIKE]),
                 st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=1, max_size=6)))
def test_the_verdict_does_not_depend_on_how_classes_are_numbered(order, history):
    renamed = [[scores[order[c]] for c in range(3)] for scores in history]
    for target in range(3):
        assert emerged_alone(renamed, order.index(target)) == emerged_alone(history, target)


def test_sink_scores_count_only_other_classes_images():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 0, 0, 2])  # every image of 1, one of 2 go to class 0
    assert sink_scores(preds, labels, 3) == [0.75, 0.0, 0.0]


def test_rule_emergent_only_narrows_what_collapse_flags():
    collapsed = dict(target=1, score=0.7, scores=[0.1, 0.7, 0.1], unlearned_acc=COLLAPSED)
    assert Detection(**collapsed, rule="collapse", emerged=False).backdoored
    assert not Detection(**collapsed, rule="emergent", emerged=False).backdoored
    assert Detection(**collapsed, rule="emergent", emerged=True).backdoored
    assert not Detection(**{**collapsed, "unlearned_acc": 0.8}, rule="emergent", emerged=True).backdoored


def test_defend_with_rule_emergent_reports_the_epochs_it_judged_by(default_run):
    cfg, root, _ = default_run
    model, _, _ = load_model(root / "train/model.safetensors")
    defense, info, _ = load_imageset(root / "poison/defense.safetensors")
    holdout, _, _ = load_imageset(root / "poison/holdout.safetensors")
    images, labels = torch.cat([defense.images, holdout.images]), torch.cat([defense.labels, holdout.labels])
    _, plain = defend(model, CleanData(images, labels, info.mean, info.std, 10), DefendOptions(cfg))
    emergent = config_from_dict(with_overrides(cfg.to_dict(), {"unlearn.detection": "emergent"}))
    _, report = defend(model, CleanData(images, labels, info.mean, info.std, 10), DefendOptions(emergent))
    assert report.detection.rule == "emergent" and len(report.detection.history) == report.unlearn_epochs
    assert report.detection.history[-1] == report.detection.scores  # the last epoch is the unlearned model detection reads
    emerged = emerged_alone(report.detection.history, report.detection.target)
    assert report.backdoor_suspected == (plain.backdoor_suspected and emerged)
    # the same unlearning and masks: the probes do not disturb the run (the collapse rule's report is unchanged by them)
    assert report.unlearn_epochs == plain.unlearn_epochs and report.detection.scores == plain.detection.scores
    assert all(torch.equal(report.masks[k], plain.masks[k]) for k in plain.masks)


def _trace(history: list[list[float]], final_acc: float) -> list[dict]:
    """A detection_trace trace whose confusion matrices (100 images a class) give exactly these per-epoch shares."""
    def confusion(shares):
        n = len(shares)
        rows = [[round(100 * shares[c]) if c != r else 0 for c in range(n)] for r in range(n)]
        return [[100 - sum(row) if c == r else v for c, v in enumerate(row)] for r, row in enumerate(rows)]
    epochs = [{"epoch": 0, "acc": None, "confusion": confusion([0.0] * len(history[0]))}]
    return epochs + [{"epoch": i + 1, "acc": final_acc if i == len(history) - 1 else 0.9, "confusion": confusion(h)}
                     for i, h in enumerate(history)]


def test_the_rule_screen_counts_targets_named_and_false_alarms_per_rule():
    from benchmarks.detection_trace import confusion_scores, rules_table

    backdoored = {"arch": "a", "attack": "badnets", "seed": 0, "target": 1, "trace": _trace(BACKDOOR_LIKE, 0.1)}
    clean = {"arch": "a", "attack": "clean", "seed": 0, "target": 0, "trace": _trace(LOOK_ALIKE, 0.1)}
    assert confusion_scores(clean["trace"][-1]["confusion"]) == LOOK_ALIKE[-1]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:4] for line in rules_table([backdoored, clean]).splitlines()[2:]}
    assert rows["current (≥ 25 % to one class)"] == ["1 / 1", "1 / 1", "1 / 1"]  # flagged, named, and the clean model flagged too
    emergent = next(cells for name, cells in rows.items() if name.endswith("(`--detection emergent`)"))
    assert emergent == ["1 / 1", "1 / 1", "0 / 1"]


def test_the_ceiling_counts_models_whose_target_leads_after_some_epoch_only():
    from benchmarks.detection_trace import ceiling_line

    leads = {"attack": "badnets", "seed": 0, "target": 1, "trace": _trace(BACKDOOR_LIKE, 0.1)}
    never = {"attack": "sig", "seed": 0, "target": 2, "trace": _trace(BACKDOOR_LIKE, 0.1)}  # class 2 never leads there
    clean = {"attack": "clean", "seed": 0, "target": 1, "trace": _trace(LOOK_ALIKE, 0.1)}  # not a backdoored model
    line = ceiling_line([leads, never, clean])
    assert "**1 of 2**" in line and "badnets 1/1" in line and "sig 0/1" in line


def test_an_unknown_rule_or_defense_is_refused_before_any_work_with_the_valid_names():
    with pytest.raises(RnpError, match="unlearn.detection must be one of collapse, emergent, got 'vote'"):
        config_from_dict({"unlearn": {"detection": "vote"}})
    with pytest.raises(RnpError, match=r"unknown defense 'nad' in --defense \(valid: anp, ft, rnp\)"):
        defend(torch.nn.Linear(2, 2), CleanData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), (0.0,), (1.0,), 2),
               defense="nad")
