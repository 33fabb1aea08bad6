import torch

from rnp.attacks import AttackContext, attack_targets, get_attack
from rnp.datafiles import load_imageset
from rnp.datasets import load_dataset
from rnp.poisoning import poison

from .conftest import make_config


def _clean_train(cfg):
    ds = load_dataset(cfg.data.dataset)
    return ds.train.split(cfg.data.test_fraction, cfg.seed)[0]


def test_badnets_changes_only_the_trigger_region():
    cfg = make_config()
    images = _clean_train(cfg).images[:50]
    ds = load_dataset("digits")
    ctx = AttackContext(cfg.attack, _clean_train(cfg), 10, ds.mean, ds.std, 0, None, None)  # badnets trains no surrogate
    out = get_attack("badnets")(ctx).test(images)
    s = cfg.attack.badnets.size
    changed = (out != images).any(dim=(0, 1))  # (H, W)
    region = torch.zeros_like(changed)
    region[-s:, -s:] = True  # bottom_right
    assert changed.any()
    assert not (changed & ~region).any()
    assert (out[:, :, -s:, -s:] == out[0, :, -s:, -s:]).all()  # one fixed patch on every image


def test_poisoned_training_set(default_run):
    cfg, root, metrics = default_run
    train, info, extra = load_imageset(root / "poison/train.safetensors", "poisoned")
    poisoned = extra["poisoned"].bool()
    assert poisoned.sum() == metrics["poison"]["poisoned"] == round(cfg.attack.rate * (len(train) + metrics["poison"]["holdout"]))
    assert (train.labels[poisoned] == cfg.attack.target).all()
    s = cfg.attack.badnets.size
    patch = train.images[poisoned][:, :, -s:, -s:]
    assert (patch == patch[0]).all()
    assert info.num_classes == 10 and info.input_shape == (1, 8, 8)


def test_triggered_test_set_excludes_the_target_class(default_run):
    cfg, root, _ = default_run
    clean, _, _ = load_imageset(root / "poison/test_clean.safetensors")
    trig, _, extra = load_imageset(root / "poison/test_poison.safetensors", "targets")
    assert (trig.labels != cfg.attack.target).all()
    assert len(trig) == int((clean.labels != cfg.attack.target).sum())
    assert (extra["targets"] == cfg.attack.target).all()


def test_defense_data_is_clean_and_holdout_is_unseen(default_run):
    cfg, root, _ = default_run
    train, _, extra = load_imageset(root / "poison/train.safetensors", "poisoned")
    defense, _, _ = load_imageset(root / "poison/defense.safetensors")
    holdout, _, _ = load_imageset(root / "poison/holdout.safetensors")
    assert len(defense) + len(holdout) == cfg.data.defense_size
    clean_train = {tuple(x.flatten().tolist()) for x, p in zip(train.images, extra["poisoned"]) if not p}
    all_train = {tuple(x.flatten().tolist()) for x in train.images}
    # every defense image is a never-poisoned training image; holdout images were never trained on
    assert all(tuple(x.flatten().tolist()) in clean_train for x in defense.images)
    assert sum(tuple(x.flatten().tolist()) in all_train for x in holdout.images) <= 2  # digits has a few exact duplicates


def test_all_to_all_targets_next_class():
    labels = torch.arange(10)
    assert attack_targets(labels, "all_to_all", 0, 10).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    cfg = make_config(**{"attack.mode": "all_to_all"})
    ds = load_dataset("digits")
    pd = poison(ds, cfg.data, cfg.attack, cfg.seed)
    assert len(pd.test_poison) == len(pd.test_clean)
    assert (pd.test_targets == (pd.test_poison.labels + 1) % 10).all()
    relabelled = pd.train.labels[pd.poisoned]
    assert len(set(relabelled.tolist())) > 1


def test_seed_changes_poisoning_and_same_seed_repeats_it():
    ds = load_dataset("digits")
    a = poison(ds, make_config().data, make_config().attack, 0)
    b = poison(ds, make_config().data, make_config().attack, 0)
    c = poison(ds, make_config().data, make_config().attack, 1)
    assert torch.equal(a.poisoned, b.poisoned) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.poisoned, c.poisoned)


def test_a_clean_baseline_poisons_nothing_and_keeps_the_triggered_test_set(tmp_path):
    """poison.run(clean=True): the same data with no poisoned or cover image, the attack's triggered test set unchanged
    (a clean model's ASR is then the trigger's natural rate): the baseline the quality benchmark's clean cells train."""
    from rnp.stages import poison as poison_stage

    cfg = make_config()
    poisoned = poison_stage.run(cfg, tmp_path / "poisoned")
    clean = poison_stage.run(cfg, tmp_path / "clean", clean=True)
    assert poisoned["poisoned"] > 0 and clean["poisoned"] == 0
    train, _, extra = load_imageset(tmp_path / "clean/train.safetensors", "poisoned", "cover")
    assert not extra["poisoned"].any() and not extra["cover"].any()
    a, _, ta = load_imageset(tmp_path / "poisoned/test_poison.safetensors", "targets")
    b, _, tb = load_imageset(tmp_path / "clean/test_poison.safetensors", "targets")
    assert torch.equal(a.images, b.images) and torch.equal(ta["targets"], tb["targets"])
