import csv
import json

import pytest
import torch
from torch import nn

from rnp.defense import attach_masks, bn_layers, mask_layers
from rnp.defense.recover import ZERO_MASKS_WARN, zero_masks_warning
from rnp.io import load_tensors
from rnp.models import ModelSpec, create_model, list_models


def test_masks_are_in_unit_interval_one_per_bn_channel(default_run):
    cfg, root, _ = default_run
    masks, meta = load_tensors(root / "recover/masks.safetensors")
    model = create_model(ModelSpec(cfg.model.arch, 10, (1, 8, 8), (0.0,), (1.0,)))
    layers = bn_layers(model)
    assert set(masks) == set(layers)
    for name, bn in layers.items():
        assert masks[name].shape == (bn.num_features,)
        assert masks[name].min() >= 0 and masks[name].max() <= 1
    flat = torch.cat(list(masks.values()))
    assert (flat < 1).any()  # recovery learnt something
    rows = list(csv.DictReader(open(root / "recover/masks.csv")))
    assert len(rows) == flat.numel()
    m = json.loads((root / "recover/metrics.json").read_text())
    assert m["channels"] == flat.numel() and m["zero_masks"] == int((flat == 0).sum())


def test_recovery_that_switches_off_more_channels_than_where_rnp_works_is_a_warning():
    assert zero_masks_warning(62, 4800) is None  # 1.3 %: the regime's clean cell
    assert zero_masks_warning(int(ZERO_MASKS_WARN * 4800), 4800) is None and zero_masks_warning(0, 0) is None
    warning = zero_masks_warning(120, 4800)  # 2.5 %: the regime's clean model, which pruning them cost 14 points
    assert warning.startswith("recovery set 120 of 4800 masks (2.5%) to 0") and "expect pruning to cost clean accuracy" in warning


TORCHVISION_ARCHS = ["torchvision:resnet18", "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("arch", list_models() + TORCHVISION_ARCHS)
def test_masking_works_on_every_architecture(arch):
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)).eval()
    x = torch.randn(4, 3, 32, 32)
    reference = model(x)
    masks = attach_masks(model, "auto")  # BN, or the norm layers of a model without BN
    assert masks and len(masks) == len(mask_layers(create_model(ModelSpec(arch, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)), "auto"))
    # 1) an all-ones mask changes nothing
    torch.testing.assert_close(model(x), reference)
    # 2) a zero mask on a channel equals zeroing that channel's BN weight
    name = list(masks)[len(masks) // 2]
    with torch.no_grad():
        masks[name][3] = 0.0
    masked = model(x)
    plain = create_model(ModelSpec(arch, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)).eval()
    state = {k.replace("parametrizations.weight.original", "weight"): v for k, v in model.state_dict().items() if "mask" not in k}
    plain.load_state_dict(state)
    with torch.no_grad():
        mask_layers(plain, "auto")[name].weight[3] = 0.0
    torch.testing.assert_close(masked, plain(x))
    assert not torch.equal(masked, reference)  # the zeroed channel reaches the output


def test_masks_attach_to_any_bn_model():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    masks = attach_masks(model)
    assert list(masks) == ["1"] and masks["1"].shape == (8,)


def test_torchvision_classifier_takes_grey_images_and_the_data_sets_classes():
    model = create_model(ModelSpec("torchvision:resnet18", 7, (1, 8, 8), (0.5,), (0.25,))).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("on,norm", [("conv", None), ("norm", "group"), ("norm", "layer"), ("auto", None)])
def test_masking_without_batchnorm(on, norm):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    if norm == "group":
        layers.append(nn.GroupNorm(2, 8))
    elif norm == "layer":
        layers.append(nn.LayerNorm([8, 6, 6]))
    model = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(2, 3, 6, 6)
    reference = model(x)
    first = mask_layers(model, on)
    name = next(iter(first))
    plain_weight = first[name].weight.detach().clone()
    masks = attach_masks(model, on)
    assert set(masks) == set(first) and masks[name].shape == (plain_weight.shape[0],)
    torch.testing.assert_close(model(x), reference)  # all-ones: identity
    with torch.no_grad():
        masks[name][2] = 0.0
    masked = model(x)
    assert torch.equal(first[name].weight[2], torch.zeros_like(plain_weight[2]))  # the masked weight reads as zero
    assert not torch.equal(masked, reference)
    if on == "auto":
        assert mask_layers(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), "auto").keys() == {"1"}


