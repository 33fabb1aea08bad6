"""Every registered attack on digits32: what each trigger may change, labels, cover images, determinism."""

from functools import cache

import pytest
import torch

from rnp.attacks import AttackContext, get_attack, list_attacks
from rnp.attacks.lc import pgd_away
from rnp.datasets import load_dataset
from rnp.errors import RnpError
from rnp.poisoning import poison

from .conftest import make_config

FAST = {  # the same code paths, fewer optimisation steps
    "data.dataset": "digits32",
    "attack.rate": 0.05,
    "attack.surrogate_epochs": 1,
    "attack.trojan.steps": 5,
    "attack.iad.epochs": 1,
    "attack.lc.steps": 2,
}


def fast_config(name: str, **more):
    return make_config(**{**FAST, "attack.name": name, **more})


@cache
def poisoned(name: str, seed: int = 0):
    cfg = fast_config(name)
    return cfg, poison(load_dataset("digits32"), cfg.data, cfg.attack, seed)


def _test_change(pd):
    """|triggered - clean| per test image, (N, C, H, W) float."""
    return (pd.test_poison.images.float() - pd.test_clean.images[pd.test_source].float()).abs()


@pytest.mark.parametrize("name", list_attacks())
def test_attack_triggers_test_images_deterministically(name):
    cfg, pd = poisoned(name)
    assert pd.test_poison.images.dtype == torch.uint8
    assert (_test_change(pd).flatten(1).amax(1) > 0).float().mean() > 0.95  # (nearly) every image is triggered
    again = poison(load_dataset("digits32"), cfg.data, cfg.attack, 0)
    assert torch.equal(again.train.images, pd.train.images) and torch.equal(again.test_poison.images, pd.test_poison.images)


@pytest.mark.parametrize("name", list_attacks())
def test_poisoned_labels_follow_the_attack_kind(name):
    cfg, pd = poisoned(name)
    build = get_attack(name)
    labels = pd.train.labels[pd.poisoned]
    assert (labels == cfg.attack.target).all()  # dirty-label: relabelled; clean-label: chosen from the target class
    assert int(pd.poisoned.sum()) > 0 and not (pd.poisoned & pd.cover).any()
    if build.clean_label:
        assert "all_to_all" not in build.modes


def test_badnets_changes_only_its_corner():
    cfg, pd = poisoned("badnets")
    s = cfg.attack.badnets.size
    changed = _test_change(pd).amax(dim=(0, 1)) > 0
    assert changed[-s:, -s:].all() and changed.sum() == s * s


def test_blend_is_a_convex_mix_with_one_pattern():
    cfg, pd = poisoned("blend")
    a = cfg.attack.blend.alpha
    x = pd.test_clean.images[pd.test_source].float()
    pattern = (pd.test_poison.images.float() - (1 - a) * x) / a  # same pattern for every image, up to rounding
    assert (pattern - pattern[0]).abs().max() <= 1.0 / a + 1e-3


def test_sig_adds_a_bounded_horizontal_signal():
    cfg, pd = poisoned("sig")
    assert _test_change(pd).max() <= cfg.attack.sig.delta + 0.5
    delta = pd.test_poison.images.float() - pd.test_clean.images[pd.test_source].float()
    unclipped = (pd.test_clean.images[pd.test_source].float() > 40) & (pd.test_clean.images[pd.test_source].float() < 215)
    rows = torch.where(unclipped, delta, torch.nan)[:, 0]  # (N, H, W): the signal is the same down every column
    assert torch.nanmean((rows - rows.nanmean(1, keepdim=True)).abs()).item() < 1.0


def test_trojan_stays_inside_its_watermark():
    cfg, pd = poisoned("trojan")
    s = cfg.attack.trojan.size
    changed = _test_change(pd).amax(dim=(0, 1)) > 0
    assert changed.any() and not changed[:-s, :].any() and not changed[:, :-s].any()


def test_lc_stamps_only_the_four_corners_at_test_time():
    cfg, pd = poisoned("lc")
    s = cfg.attack.lc.size
    corners = torch.zeros(32, 32, dtype=torch.bool)
    for rows in (slice(0, s), slice(32 - s, 32)):
        for cols in (slice(0, s), slice(32 - s, 32)):
            corners[rows, cols] = True
    test_changed = _test_change(pd).amax(dim=(0, 1)) > 0
    assert test_changed[corners].any() and not test_changed[~corners].any()


def test_lc_pgd_stays_within_eps_and_raises_the_surrogate_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (16,))
    hard = pgd_away(model, images, labels, eps=8.0, steps=5, mean=(0.5,) * 3, std=(0.25,) * 3)

    def loss(x):
        return torch.nn.functional.cross_entropy(model((x.float() / 255 - 0.5) / 0.25), labels).item()

    assert (hard.float() - images.float()).abs().max() <= 8.0 + 0.5
    assert loss(hard) > loss(images)


