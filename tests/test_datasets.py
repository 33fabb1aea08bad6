"""Each downloadable data set's reader, on small files written in that data set's own on-disk format."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from rnp.datasets import load_dataset
from rnp.errors import RnpError
from rnp.poisoning import poison

from .conftest import make_config

RNG = np.random.default_rng(0)


def _images(n, h, w, c=3):
    return RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def _write_idx(path, array: np.ndarray, magic: int):
    path.write_bytes(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape) + array.tobytes())


def test_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", 30), ("t10k", 10)):
        x, y = _images(n, 28, 28, 1)[..., 0], RNG.integers(0, 10, n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x, 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, 2049)
        written[prefix] = (x, y)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)
    assert np.array_equal(ds.train.images[:, 0].numpy(), written["train"][0])
    assert ds.test.labels.tolist() == written["t10k"][1].tolist()
    assert ds.num_classes == 10 and len(ds.mean) == 1


def _write_cifar(base, files, label_key, n, classes):
    base.mkdir(parents=True)
    for f in files:
        rows = _images(n, 32, 32).transpose(0, 3, 1, 2).reshape(n, 3072)  # RGB planes, as published
        with open(base / f, "wb") as fh:
            pickle.dump({b"batch_label": b"x", b"data": rows, label_key: RNG.integers(0, classes, n).tolist()}, fh, protocol=2)


@pytest.mark.parametrize("name,folder,train,test,key,classes", [
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    ("cifar100", "cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
])
def test_cifar_reads_python_batches(tmp_path, name, folder, train, test, key, classes):
    _write_cifar(tmp_path / folder, train + test, key, 8, classes)
    ds = load_dataset(name, str(tmp_path))
    assert ds.train.images.shape == (8 * len(train), 3, 32, 32) and ds.test.images.shape == (8, 3, 32, 32)
    with open(tmp_path / folder / test[0], "rb") as fh:
        batch = pickle.load(fh)  # the test's own file
    assert np.array_equal(ds.test.images.reshape(8, 3072).numpy(), batch[b"data"])
    assert ds.test.labels.tolist() == batch[key] and ds.num_classes == classes and len(ds.mean) == 3


class _Marker:
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_malicious_cifar_batch_is_refused_and_never_runs(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 4, 10)
    marker = _Marker()
    marker.path = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": marker, b"labels": [0]}, fh)
    with pytest.raises(RnpError, match="data_batch_3 is not a CIFAR python batch .*refusing to load posix.system"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.path.exists()


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    for split, n in (("train", 12), ("test", 6)):
        y = np.arange(1, n + 1).reshape(-1, 1) % 10 + 1  # 1..10, as published
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": _images(n, 32, 32).transpose(1, 2, 3, 0), "y": y})
    ds = load_dataset("svhn", str(tmp_path))
    assert ds.train.images.shape == (12, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.labels.min() == 0 and ds.train.labels.max() == 9
    assert (tmp_path / "svhn" / "train_32x32.mat").exists()


def test_gtsrb_reads_ppm_tree_and_csv_resized(tmp_path):
    base = tmp_path / "gtsrb" / "GTSRB"
    for cls in (0, 5):
        d = base / "Training" / f"{cls:05d}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_images(1, 40 + i, 45, 3)[0]).save(d / f"00000_{i:05d}.ppm")
    (base / "Final_Test" / "Images").mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, cls in enumerate((5, 0)):
        Image.fromarray(_images(1, 50, 50, 3)[0]).save(base / "Final_Test" / "Images" / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;50;50;5;5;45;45;{cls}")
    (tmp_path / "gtsrb" / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset("gtsrb", str(tmp_path), image_size=32)
    assert ds.train.images.shape == (6, 3, 32, 32) and ds.test.labels.tolist() == [5, 0]
    assert sorted(set(ds.train.labels.tolist())) == [0, 5] and ds.num_classes == 43


def _folder(root, classes, n=3, size=20):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_images(1, size, size + i, 3)[0]).save(root / c / f"{i}.png")


def test_folder_reads_an_imagefolder_tree_with_or_without_split(tmp_path):
    _folder(tmp_path / "flat", ["cat", "dog", "owl"])
    ds = load_dataset("folder", str(tmp_path / "flat"), image_size=16)
    assert ds.train.images.shape == (9, 3, 16, 16) and ds.test is None and ds.num_classes == 3
    _folder(tmp_path / "split" / "train", ["cat", "dog"], n=4)
    _folder(tmp_path / "split" / "test", ["cat", "dog"], n=2)
    ds = load_dataset("folder", str(tmp_path / "split"), image_size=24)
    assert ds.train.images.shape == (8, 3, 24, 24) and ds.test.images.shape == (4, 3, 24, 24)


@pytest.mark.parametrize("layout,message", [
    ([], "has 0 class folder"),
    (["only"], "has 1 class folder"),
    (["a", "b"], "has no images"),
])
def test_folder_without_images_or_with_one_class_is_refused(tmp_path, layout, message):
    for c in layout:
        (tmp_path / c).mkdir()
    with pytest.raises(RnpError, match=message):
        load_dataset("folder", str(tmp_path))


def test_missing_files_and_no_network_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(RnpError, match="data.dataset cifar10: files not found under .* download failed"):
        load_dataset("cifar10", str(tmp_path))


def test_poison_stage_runs_on_a_cifar_shaped_data_set(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels", 60, 10)
    cfg = make_config(**{"data.dataset": "cifar10", "data.root": str(tmp_path), "data.defense_size": 20, "attack.badnets.size": 3})
    data = poison(load_dataset("cifar10", str(tmp_path)), cfg.data, cfg.attack, 0)
    assert data.train.images.shape[1:] == (3, 32, 32) and len(data.test_clean) == 60
    assert torch.all(data.train.labels[data.poisoned] == 0)
