"""Fashion-MNIST: the IDX reader on files the tests write, on the real Debian files when present, and a
stage-level run at the paper's ratios on real images."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import rnp.datasets as datasets
from rnp.cli import main
from rnp.config import config_from_dict, with_overrides
from rnp.datasets import load_dataset
from rnp.errors import RnpError
from rnp.poisoning import poison
from rnp.presets import PRESETS, dvc_flags

from .conftest import default_params, make_config

RNG = np.random.default_rng(0)
SYSTEM = Path(datasets.FASHION_MNIST_SYSTEM)
HAVE_REAL = all((SYSTEM / f"{name}.gz").is_file() for name in datasets.FASHION_MNIST_FILES)
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"no Fashion-MNIST in {SYSTEM} (apt-get install dataset-fashion-mnist)")


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n, dtype=np.uint8)
        for kind, array, magic in (("images-idx3-ubyte", x, 2051), ("labels-idx1-ubyte", y, 2049)):
            data = _idx(array, magic)
            name = f"{split}-{kind}" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
        written[split] = (x, y)
    return written


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM", str(tmp_path / "nowhere"))


@pytest.mark.parametrize("layout,gz", [("fashion-mnist", True), ("FashionMNIST/raw", False), (".", True)])
def test_reads_idx_files_in_every_layout_and_pads_to_32_without_stretching(tmp_path, no_system_copy, layout, gz):
    written = write_fashion(tmp_path / layout, gz=gz)
    ds = load_dataset("fashion_mnist", str(tmp_path))
    assert ds.train.images.shape == (30, 1, 32, 32) and ds.test.images.shape == (10, 1, 32, 32)
    assert np.array_equal(ds.train.images[:, 0, 2:30, 2:30].numpy(), written["train"][0])  # the photo, pixel for pixel
    assert ds.train.images[:, :, :2].sum() == 0 and ds.train.images[:, :, :, 30:].sum() == 0  # a zero border
    assert ds.test.labels.tolist() == written["t10k"][1].tolist() and ds.num_classes == 10


def _corrupt(path: Path, how: str) -> None:
    raw = gzip.decompress(path.read_bytes())
    if how == "truncated":
        raw = raw[:-100]
    elif how == "magic":
        raw = struct.pack(">I", 2052) + raw[4:]
    path.write_bytes(gzip.compress(raw) if how != "not_gzip" else b"\x1f\x8bnot gzip at all")


@pytest.mark.parametrize("how,message", [
    ("truncated", r"train-images-idx3-ubyte.gz: header says 30 x 28 x 28 = 23520 bytes, the file holds 23420"),
    ("magic", r"train-images-idx3-ubyte.gz: magic number 2052, expected 2051"),
    ("not_gzip", r"train-images-idx3-ubyte.gz: cannot read it"),
])
def test_a_corrupt_idx_file_is_one_line_naming_it(tmp_path, no_system_copy, how, message):
    write_fashion(tmp_path / "fashion-mnist")
    _corrupt(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz", how)
    with pytest.raises(RnpError, match=message):
        load_dataset("fashion_mnist", str(tmp_path))


def test_label_count_must_match_image_count(tmp_path, no_system_copy):
    write_fashion(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(9), 2049)))
    with pytest.raises(RnpError, match=r"t10k-labels-idx1-ubyte.gz: 9 labels for the 10 images"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_a_full_size_file_of_another_data_set_is_named(tmp_path, no_system_copy):
    """MNIST's files have Fashion-MNIST's names, format and sizes: the checksum tells them apart."""
    write_fashion(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(RNG.integers(0, 10, 10000), 2049)))
    with pytest.raises(RnpError, match=r"t10k-labels-idx1-ubyte.gz: a full-size file whose checksum is not Fashion-MNIST's"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_missing_files_say_how_to_get_them(tmp_path, no_system_copy):
    with pytest.raises(RnpError, match=r"train-images-idx3-ubyte\[.gz\] not found in .*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_image_size_below_28_is_refused(tmp_path, no_system_copy):
    write_fashion(tmp_path)
    with pytest.raises(RnpError, match="data.image_size 24 is smaller than the 28x28 images"):
        load_dataset("fashion_mnist", str(tmp_path), image_size=24)


def test_the_cli_refuses_a_corrupt_file_in_one_line_and_writes_nothing(tmp_path):
    write_fashion(tmp_path / "raw" / "fashion-mnist")
    _corrupt(tmp_path / "raw" / "fashion-mnist" / "train-images-idx3-ubyte.gz", "truncated")
    params = tmp_path / "params.yaml"
    p = default_params()
    p["data"].update(dataset="fashion_mnist", root=str(tmp_path / "raw"))
    params.write_text(yaml.safe_dump(p))
    r = subprocess.run([sys.executable, "-m", "rnp.cli", "poison", "--params", str(params), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    assert r.stderr.strip().count("\n") == 0 and "train-images-idx3-ubyte.gz: header says 30" in r.stderr


@needs_real
def test_the_real_debian_files_read_as_published():
    ds = load_dataset("fashion_mnist", "nonexistent-root")
    assert ds.train.images.shape == (60000, 1, 32, 32) and ds.test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10 and torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.train.images[:, :, 2:30, 2:30].float().mean() > 60  # real photos, not a blank buffer


@needs_real
def test_paper_ratios_on_real_images_one_percent_clean_data_disjoint_from_training():
    """What digits cannot show: at 60,000 images, 1 % clean defense data is 600 images, the held-out part
    is not in the training set, no defense image is poisoned, and 10 % of the training set is."""
    cfg = make_config(**{"data.dataset": "fashion_mnist", "data.defense_size": 0.01, "attack.rate": 0.1})
    ds = load_dataset("fashion_mnist", cfg.data.root)
    data = poison(ds, cfg.data, cfg.attack, 0)
    assert len(data.defense) + len(data.holdout) == 600
    assert len(data.train) == 60000 - len(data.holdout)
    assert abs(data.poisoned.sum().item() - 6000) <= 1
    train_rows = {bytes(x) for x in data.train.images.flatten(1).numpy()}
    assert not any(bytes(x) in train_rows for x in data.holdout.images.flatten(1).numpy())  # held out = never trained on
    clean_rows = {bytes(x) for x in ds.train.images.flatten(1).numpy()}
    assert all(bytes(x) in clean_rows for x in data.defense.images.flatten(1).numpy())  # untouched by the attack


def test_the_preset_is_valid_params_and_reaches_dvc_as_flags():
    cfg = config_from_dict(with_overrides(default_params(), PRESETS["fashion_mnist"]))
    assert (cfg.data.dataset, cfg.data.defense_size, cfg.attack.rate) == ("fashion_mnist", 0.01, 0.1)
    assert (cfg.unlearn.lr, cfg.recover.lr, cfg.unlearn.batch_size) == (0.01, 0.2, 128)  # the reference's
    flags = dvc_flags("fashion_mnist").split()
    assert flags[::2] == ["-S"] * len(PRESETS["fashion_mnist"]) and "data.dataset=fashion_mnist" in flags
    assert main(["preset", "no_such_preset"]) == 2


@needs_real
def test_stages_on_a_real_subset_learn_the_photos_and_the_backdoor(tmp_path):
    """poison + train through the CLI on 6,000 real training photos in the IDX format: 1 % clean data is 60 images,
    and a small CNN learns both the clothes (CA well above digits-free chance) and the 3x3 BadNets patch."""
    sub = tmp_path / "raw" / "fashion-mnist"
    sub.mkdir(parents=True)
    for split, n in (("train", 6000), ("t10k", 1000)):
        x = datasets.read_idx(SYSTEM / f"{split}-images-idx3-ubyte.gz", 3)[:n]
        y = datasets.read_idx(SYSTEM / f"{split}-labels-idx1-ubyte.gz", 1)[:n]
        (sub / f"{split}-images-idx3-ubyte").write_bytes(_idx(x, 2051))
        (sub / f"{split}-labels-idx1-ubyte").write_bytes(_idx(y, 2049))
    params = with_overrides(default_params(), {**PRESETS["fashion_mnist"], "data.root": str(tmp_path / "raw"),
                                               "model.arch": "small_cnn", "train.epochs": 2})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def run(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "rnp.cli", *args, "--params", str(tmp_path / "params.yaml")],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        return json.loads((Path(args[-1]) / "metrics.json").read_text())

    m = run("poison", "--out", str(tmp_path / "poison"))
    assert m["defense"] + m["holdout"] == 60 and m["poisoned"] == 600 and m["test_clean"] == 1000
    m = run("train", "--poison", str(tmp_path / "poison"), "--out", str(tmp_path / "train"))
    assert m["ca"] > 0.6 and m["asr"] > 0.9, m