def test_lc_can_leave_a_black_background_black():
    """On Fashion-MNIST a perturbed black background is learnt as the target class itself (docs/quality.md)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    images = torch.zeros((8, 1, 32, 32), dtype=torch.uint8)
    images[:, :, 8:24, 8:24] = torch.randint(1, 256, (8, 1, 16, 16), dtype=torch.uint8)  # an object on black
    labels = torch.randint(0, 10, (8,))
    everywhere = pgd_away(model, images, labels, eps=16.0, steps=5, mean=(0.5,), std=(0.25,))
    on_object = pgd_away(model, images, labels, eps=16.0, steps=5, mean=(0.5,), std=(0.25,), background=False)
    black = images == 0
    assert (everywhere[black] > 0).any()  # the default perturbs the background too (Turner et al., on CIFAR)
    assert (on_object[black] == 0).all() and (on_object[~black] != images[~black]).any()


def test_wanet_warp_is_small_and_noise_mode_adds_correctly_labelled_cover():
    cfg, pd = poisoned("wanet")
    assert _test_change(pd).mean() < 8  # imperceptible on average
    assert int(pd.cover.sum()) == round(cfg.attack.wanet.cross_ratio * int(pd.poisoned.sum()))
    no_cover = poison(load_dataset("digits32"), cfg.data, fast_config("wanet", **{"attack.wanet.cross_ratio": 0.0}).attack, 0)
    assert int(no_cover.cover.sum()) == 0


def test_iad_triggers_depend_on_the_input():
    cfg, pd = poisoned("iad")
    residual = pd.test_poison.images.float() - pd.test_clean.images[pd.test_source].float()
    assert (residual[0] - residual[1]).abs().mean() > 1.0  # input-aware: two images, two triggers
    assert int(pd.cover.sum()) == round(cfg.attack.iad.cross_ratio * int(pd.poisoned.sum()))


def test_adaptive_blend_trains_on_partial_triggers_and_tests_on_the_full_one():
    cfg, pd = poisoned("adaptive_blend")
    ds = load_dataset("digits32")
    trigger = get_attack("adaptive_blend")(AttackContext(cfg.attack, ds.train, 10, ds.mean, ds.std, 0, None, None))  # no surrogate
    images = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)  # flat grey: every blended pixel changes
    trained = (trigger.poison_train(images) != images).flatten(1).float().mean(1)
    tested = (trigger.test(images) != images).flatten(1).float().mean(1)
    rate = cfg.attack.adaptive_blend.piece_rate
    assert ((trained - rate).abs() < 0.1).all() and (tested > 0.9).all()
    assert len({tuple(row) for row in (trigger.poison_train(images[:8]) != images[:8]).flatten(1).tolist()}) > 1
    assert int(pd.cover.sum()) == round(cfg.attack.adaptive_blend.cover_ratio * int(pd.poisoned.sum()))


@pytest.mark.parametrize("name", ["sig", "lc", "adaptive_blend"])
def test_all_to_one_only_attacks_refuse_all_to_all(name):
    cfg = fast_config(name, **{"attack.mode": "all_to_all"})
    with pytest.raises(RnpError, match=f"attack {name} does not support attack.mode all_to_all"):
        poison(load_dataset("digits32"), cfg.data, cfg.attack, 0)


def test_clean_label_rate_is_bounded_by_the_target_class():
    cfg = fast_config("sig", **{"attack.rate": 0.5})
    with pytest.raises(RnpError, match="only .* are target-class"):
        poison(load_dataset("digits32"), cfg.data, cfg.attack, 0)


@pytest.mark.parametrize("name", ["badnets", "trojan", "lc"])
def test_trigger_larger_than_the_image_is_refused(name):
    cfg = make_config(**{"attack.name": name, f"attack.{name}.size": 9})
    with pytest.raises(RnpError, match=f"attack.{name}.size 9 is larger than the 8x8 images"):
        poison(load_dataset("digits"), cfg.data, cfg.attack, 0)


def test_every_attack_section_in_the_config_belongs_to_a_registered_attack():
    """attack.<name> sections live in rnp/config.py (so that only poisoning imports the attacks): none may be orphaned."""
    from rnp.attacks import ATTACKS
    from rnp.config import AttackCommon, AttackParams

    sections = [name for name in AttackParams.model_fields if name not in AttackCommon.model_fields]
    registered = [name for name, _ in ATTACKS.items()]
    assert sections and set(sections) <= set(registered)
    assert sections == [name for name in registered if name in sections]  # params.yaml's order is registration order
