"""benchmarks/quality.py: how a saved cell is scored (pure, on hand-made cells)."""

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.quality import ATTACKS, CPU_ARCHS, RESULTS, doc_section, markdown, missing_cells, score, shard, shard_arg
from rnp.config import PruneParams


def _cell(attack: str, curve: list[tuple[float, float, float]], refit: tuple[float, float] | None = None) -> dict:
    rows = [{"point": i * 0.05, "threshold": i * 0.05, "pruned": 10 * i, "holdout_acc": h, "ca": ca, "asr": asr, "ra": 0.0}
            for i, (h, ca, asr) in enumerate(curve)]
    cell = {
        "arch": "small_cnn", "attack": attack, "seed": 0, "target": 0, "holdout_n": 204,
        "before": {"holdout_acc": 0.95, "ca": 0.92, "asr": 1.0, "ra": 0.0},
        "curve": rows, "seconds": {"train": 10.0},
        "detection": {"backdoored": True, "target": 0, "score": 0.5},
    }
    if refit is not None:
        cell["bias_refit"] = {"ca": refit[0], "asr": refit[1]}
    return cell


def test_the_oracle_says_whether_any_threshold_could_meet_the_target_and_the_refit_whether_it_holds():
    prune = PruneParams(max_clean_drop=0.01)
    holds = _cell("badnets", [(0.95, 0.91, 0.02)], refit=(0.92, 0.03))
    comes_back = _cell("trojan", [(0.95, 0.91, 0.02)], refit=(0.92, 0.70))
    out_of_reach = _cell("blend", [(0.95, 0.91, 0.60), (0.80, 0.70, 0.01)])  # ASR goes only 22 points below the model
    s = score(holds, prune)
    assert s["clean_after"] and s["oracle_clean"] and s["holds"] is True
    assert score(comes_back, prune)["clean_after"] and score(comes_back, prune)["holds"] is False
    s = score(out_of_reach, prune)
    assert not s["clean_after"] and not s["oracle_clean"] and s["holds"] is None  # saved without the check
    text = markdown([holds, comes_back, out_of_reach], prune)
    assert "| 92.0 / 70.0 |" in text and "| — |" in text
    assert "a threshold that meets it exists (oracle, test labels) in 2 of 3" in text
    assert "ASR ≤ 5 % that survives a refit of the classifier's biases: 1 of 2 checked" in text


def test_each_results_folder_and_architecture_set_has_its_own_docs_section():
    """The regime15 ResNet-18 table must not overwrite the GPU's ResNet-18 rows, nor they the CPU table."""
    sections = [doc_section("reference", CPU_ARCHS), doc_section("reference", ["resnet18"]),
                doc_section("reference", ["resnet18"], RESULTS / "regime15"), doc_section("recover_epochs_5", CPU_ARCHS)]
    assert [(page.name, m) for page, m in sections] == [
        ("quality.md", "quality-reference"), ("quality.md", "quality-reference-resnet18"),
        ("quality.md", "quality-reference-resnet18-regime15"), ("levers.md", "quality-recover_epochs_5")]
    assert doc_section("reference", ["resnet18"], RESULTS / "regime15" / "..")[1] == "quality-reference-resnet18"  # the same folder, spelt otherwise
    assert all(f"<!-- {m}:start -->" in page.read_text() and f"<!-- {m}:end -->" in page.read_text() for page, m in sections)


@given(st.integers(1, 5), st.sets(st.integers(0, 47), max_size=48))
def test_workers_share_the_missing_cells_exactly_once_and_keep_an_attacks_architectures_together(n, saved):
    cells = [(seed, attack, arch) for seed in range(3) for attack in ATTACKS for arch in CPU_ARCHS]
    missing = [c for i, c in enumerate(cells) if i not in saved]
    shares = [shard(missing, k, n) for k in range(n)]
    assert sorted(c for share in shares for c in share) == sorted(missing)  # every missing cell once, no saved one
    owner = {c[:2]: k for k, share in enumerate(shares) for c in share}
    assert all(owner[c[:2]] == k for k, share in enumerate(shares) for c in share)  # shared poisoned data, one writer
    assert all(share == [c for c in missing if c in share] for share in shares)  # seed-major order kept


