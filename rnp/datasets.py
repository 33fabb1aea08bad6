"""The data set registry and every loader: bundled digits, and downloadable sets read into uint8 tensors once.

Adding a data set touches this file only: a function `(root, image_size) -> Dataset`
registered with `@DATASETS.register("name")`.

Real users get each data set downloaded to `data.root` on first use (with the
publisher's checksum). The readers take the files in their published on-disk
formats; the tests write small files in those formats, so nothing downloads
in tests. CIFAR's python batches are pickles: they are read with an unpickler
that only knows dicts, lists, bytes and NumPy arrays, so a tampered file
cannot run code.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import Dataset, ImageSet
from .errors import RnpError
from .registry import Registry

__all__ = [
    "DATASETS", "load_dataset", "list_datasets",
    "FASHION_MNIST_DIRS", "channel_stats", "find_idx", "from_numpy_hwc", "image_folder", "pad_to", "read_cifar_batch", "read_idx", "resize",
]

DATASETS: Registry = Registry("data set", "data.dataset")


def load_dataset(name: str, root: str = "data/raw", image_size: int = 32) -> Dataset:
    return DATASETS.get(name)(root, image_size)


def list_datasets() -> list[str]:
    return DATASETS.names()


@DATASETS.register("digits")
def digits(root: str, image_size: int = 8) -> Dataset:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images, 10 classes, offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 grey levels -> 0..255
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    scaled = images.float() / 255.0
    return Dataset(
        train=ImageSet(images, labels),
        test=None,
        num_classes=10,
        mean=(round(scaled.mean().item(), 4),),
        std=(round(scaled.std().item(), 4),),
    )


@DATASETS.register("digits32")
def digits32(root: str, image_size: int = 32) -> Dataset:
    """digits upsampled to 32x32 RGB (bilinear, grey in 3 channels): CIFAR geometry, offline."""
    small = digits(root)
    up = F.interpolate(small.train.images.float(), size=(32, 32), mode="bilinear", align_corners=False)
    images = up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    scaled = images[:, :1].float() / 255.0
    mean, std = round(scaled.mean().item(), 4), round(scaled.std().item(), 4)
    return Dataset(ImageSet(images, small.train.labels), None, 10, (mean,) * 3, (std,) * 3)


CIFAR = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 ["train"], ["test"], b"fine_labels", 100),
}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/{split}_32x32.mat"
SVHN_MD5 = {"train": "e26dedcc434d2e4c54c9b2d4a06d8373", "test": "eb5a983be6a315427106f1b164d9cef3"}
# Fashion-MNIST (Xiao et al. 2017): where its four IDX files are looked for, in or under data.root, then system-wide
# (Debian's dataset-fashion-mnist package), and the SHA-256 of each full-size file's decompressed bytes. MNIST's
# files have the same format and sizes, so a full-size file with another hash is the wrong data set.
FASHION_MNIST_DIRS = ("fashion-mnist", "FashionMNIST/raw")  # our folder; torchvision's download layout
FASHION_MNIST_SYSTEM = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": (60000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (10000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned bytes, 1 dimension (labels) or 3 (images)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], rounded to 4 digits."""
    x = images.transpose(0, 1).flatten(1).double() / 255.0
    return tuple(round(v, 4) for v in x.mean(1).tolist()), tuple(round(max(v, 1e-4), 4) for v in x.std(1).tolist())


def _dataset(train: ImageSet, test: ImageSet | None, num_classes: int) -> Dataset:
    mean, std = channel_stats(train.images)
    return Dataset(train, test, num_classes, mean, std)


