"""Plain fine-tuning (FT), the floor beside RNP and ANP: what it trains, and `rnp defend --defense ft` end to end."""

import json
import re

import pytest
import torch
import yaml

from rnp.cli import main
from rnp.config import AugmentParams, FinetuneParams, config_from_dict
from rnp.defense.finetune import finetune
from rnp.errors import RnpError
from rnp.metrics import accuracy
from rnp.models import ModelSpec, create_model, load_model
from rnp.training import seeded_generator

from .conftest import default_params, random_clean_data

SPEC = ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,))


def test_finetune_fits_the_clean_images_repeats_exactly_and_leaves_the_input_model_alone():
    torch.manual_seed(0)
    model = create_model(SPEC).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data, p = random_clean_data(), FinetuneParams(epochs=30, lr=0.05, batch_size=16)
    tuned = finetune(model, data, p, AugmentParams(), seeded_generator(0))
    again = finetune(model, data, p, AugmentParams(), seeded_generator(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tuned.state_dict().items())
    # 64 random images with arbitrary labels: only training on them can score far above chance
    assert accuracy(model, data) < 0.3 and accuracy(tuned, data) > 0.6
    assert not tuned.training


def test_rnp_defend_with_defense_ft_fine_tunes_prunes_nothing_and_writes_no_masks(default_run, tmp_path, capsys):
    cfg, root, _ = default_run
    params = default_params()
    params["ft"]["epochs"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out" / "tuned.safetensors"
    args = ["defend", "--model", str(root / "train/model.safetensors"), "--arch", "small_cnn", "--data", "digits", "--image-size", "8",
            "--defense-size", "300", "--params", str(tmp_path / "params.yaml"), "--out", str(out), "--defense", "ft"]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out/tuned.report.json").read_text())
    assert report["defense"] == "ft" and report["pruned"] == 0 and report["threshold"] is None
    assert report["verdict"].startswith("fine-tuned 5 epochs on 198 clean images")
    assert sorted(p.name for p in out.parent.iterdir()) == ["tuned.report.json", "tuned.safetensors"]
    tuned, _, _ = load_model(out)
    original, _, _ = load_model(root / "train/model.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values()))
    assert 0.5 < report["holdout_acc_after"] <= 1 and report["test_acc_after"] > 0.5


@pytest.mark.parametrize("key,value,message", [
    ("epochs", 0, "ft.epochs must be > 0"),
    ("lr", 0, "ft.lr must be > 0"),
    ("batch_size", 1.5, "ft.batch_size must be int"),
    ("nesterov", True, "ft.nesterov"),
])
def test_ft_params_are_checked_like_every_other_key(key, value, message):
    with pytest.raises(RnpError, match=re.escape(message)):
        config_from_dict({"ft": {key: value}})