def test_missing_cells_skips_saved_ones_and_a_bad_shard_is_one_line(tmp_path):
    (tmp_path / "small_cnn-blend-seed0.json").write_text("{}")
    assert missing_cells(tmp_path, ["small_cnn"], ["badnets", "blend"], [0, 1]) == [
        (0, "badnets", "small_cnn"), (1, "badnets", "small_cnn"), (1, "blend", "small_cnn")]
    assert shard_arg("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(argparse.ArgumentTypeError, match="--shard"):
            shard_arg(bad)


def _mask_cell(attack: str, pruned: int, ca_t0: float, asr_t0: float) -> dict:
    point = {"threshold": 0.0, "point": 0.0, "pruned": pruned, "holdout_acc": 0.95, "ca": ca_t0, "asr": asr_t0, "ra": 0.9}
    return {"arch": "small_cnn", "attack": attack, "seed": 0, "defense": "reference", "target": 0, "settings": {},
            "before": {"ca": 0.92, "asr": 1.0 if attack != "clean" else 0.01, "ra": 0.0, "holdout_acc": 0.95},
            "curve": [point], "detection": {"backdoored": True, "target": 0, "score": 0.5}}


def test_the_mask_evidence_reads_zero_masks_off_each_cells_first_sweep_point(tmp_path):
    import json

    from benchmarks.masks import plot, rows, table

    (tmp_path / "reference").mkdir()
    (tmp_path / "regime15" / "reference").mkdir(parents=True)
    (tmp_path / "reference" / "small_cnn-badnets-seed0.json").write_text(json.dumps(_mask_cell("badnets", 70, 0.70, 0.0)))
    (tmp_path / "regime15" / "reference" / "small_cnn-badnets-seed0.json").write_text(json.dumps(_mask_cell("badnets", 4, 0.915, 0.01)))
    (tmp_path / "regime15" / "reference" / "small_cnn-clean-seed0.json").write_text(json.dumps(_mask_cell("clean", 30, 0.80, 0.0)))
    got = {(r["setting"], r["attack"]): r for r in rows(tmp_path)}
    assert sorted(got) == [("reference", "badnets"), ("regime15", "badnets"), ("regime15", "clean")]
    assert got["regime15", "badnets"]["zero_share"] == pytest.approx(4 / 352) and got["regime15", "badnets"]["clean_after"]
    assert got["reference", "badnets"]["ca_cost_t0"] == pytest.approx(0.22) and not got["reference", "badnets"]["oracle_clean"]
    text = table(list(got.values()))
    assert "(no warning): 1, 1 of 1 learnt backdoors clean after, 1 possible" in text
    assert "(the warning): 2, 0 of 1 learnt backdoors clean after, 0 possible" in text
    assert plot(list(got.values())).startswith(b"\x89PNG")


def _with_baselines(cell: dict, anp_curve: list[tuple[float, float, float]], ft_after: tuple[float, float]) -> dict:
    rows = [{"point": i * 0.05, "threshold": i * 0.05, "pruned": 5 * i, "holdout_acc": h, "ca": ca, "asr": asr, "ra": 0.0}
            for i, (h, ca, asr) in enumerate(anp_curve)]
    cell["seconds"] = {"train": 10.0, "unlearn": 3.0, "recover": 4.0, "prune": 50.0}
    cell["baselines"] = {
        "anp": {"after": {"ca": 0.0, "asr": 1.0}, "curve": rows, "seconds": 70.0},  # "after" is re-chosen from the curve
        "ft": {"after": {"ca": ft_after[0], "asr": ft_after[1], "threshold": None, "pruned": 0}, "curve": [], "seconds": 20.0},
    }
    return cell


def test_the_side_by_side_table_scores_every_defense_on_the_same_cells_and_says_who_wins_each_attack():
    from benchmarks.quality import outcome, side_by_side

    prune = PruneParams(max_clean_drop=0.01)
    # badnets: RNP clean (t = 0), ANP's choice keeps the backdoor (its clean point costs 12 held-out points), FT leaves it
    badnets = _with_baselines(_cell("badnets", [(0.95, 0.91, 0.02)]), [(0.95, 0.92, 0.90), (0.83, 0.80, 0.01)], (0.91, 0.97))
    # blend: both clean; ANP at a lower ASR
    blend = _with_baselines(_cell("blend", [(0.95, 0.91, 0.04)]), [(0.95, 0.915, 0.01)], (0.90, 0.50))
    clean = _with_baselines(_cell("clean", [(0.95, 0.85, 0.0)]), [(0.95, 0.92, 0.0)], (0.92, 0.0))
    unrun = _cell("trojan", [(0.95, 0.91, 0.02)])  # saved before the baselines: left out of the comparison
    anp = outcome(badnets, "anp", prune)
    assert anp["chosen"]["threshold"] == 0.0 and not anp["clean_after"] and anp["oracle"]["threshold"] == 0.05
    assert outcome(badnets, "ft", prune)["chosen"]["asr"] == 0.97 and outcome(badnets, "rnp", prune)["seconds"] == 7.0
    assert outcome(unrun, "anp", prune) is None
    text = side_by_side([badnets, blend, clean, unrun], prune, ["rnp", "anp", "ft"])
    assert "trojan" not in text and text.count("| small_cnn ×") == 3
    assert "**RNP**: clean after in **2 of 2** learnt cells; worse than chance in 0; clean models losing more than 2 points: 1 of 1" in text
    assert "**ANP**: clean after in **1 of 2** learnt cells" in text and "**FT**: clean after in **0 of 2** learnt cells" in text
    assert "- badnets: clean after in 1 of 1 (RNP) and 0 of 1 (ANP); mean after ASR 2.0 % against 90.0 %" in text
    assert "RNP beats ANP, as the paper says" in text
    assert "- blend: clean after in 1 of 1 (RNP) and 1 of 1 (ANP); mean after ASR 4.0 % against 1.0 %, CA 91.0 % against 91.5 %: " \
           "ANP ahead on ASR, against the paper." in text
    assert side_by_side([unrun], prune, ["rnp", "anp", "ft"]) == ""