@pytest.mark.parametrize("mask_on", ["norm", "conv"])
def test_a_groupnorm_model_is_masked_through_the_pipeline(tmp_path, mask_on):
    from rnp.stages import run_all

    from .conftest import make_config

    m = run_all(make_config(**{"model.arch": "small_cnn_gn", "recover.mask_on": mask_on}), tmp_path)
    assert m["recover"]["layers"] == 4 and m["recover"]["channels"] == 352
    assert m["recover"]["mean_mask"] < 1.0  # the masks learnt something
    assert m["prune"]["asr_before"] > 0.9


def test_masking_bn_and_conv_of_a_bn_model_differ(tmp_path):
    """Conv-output masks in front of BatchNorm are normalised away: recovery cannot move them."""
    model = create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,)))
    assert set(mask_layers(model, "conv")) != set(mask_layers(model, "bn"))
    x = torch.randn(16, 1, 8, 8)
    masks = attach_masks(model, "conv")
    reference = model(x)
    with torch.no_grad():
        masks["features.0.0"].mul_(0.5)  # train-mode BN: scaling a conv's output changes nothing
    torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)


def test_fast_recover_matches_a_plain_per_sample_loop():
    """The device-resident path and a DataLoader over PIL images with torchvision transforms learn the same masks."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from benchmarks.speed import PerSample
    from rnp.config import AugmentParams, RecoverParams
    from rnp.data import DeviceData, ImageSet
    from rnp.defense import recover
    from rnp.training import seeded_generator

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (96, 1, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 10, (96,), generator=g))
    torch.manual_seed(0)
    model = create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,)))
    p = RecoverParams(epochs=3, batch_size=32)
    fast = recover(model, DeviceData(data, (0.5,), (0.25,), torch.device("cpu")), p, AugmentParams(), seeded_generator(0))

    plain_model = create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,)))
    plain_model.load_state_dict(model.state_dict())
    plain_model.requires_grad_(False)
    masks = attach_masks(plain_model)
    opt = torch.optim.SGD(masks.values(), lr=p.lr, momentum=p.momentum)
    per_sample = PerSample(data, transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))]))
    gen = seeded_generator(0)
    for _ in range(p.epochs):  # the same batch order as the fast path's generator
        order = torch.randperm(len(data), generator=gen)
        plain_model.train()
        for x, y in DataLoader(per_sample, batch_size=p.batch_size, sampler=order.tolist()):
            opt.zero_grad()
            (p.alpha * nn.functional.cross_entropy(plain_model(x), y)).backward()
            opt.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0, 1)
    for name in fast:
        torch.testing.assert_close(fast[name], masks[name].detach(), atol=1e-4, rtol=1e-4)
    assert any((m < 1).any() for m in fast.values())


def test_recovery_on_running_bn_statistics_keeps_them_and_learns_other_masks():
    """recover(bn_stats="running") normalises with the unlearned model's statistics (eval mode), which no step changes."""
    from rnp.config import AugmentParams, RecoverParams
    from rnp.data import DeviceData, ImageSet
    from rnp.defense import recover
    from rnp.training import seeded_generator

    torch.manual_seed(0)
    model = create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,)))
    data = DeviceData(ImageSet(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 10), (0.5,), (0.25,), "cpu")
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    p = RecoverParams(epochs=2, batch_size=16)
    running = recover(model, data, p, AugmentParams(), seeded_generator(0), bn_stats="running")
    batch = recover(model, data, p, AugmentParams(), seeded_generator(0))
    assert any(not torch.equal(running[k], batch[k]) for k in running)
    assert all(((m >= 0) & (m <= 1)).all() for m in running.values())
    # the epoch itself: in eval mode BN's statistics stay, in train mode they move
    from rnp.training import run_epoch

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run_epoch(model, data, opt, 16, seeded_generator(0), AugmentParams(), train_mode=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    run_epoch(model, data, opt, 16, seeded_generator(0), AugmentParams())
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in stats.items() if v.is_floating_point())
