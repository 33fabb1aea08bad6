"""Bad input: one clear line naming the key or file, exit code 2, nothing written."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from rnp.cli import main

from .conftest import default_params

BAD_PARAMS = [
    ("data.dataset", "imagenet", "unknown data set 'imagenet' in data.dataset"),
    ("attack.name", "nope", "unknown attack 'nope' in attack.name"),
    ("attack.rate", 1.5, "attack.rate must be in (0, 1)"),
    ("attack.rate", 0.0, "attack.rate must be in (0, 1)"),
    ("attack.target", 10, "attack.target 10 must be < the 10 classes"),
    ("attack.badnets.size", 9, "attack.badnets.size 9 is larger than the 8x8 images"),
    ("attack.mode", "some_to_one", "attack.mode must be one of"),
    ("data.defense_size", 5000, "data.defense_size 5000 is larger than the"),
    ("unlearn.lr", -0.01, "unlearn.lr must be > 0"),
    ("recover.lr", "fast", "recover.lr must be float"),
    ("prune.threshold", 1.5, "prune.threshold must be in [0, 1]"),
    ("prune.max_threshold", -0.1, "prune.max_threshold must be in [0, 1]"),
    ("prune.sweep", "random", "prune.sweep must be one of threshold, number"),
    ("train.epochs", 0, "train.epochs must be > 0"),
    ("prune.thresold", 0.2, "unknown key prune.thresold"),
    ("device", "tpu", "device must be auto, cpu"),
    ("attack.sig.delta", -1, "attack.sig.delta must be > 0"),
    ("attack.wanet.gird", 3, "unknown key attack.wanet.gird"),
    ("attack.blend", 0.2, "attack.blend must be a mapping"),
    ("data.image_size", 0, "data.image_size must be in (0, 4096]"),
    ("train.lr", float("nan"), "train.lr must be a finite number, got nan"),
    ("unlearn.gamma", float("inf"), "unlearn.gamma must be a finite number, got inf"),
    ("attack.rate", 0.0001, "attack.rate 0.0001 poisons 0 of the 1438 training images"),
]


def _params(tmp_path, key, value):
    raw = default_params()
    *sections, leaf = key.split(".")
    node = raw
    for s in sections:
        node = node[s]
    node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("key,value,message", BAD_PARAMS, ids=[f"{k}={v}" for k, v, _ in BAD_PARAMS])
def test_bad_params_poison(tmp_path, capsys, key, value, message):
    out = tmp_path / "out"
    assert main(["poison", "--params", str(_params(tmp_path, key, value)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("arch,message", [
    ("resnet1000", "unknown architecture 'resnet1000' in model.arch (valid: "),
    ("torchvision:resnet1000", "unknown torchvision classifier 'resnet1000' in model.arch"),
    ("torchvision:vit_b_16", "model.arch torchvision:vit_b_16 cannot take 1x8x8 images (Wrong image height!"),
    ("torchvision:squeezenet1_0", "model.arch torchvision:squeezenet1_0 cannot take 1x8x8 images"),
])
def test_bad_architecture_is_caught_before_training(tmp_path, capsys, default_run, arch, message):
    _, root, _ = default_run
    out = tmp_path / "train"
    params = _params(tmp_path, "model.arch", arch)
    assert main(["train", "--params", str(params), "--poison", str(root / "poison"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("stage,inputs,missing", [
    ("train", ["--poison", "{x}"], "train.safetensors"),
    ("unlearn", ["--poison", "{root}/poison", "--train", "{x}"], "model.safetensors"),
    ("recover", ["--poison", "{root}/poison", "--unlearn", "{x}"], "model.safetensors"),
    ("prune", ["--poison", "{root}/poison", "--train", "{root}/train", "--recover", "{x}"], "masks.safetensors"),
])
def test_missing_upstream_artifact(tmp_path, capsys, default_run, stage, inputs, missing):
    _, root, _ = default_run
    args = [a.format(x=tmp_path / "nothing", root=root) for a in inputs]
    out = tmp_path / "out"
    assert main([stage, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"missing file {tmp_path / 'nothing' / missing}" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_corrupt_and_pickled_model_files(tmp_path, capsys, default_run):
    _, root, _ = default_run
    fake = tmp_path / "train"
    fake.mkdir()
    marker = tmp_path / "pwned"
    # a pickle whose unpickling would create the marker file
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    for content in (b"", b"\x00" * 7, payload, (root / "train/model.safetensors").read_bytes()[:500]):
        (fake / "model.safetensors").write_bytes(content)
        out = tmp_path / "out"
        assert main(["unlearn", "--poison", str(root / "poison"), "--train", str(fake), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a valid safetensors file" in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not marker.exists()


def test_bad_yaml_and_missing_params(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1\n")
    assert main(["poison", "--params", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert main(["poison", "--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "missing params file" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path, bin_path):
    params = _params(tmp_path, "attack.rate", 2)
    env = {**os.environ, "PATH": bin_path}
    rnp = shutil.which("rnp", path=bin_path) or f"{sys.executable} -m rnp"
    proc = subprocess.run([*rnp.split(), "poison", "--params", str(params), "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rnp poison: error: " + f"{params}: attack.rate must be in (0, 1), got 2"
    assert "Traceback" not in proc.stderr


def test_list_names_every_registry_entry(capsys):
    from rnp.attacks import list_attacks
    from rnp.datasets import list_datasets
    from rnp.defense import DEFENSES
    from rnp.models import list_models

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert DEFENSES.names() == ["anp", "ft", "rnp"]
    for name in [*list_datasets(), *list_attacks(), *list_models(), *DEFENSES.names()]:
        line = next(li for li in out.splitlines() if li.split()[:1] == [name])
        assert len(line.split()) > 2  # name plus a description


def _tamper_header(data: bytes, old: bytes, new: bytes) -> bytes:
    """Edit the JSON header of a safetensors file in place (same length, so offsets still parse)."""
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n]
    assert old in header and len(old) == len(new)
    return data[:8] + header.replace(old, new, 1) + data[8 + n :]


@pytest.mark.parametrize("case,message", [
    ("empty", "is not a valid safetensors file"),
    ("pickled", "is not a valid safetensors file"),
    ("dtype", "images must be (N, C, H, W) uint8"),
    ("offsets", "is not a valid safetensors file"),
    ("lengths", "images but labels of shape"),
    ("metadata", "has no rnp data metadata"),
])
def test_bad_data_files(tmp_path, capsys, default_run, case, message):
    _, root, _ = default_run
    poison_dir = tmp_path / "poison"
    shutil.copytree(root / "poison", poison_dir)
    target = poison_dir / "train.safetensors"
    data = target.read_bytes()
    marker = tmp_path / "pwned"
    if case == "empty":
        data = b""
    elif case == "pickled":
        data = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    elif case == "dtype":
        data = _tamper_header(data, b'"images":{"dtype":"U8"', b'"images":{"dtype":"I8"')
    elif case == "offsets":
        data = data[:-100]  # the header promises more bytes than there are
    elif case == "lengths":
        from rnp.io import load_tensors, tensors_bytes

        tensors, meta = load_tensors(target)
        tensors["labels"] = tensors["labels"][:-3]
        data = tensors_bytes(tensors, meta)
    elif case == "metadata":
        data = _tamper_header(data, b"num_classes", b"num_classez")
    target.write_bytes(data)
    out = tmp_path / "out"
    assert main(["train", "--poison", str(poison_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not marker.exists()


def test_an_internal_error_is_one_line_that_says_so_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from rnp.stages import poison

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(poison, "run", bug)
    params = str(_params(tmp_path, "seed", 0))
    assert main(["poison", "--params", params, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnp poison: internal error: ZeroDivisionError: division by zero (rnp --debug poison") and len(err.splitlines()) == 1
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "poison", "--params", params, "--out", str(tmp_path / "out")])
    monkeypatch.setenv("RNP_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["poison", "--params", params, "--out", str(tmp_path / "out")])