def from_numpy_hwc(images: np.ndarray, labels) -> ImageSet:
    """(N, H, W, C) or (N, H, W) uint8 array -> ImageSet."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    x = x.unsqueeze(-1) if x.ndim == 3 else x
    return ImageSet(x.permute(0, 3, 1, 2).contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long).flatten())


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) images to size x size, centred: the objects keep their pixel size (no stretching)."""
    h, w = images.shape[-2:]
    if size < max(h, w):
        raise RnpError(f"data.image_size {size} is smaller than the {h}x{w} images; they are padded, never shrunk (use >= {max(h, w)})")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes (gzipped or not) -> array; anything else is one line naming the file."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise RnpError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise RnpError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic, *shape = np.frombuffer(raw[:header], dtype=">u4").tolist()
    if magic != IDX_MAGIC[ndim]:
        raise RnpError(f"{path}: magic number {magic}, expected {IDX_MAGIC[ndim]} (an IDX file of {ndim}-d unsigned bytes)")
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise RnpError(f"{path}: header says {' x '.join(map(str, shape))} = {size} bytes, the file holds {len(raw) - header} (truncated?)")
    name = path.name.removesuffix(".gz")
    if name in FASHION_MNIST_FILES and shape[0] == FASHION_MNIST_FILES[name][0]:
        if hashlib.sha256(raw).hexdigest() != FASHION_MNIST_FILES[name][1]:
            raise RnpError(f"{path}: a full-size file whose checksum is not Fashion-MNIST's (another data set, e.g. MNIST?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(root: Path, name: str) -> Path:
    """The first of <root>, <root>/<dir> and the system-wide folder that holds <name>[.gz]."""
    places = [root] + [root / d for d in FASHION_MNIST_DIRS] + [Path(FASHION_MNIST_SYSTEM)]
    for folder in places:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise RnpError(
        f"data.dataset fashion_mnist: {name}[.gz] not found in {', '.join(map(str, places))}; "
        "install it with `sudo apt-get install dataset-fashion-mnist`, or put the four IDX files in "
        f"{root / FASHION_MNIST_DIRS[0]}"
    )


def _fetch(name: str, root: Path, fetch) -> None:
    """Download on first use; a failure is one clear line."""
    try:
        fetch()
    except Exception as e:  # noqa: BLE001  (network, checksum, disk: all mean "could not get the data")
        raise RnpError(f"data.dataset {name}: files not found under {root} and download failed ({type(e).__name__}: {e})") from None


@DATASETS.register("mnist")
def mnist(root: str, image_size: int = 32) -> Dataset:
    """MNIST (torchvision): 60k/10k handwritten digits, 28x28 grey, 10 classes."""
    from torchvision.datasets import MNIST

    def load(train: bool) -> ImageSet:
        try:
            ds = MNIST(root, train=train, download=False)
        except RuntimeError:
            _fetch("mnist", Path(root), lambda: MNIST(root, train=train, download=True))
            ds = MNIST(root, train=train, download=False)
        return ImageSet(ds.data.unsqueeze(1).to(torch.uint8), ds.targets.long())

    return _dataset(load(True), load(False), 10)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str, image_size: int = 32) -> Dataset:
    """Fashion-MNIST: 60k/10k 28x28 grey photos of clothing, 10 classes, offline (IDX files), zero-padded to data.image_size."""

    def load(split: str) -> ImageSet:
        images_path, labels_path = (find_idx(Path(root), f"{split}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels):
            raise RnpError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}")
        if labels.size and labels.max() >= 10:
            raise RnpError(f"{labels_path}: label {int(labels.max())} outside Fashion-MNIST's 10 classes")
        return ImageSet(pad_to(torch.from_numpy(images.copy()).unsqueeze(1), image_size), torch.from_numpy(labels.astype(np.int64)))

    return _dataset(load("train"), load("t10k"), 10)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and NumPy arrays; any other global is refused, so no code runs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    """One CIFAR python batch: (N, 3072) uint8 rows (RGB planes) and labels."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), list(batch[label_key])
    except FileNotFoundError:
        raise RnpError(f"missing CIFAR batch {path}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise RnpError(f"{path} is not a CIFAR python batch ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise RnpError(f"{path}: expected (N, 3072) data and N labels, got {data.shape} and {len(labels)}")
    return data, labels


def _cifar(name: str, root: str) -> Dataset:
    folder, url, md5, train_files, test_files, label_key, classes = CIFAR[name]
    base = Path(root) / folder
    if not base.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        _fetch(name, Path(root), lambda: download_and_extract_archive(url, root, md5=md5))

    def load(files: list[str]) -> ImageSet:
        parts = [read_cifar_batch(base / f, label_key) for f in files]
        data = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
        return ImageSet(torch.from_numpy(data), torch.tensor([y for _, ys in parts for y in ys], dtype=torch.long))

    return _dataset(load(train_files), load(test_files), classes)


@DATASETS.register("cifar10")
def cifar10(root: str, image_size: int = 32) -> Dataset:
    """CIFAR-10: 50k/10k 32x32 colour images, 10 classes (the RNP paper's main benchmark)."""
    return _cifar("cifar10", root)


@DATASETS.register("cifar100")
def cifar100(root: str, image_size: int = 32) -> Dataset:
    """CIFAR-100: 50k/10k 32x32 colour images, 100 fine classes."""
    return _cifar("cifar100", root)


@DATASETS.register("svhn")
def svhn(root: str, image_size: int = 32) -> Dataset:
    """SVHN: 73k/26k 32x32 house-number digits (the .mat files; label 10 means digit 0)."""
    from scipy.io import loadmat
    from torchvision.datasets.utils import download_url

    base = Path(root) / "svhn"

    def load(split: str) -> ImageSet:
        path = base / f"{split}_32x32.mat"
        if not path.is_file():
            _fetch("svhn", base, lambda: download_url(SVHN_URL.format(split=split), str(base), md5=SVHN_MD5[split]))
        try:
            mat = loadmat(path)
            x, y = mat["X"], mat["y"].astype(np.int64).flatten()
        except (KeyError, ValueError, OSError, TypeError) as e:
            raise RnpError(f"{path} is not an SVHN .mat file ({e})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise RnpError(f"{path}: expected X of shape (32, 32, 3, N) and N labels, got {x.shape} and {len(y)}")
        return from_numpy_hwc(x.transpose(3, 0, 1, 2), y % 10)

    return _dataset(load("train"), load("test"), 10)


def _load_images(samples: list[tuple[str, int]], image_size: int, what: str, channels: int = 3) -> ImageSet:
    from .images import read_image

    images = []
    for path, _ in samples:
        try:
            images.append(read_image(path, image_size, channels))
        except RnpError as e:
            raise RnpError(f"{what}: {e}") from None
    return from_numpy_hwc(np.stack(images), [y for _, y in samples])


@DATASETS.register("gtsrb")
def gtsrb(root: str, image_size: int = 32) -> Dataset:
    """GTSRB: German traffic signs (torchvision's layout), 43 classes, resized to data.image_size (32)."""
    import csv

    base = Path(root) / "gtsrb"

    def samples(split: str) -> list[tuple[str, int]]:
        if split == "train":  # GTSRB/Training/<class, 5 digits>/*.ppm
            return [(str(p), int(p.parent.name)) for p in sorted((base / "GTSRB" / "Training").glob("*/*.ppm"))]
        images = base / "GTSRB" / "Final_Test" / "Images"
        with open(base / "GT-final_test.csv", newline="") as f:
            return [(str(images / r["Filename"]), int(r["ClassId"])) for r in csv.DictReader(f, delimiter=";", skipinitialspace=True)]

    def load(split: str) -> ImageSet:
        folder = base / "GTSRB" / ("Training" if split == "train" else "Final_Test/Images")
        if not folder.is_dir():
            from torchvision.datasets import GTSRB

            _fetch("gtsrb", base, lambda: GTSRB(root, split=split, download=True))
        try:
            found = samples(split)
        except (OSError, KeyError, ValueError) as e:
            raise RnpError(f"data.dataset gtsrb: cannot read the {split} split under {base} ({e})") from None
        if not found:
            raise RnpError(f"data.dataset gtsrb: no {split} images under {folder}")
        return _load_images(found, image_size, "gtsrb")

    return _dataset(load("train"), load("test"), 43)


@DATASETS.register("folder")
def folder(root: str, image_size: int = 32) -> Dataset:
    """Any ImageFolder tree at data.root (class per subfolder; optional train/ and test/), resized to data.image_size."""
    return image_folder(root, image_size)[0]


def image_folder(root: str | Path, image_size: int = 32, channels: int = 3, classes: list[str] | None = None) -> tuple[Dataset, list[str], str]:
    """An ImageFolder tree (class per subfolder; optional train/ and test/) as (data set, class names in label order, how
    that order was chosen): --classes, else a classes.txt beside the class folders, else numerical or by name."""
    from torchvision.datasets.folder import find_classes, make_dataset

    from .images import CLASSES_FILE, class_order

    base = Path(root)
    if not base.is_dir():
        raise RnpError(f"data.root {root} is not a folder (data.dataset folder needs an ImageFolder tree)")
    split_dirs = base / "train", base / "test"
    top = split_dirs[0] if split_dirs[0].is_dir() else base
    try:
        found, _ = find_classes(str(top))
    except FileNotFoundError:
        found = []
    if len(found) < 2:
        raise RnpError(f"data.root {top} has {len(found)} class folder(s); a classifier needs at least 2")
    names, how = class_order(found, classes, next((d / CLASSES_FILE for d in (top, base) if (d / CLASSES_FILE).is_file()), None))
    index = {name: i for i, name in enumerate(names)}

    def load(where: Path) -> ImageSet:
        try:
            samples = make_dataset(str(where), index, extensions=IMAGE_EXTENSIONS, allow_empty=True)
        except FileNotFoundError as e:
            raise RnpError(f"data.root {where}: {e}") from None
        if not samples:
            raise RnpError(f"data.root {where} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        return _load_images(samples, image_size, "folder", channels)

    test = load(split_dirs[1]) if top is split_dirs[0] and split_dirs[1].is_dir() else None
    return _dataset(load(top), test, len(names)), names, how
