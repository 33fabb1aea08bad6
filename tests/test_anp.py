"""ANP (Adversarial Neuron Pruning), RNP's baseline: the masks' mechanics, and `rnp defend --defense anp` end to end."""

import json
import re

import pytest
import torch
import yaml
from torch.nn.utils import parametrize

from rnp.cli import main
from rnp.config import AnpParams, AugmentParams, Config, config_from_dict
from rnp.defense import CleanData, DefendOptions, bn_layers, defend
from rnp.defense.anp import NoisyBias, NoisyMask, anp_masks
from rnp.errors import RnpError
from rnp.models import ModelSpec, create_model, load_model, model_bytes
from rnp.training import seeded_generator

from .conftest import default_params, random_clean_data

SPEC = ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,))


def test_an_unperturbed_all_ones_mask_changes_nothing_and_the_noise_scales_weight_and_bias():
    torch.manual_seed(0)
    model = create_model(SPEC).eval()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    bn = next(iter(bn_layers(model).values()))
    weight, bias = bn.weight.detach().clone(), bn.bias.detach().clone()
    w, b = NoisyMask(weight.shape[0]), NoisyBias(bias.shape[0])
    parametrize.register_parametrization(bn, "weight", w)
    parametrize.register_parametrization(bn, "bias", b)
    assert torch.equal(model(x), before)
    with torch.no_grad():
        w.noise.fill_(0.25)
        b.noise.fill_(-0.5)
    assert torch.equal(model(x), before)  # the noise acts only while perturbed
    w.perturbed = b.perturbed = True
    assert torch.equal(bn.weight, weight * 1.25) and torch.equal(bn.bias, bias * 0.5)


def test_anp_masks_lie_in_0_1_one_per_bn_channel_and_repeat_exactly_under_the_same_seeds():
    torch.manual_seed(0)
    model = create_model(SPEC)
    p = AnpParams(iterations=15, batch_size=16)

    def run(eps: float):
        torch.manual_seed(1)  # the noise's generator
        return anp_masks(model, random_clean_data(), p.model_copy(update={"eps": eps}), AugmentParams(), seeded_generator(0))

    masks, again, no_noise = run(0.4), run(0.4), run(0.0)
    assert list(masks) == list(bn_layers(model))
    assert all(m.shape == (layer.weight.shape[0],) for m, layer in zip(masks.values(), bn_layers(model).values()))
    assert all(((m >= 0) & (m <= 1)).all() for m in masks.values())
    assert all(torch.equal(masks[k], again[k]) for k in masks)
    assert any(not torch.equal(masks[k], no_noise[k]) for k in masks)  # the adversarial noise is what ANP adds
    assert any((m < 1).any() for m in masks.values())
    assert all(p.grad is None for p in model.parameters())  # the input model is untouched


def test_rnp_defend_with_defense_anp_purifies_and_reports_the_reference_threshold(default_run, tmp_path, capsys):
    cfg, root, _ = default_run
    params = default_params()
    params["anp"]["iterations"] = 60
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out" / "purified.safetensors"
    args = ["defend", "--model", str(root / "train/model.safetensors"), "--arch", "small_cnn", "--data", "digits", "--image-size", "8",
            "--defense-size", "300", "--params", str(tmp_path / "params.yaml"), "--out", str(out), "--defense", "anp"]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out/purified.report.json").read_text())
    assert report["defense"] == "anp" and report["verdict"].startswith("ANP (60 iterations, eps 0.4)")
    assert report["reference_threshold"]["threshold"] == 0.2 and report["reference_threshold"]["pruned"] >= 0
    assert "backdoor_suspected" not in report  # ANP reads no verdict off an unlearned model: the choice alone decides
    purified, _, _ = load_model(out)
    zeroed = sum(int((m.weight == 0).sum()) for m in purified.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert zeroed == report["pruned"]


def test_anp_on_a_model_without_batchnorm_is_one_line_before_any_work(tmp_path, capsys):
    spec = ModelSpec("small_cnn_gn", 10, (1, 8, 8), (0.5,), (0.25,))
    with pytest.raises(RnpError, match="defense anp perturbs and masks BatchNorm channels and the model has none"):
        defend(create_model(spec), CleanData(torch.zeros(40, 1, 8, 8, dtype=torch.uint8), torch.arange(40) % 10, (0.5,), (0.25,), 10),
               DefendOptions(Config()), defense="anp")
    path = tmp_path / "gn.safetensors"
    path.write_bytes(model_bytes(create_model(spec), spec, {}))
    out = tmp_path / "out.safetensors"
    assert main(["defend", "--model", str(path), "--arch", "small_cnn_gn", "--data", "digits", "--image-size", "8",
                 "--out", str(out), "--defense", "anp"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has none" in err and not out.exists()


@pytest.mark.parametrize("key,value,message", [
    ("eps", 1.5, "anp.eps must be in [0, 1]"),
    ("iterations", 0, "anp.iterations must be > 0"),
    ("lr", -0.2, "anp.lr must be > 0"),
    ("alpha", "0.2", "anp.alpha must be float"),
])
def test_anp_params_are_checked_like_every_other_key(key, value, message):
    with pytest.raises(RnpError, match=re.escape(message)):
        config_from_dict({"anp": {key: value}})
