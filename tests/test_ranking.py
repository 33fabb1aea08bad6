"""The ranking screen (benchmarks.ranking): scores, pruning and the table, on hand-built models and results."""

import torch
from torch import nn

from benchmarks.ranking import prune_top, table, target_scores
from rnp.data import DeviceData, ImageSet


def two_channel_model() -> nn.Sequential:
    """Channel 0 feeds class 1's logit, channel 1 feeds class 0's: channel 0 is the one that pushes to class 1."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    return nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def images(n: int = 8) -> DeviceData:
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(50, 200, (n, 1, 4, 4), generator=g, dtype=torch.uint8), torch.tensor([0, 1] * (n // 2)))
    return DeviceData(data, (0.0,), (1.0,), "cpu")


def test_the_channel_that_pushes_other_classes_to_the_target_scores_highest_and_is_pruned_first():
    model = two_channel_model()
    (scores,) = target_scores(model, images(), target=1, batch_stats=False).values()
    assert scores[0] > 0 > scores[1]
    pruned = prune_top(model, {"1": scores}, k=1)
    assert pruned[1].weight.tolist() == [0.0, 1.0] and pruned[1].bias.tolist() == model[1].bias.tolist()  # bias kept
    assert model[1].weight.tolist() == [1.0, 1.0]  # the original is left alone
    (flipped,) = target_scores(model, images(), target=0, batch_stats=False).values()
    assert flipped[1] > 0 > flipped[0]
    tuned = prune_top(model, {"1": scores}, k=1, tune_on=images())  # fine-tuned afterwards: channel 0 stays pruned
    assert tuned[1].weight[0] == 0.0 and tuned[1].weight[1] != 1.0 and not torch.equal(tuned[5].weight, model[5].weight)
    assert model[1].weight.tolist() == [1.0, 1.0] and model[5].weight.tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_the_table_picks_the_best_point_under_5_percent_and_counts_cells_that_meet_the_target():
    results = [{"arch": "a", "attack": "badnets", "seed": 0, "target": 0, "suspected": 0, "before": [0.90, 1.0],
                "sweeps": {"masks": [[4, 0.89, 0.50], [8, 0.80, 0.00]], "push": [[4, 0.885, 0.04], [8, 0.70, 0.0]]}},
               {"arch": "b", "attack": "blend", "seed": 0, "target": 1, "suspected": 3, "before": [0.90, 1.0],
                "sweeps": {"masks": [[4, 0.9, 1.0], [8, 0.9, 1.0]], "push": [[4, 0.5, 0.03], [8, 0.4, 0.0]]}}]
    text = table(results)
    assert "| a × badnets, seed 0 | 90.0 / 100.0 | 8: 80.0 / 0.0 | **4: 88.5 / 4.0** |" in text
    assert "b × blend, seed 0 (suspected 3, target 1) | 90.0 / 100.0 | never ≤ 5 % | 4: 50.0 / 3.0 |" in text
    assert text.endswith("masks 0 of 2; push 1 of 2.")
    results[1]["sweeps"]["push, fine-tuned"] = [[4, 0.895, 0.01]]  # a ranking only one cell has: "—" in the others, counted over one
    text = table(results)
    assert "| **4: 88.5 / 4.0** | — |" in text and "**4: 89.5 / 1.0** |" in text and text.endswith("push 1 of 2; push, fine-tuned 1 of 1.")


def test_the_iterative_ranking_takes_channels_in_the_order_it_pruned_them():
    from benchmarks.ranking import iterative_scores, top_channels

    model = two_channel_model()
    (order,) = iterative_scores(model, images(), target=1, k_max=2, step=1).values()
    assert order.tolist() == [2.0, 1.0]  # channel 0 first: it is the one pushing to class 1
    assert top_channels({"1": order}, 1)["1"].tolist() == [True, False]
    assert model[1].weight.tolist() == [1.0, 1.0]  # scored on a copy


def test_masks_times_push_needs_both_a_low_mask_and_a_push_to_the_target():
    from benchmarks.ranking import masks_times_push

    one_minus_mask = {"bn": torch.tensor([0.9, 0.9, 0.1, 0.0])}
    push = {"bn": torch.tensor([2.0, -2.0, 2.0, 5.0])}
    combined = masks_times_push(one_minus_mask, push)["bn"]
    assert combined.argmax().item() == 0 and combined[1] == 0 and combined[3] == 0  # low mask and a push, or nothing


def test_a_bad_or_missing_cell_is_one_line_and_exit_2(tmp_path, capsys):
    import pytest

    from benchmarks.ranking import main

    for argv, message in ((["wrn16_1-badnets"], "is not ARCH:ATTACK"),
                          (["wrn16_1:badnets", "--work", str(tmp_path)], "no cached wrn16_1 x badnets seed-0 cell")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and message in err[-1]
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_automatic_k_prunes_as_much_as_the_held_out_images_allow_and_never_reads_test_numbers():
    from benchmarks.ranking import auto_k, auto_table

    # [k, test CA, test ASR, held-out accuracy]
    points = [[4, 0.91, 0.60, 0.93], [8, 0.90, 0.20, 0.925], [16, 0.60, 0.00, 0.90], [32, 0.91, 0.01, 0.93]]
    assert auto_k(0.94, points) == [32, 0.91, 0.01, 0.93]  # the largest k within 2 held-out points, not the first
    assert auto_k(0.94, points[:3]) == [8, 0.90, 0.20, 0.925]
    assert auto_k(0.99, points) is None
    cell = {"arch": "a", "attack": "trojan", "seed": 0, "target": 2, "suspected": 2, "before": [0.92, 1.0], "before_holdout": 0.94,
            "sweeps": {"masks × push, fine-tuned": points}}
    older = {**cell, "attack": "wanet", "sweeps": {"masks × push, fine-tuned": [p[:3] for p in points]}}  # no held-out numbers
    text = auto_table([cell, {**cell, "attack": "blend", "sweeps": {"masks × push, fine-tuned": points[:3]}}, older])
    assert "| a × trojan, seed 0 | 92.0 / 100.0 (94.0) | **32: 91.0 / 1.0** |" in text
    assert "| a × blend, seed 0 | 92.0 / 100.0 (94.0) | 8: 90.0 / 20.0 |" in text
    assert "| a × wanet, seed 0 | 92.0 / 100.0 (94.0) | — |" in text
    # the sweep without held-out numbers is not counted; a seed-1 cell is counted apart from seed 0 (the check)
    assert "- held-out budget 2 points: masks × push, fine-tuned, seed 0: 1 of 2." in text
    text = auto_table([cell, {**cell, "seed": 1, "before_holdout": 0.955}], budgets=(0.02, 0.03))
    assert text.endswith("- held-out budget 2 points: masks × push, fine-tuned, seed 0: 1 of 1; masks × push, fine-tuned, seeds 1–2: 0 of 1.\n"
                         "- held-out budget 3 points: masks × push, fine-tuned, seed 0: 1 of 1; masks × push, fine-tuned, seeds 1–2: 1 of 1.")


def test_other_results_are_scored_alone_and_leave_the_docs_alone(tmp_path):
    import shutil
    from pathlib import Path

    from benchmarks.ranking import DOC, RESULTS, main

    shutil.copy(RESULTS / "wrn16_1-badnets-seed0.json", tmp_path / "wrn16_1-badnets-seed0.json")
    before = Path(DOC).read_text()
    text = main(["--table-only", "--results", str(tmp_path), "--no-doc"])
    rows = [line for line in text.splitlines() if line.startswith("| wrn16_1") or line.startswith("| small_cnn")]
    assert len(rows) == 1 and "wrn16_1 × badnets, seed 0" in rows[0]
    assert Path(DOC).read_text() == before
