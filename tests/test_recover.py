import csv
import json

import pytest
import torch
from torch import nn

from rnp.defense import attach_masks, bn_layers
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


TORCHVISION_ARCHS = ["torchvision:resnet18", "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("arch", list_models() + TORCHVISION_ARCHS)
def test_masking_works_on_every_architecture(arch):
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3)).eval()
    x = torch.randn(4, 3, 32, 32)
    reference = model(x)
    masks = attach_masks(model)
    assert masks and len(masks) == len(bn_layers(model))
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
        bn_layers(plain)[name].weight[3] = 0.0
    torch.testing.assert_close(masked, plain(x))
    assert not torch.equal(masked, reference)  # the zeroed channel reaches the output


def test_masks_attach_to_any_bn_model():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    masks = attach_masks(model)
    assert list(masks) == ["1"] and masks["1"].shape == (8,)


def test_torchvision_classifier_takes_grey_images_and_the_data_sets_classes():
    model = create_model(ModelSpec("torchvision:resnet18", 7, (1, 8, 8), (0.5,), (0.25,))).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
