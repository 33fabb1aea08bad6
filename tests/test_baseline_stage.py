"""rnp baseline: ANP and plain fine-tuning on the pipeline's own model and clean data, measured as the prune stage measures RNP."""

import json

import torch
import yaml

from rnp.cli import main
from rnp.config import Config
from rnp.data import ImageSet, draw_split
from rnp.datafiles import DataInfo, imageset_bytes
from rnp.defense import CleanData, DefendOptions, prepare
from rnp.models import ModelSpec, create_model, load_model
from rnp.stages.baseline import stage_clean_data

from .conftest import default_params


def test_every_defense_is_given_the_images_the_rnp_stages_held_out(tmp_path):
    """The baselines go through rnp.defend, which splits the clean images itself: its split must be the poison stage's."""

    cfg = Config()
    n = 60
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 8, 8).contiguous()  # image i is all i
    every = ImageSet(images, torch.arange(n) % 10)
    fit_at, held_at = draw_split(n, n, cfg.data.defense_holdout, 5)  # as the poison stage picks them: another order
    info = DataInfo("test", 10, (1, 8, 8), (0.5,), (0.25,))
    (tmp_path / "defense.safetensors").write_bytes(imageset_bytes(every.subset(fit_at), info))
    (tmp_path / "holdout.safetensors").write_bytes(imageset_bytes(every.subset(held_at), info))
    data = stage_clean_data(tmp_path, cfg)
    assert isinstance(data, CleanData) and data.num_classes == 10
    prep = prepare(create_model(ModelSpec("small_cnn", 10, (1, 8, 8), (0.5,), (0.25,))), data, DefendOptions(cfg, min_accuracy=0.0))
    assert sorted(prep.holdout.images[:, 0, 0, 0].tolist()) == sorted(held_at.tolist())
    assert sorted(prep.fit.images[:, 0, 0, 0].tolist()) == sorted(fit_at.tolist())
    assert torch.equal(prep.holdout.labels.cpu(), (prep.holdout.images[:, 0, 0, 0].long() % 10).cpu())


def test_a_baseline_stage_runs_anp_on_the_pipelines_model_and_measures_its_sweep_like_prune(default_run, tmp_path, capsys):
    cfg, root, metrics = default_run
    params = default_params()
    params["anp"]["iterations"] = 40
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "anp"
    args = ["baseline", "--defense", "anp", "--params", str(tmp_path / "params.yaml"), "--poison", str(root / "poison"),
            "--train", str(root / "train"), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    # the same model, the same test sets, the same held-out images as the prune stage's
    prune = metrics["prune"]
    assert (m["ca_before"], m["asr_before"], m["holdout_acc_before"], m["holdout_size"]) == \
           (prune["ca_before"], prune["asr_before"], prune["holdout_acc_before"], prune["holdout_size"])
    rows = (out / "curve.csv").read_text().splitlines()
    assert rows[0].split(",")[:4] == ["point", "threshold", "pruned", "holdout_acc"] and len(rows) == 1 + 19
    assert m["defense"] == "anp" and m["oracle_asr"] is not None and m["reference_threshold"]["threshold"] == 0.2
    purified, _, _ = load_model(out / "model.safetensors")
    zeroed = sum(int((b.weight == 0).sum()) for b in purified.modules() if isinstance(b, torch.nn.BatchNorm2d))
    assert zeroed == m["pruned"]
    assert "baseline anp: ANP (40 iterations" in capsys.readouterr().out


def test_a_fine_tuning_baseline_has_no_sweep_and_rnp_or_an_unknown_name_is_one_line(default_run, tmp_path, capsys):
    cfg, root, _ = default_run
    params = default_params()
    params["ft"]["epochs"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp_path / "params.yaml"), "--poison", str(root / "poison"), "--train", str(root / "train")]
    assert main(["baseline", "--defense", "ft", *common, "--out", str(tmp_path / "ft")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["pruned"] == 0 and m["threshold"] is None and m["oracle_threshold"] is None and not (tmp_path / "ft" / "curve.csv").exists()
    assert m["ca"] != m["ca_before"] or m["asr"] != m["asr_before"]  # it trained
    capsys.readouterr()
    for name, message in (("rnp", "--defense rnp is the pipeline's own"), ("nad", "unknown defense 'nad'")):
        assert main(["baseline", "--defense", name, *common, "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and not (tmp_path / name).exists()
