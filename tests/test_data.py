import pytest
import torch

from rnp.data import DeviceData, ImageSet, on_device, random_crop, random_flip
from rnp.datasets import list_datasets, load_dataset

OFFLINE = ["digits", "digits32"]
FORMAT_TESTED = ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "gtsrb", "folder"]  # tests/test_datasets.py, tests/test_fashion_mnist.py


def test_every_dataset_is_offline_or_has_a_format_test():
    assert sorted(OFFLINE + FORMAT_TESTED) == list_datasets()


@pytest.mark.parametrize("name", OFFLINE)
def test_every_dataset_loads_as_uint8_with_stats(name):
    ds = load_dataset(name)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.ndim == 4
    assert ds.train.labels.min() >= 0 and ds.train.labels.max() < ds.num_classes
    assert len(ds.mean) == len(ds.std) == ds.train.images.shape[1]
    x = ds.train.images[:256].float() / 255
    assert abs(x.mean().item() - ds.mean[0]) < 0.1 and all(s > 0 for s in ds.std)


def test_digits32_is_digits_at_cifar_geometry():
    small, big = load_dataset("digits"), load_dataset("digits32")
    assert big.train.images.shape == (len(small.train), 3, 32, 32)
    assert torch.equal(big.train.labels, small.train.labels)
    assert torch.equal(big.train.images[:, 0], big.train.images[:, 2])  # grey in every channel


def test_random_crop_and_flip_shift_and_mirror_whole_batches():
    gen = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    cropped = random_crop(images, 1, gen)
    assert cropped.shape == images.shape
    for c, x in zip(cropped, images):  # each crop is a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
        assert any(torch.equal(c, padded[:, i : i + 4, j : j + 4]) for i in range(3) for j in range(3))
    flipped = random_flip(images.repeat(16, 1, 1, 1), gen)
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(2)) for f, x in zip(flipped, images.repeat(16, 1, 1, 1)))
    assert any(torch.equal(f, x.flip(2)) for f, x in zip(flipped, images.repeat(16, 1, 1, 1)))
    draws = torch.rand(4, generator=gen)
    assert on_device(draws, torch.device("cpu")) is draws  # no copy where the generator's draws already are


def test_device_data_batches_cover_every_image_once():
    data = ImageSet(torch.randint(0, 255, (10, 1, 2, 2), dtype=torch.uint8), torch.arange(10))
    dd = DeviceData(data, (0.5,), (0.25,), torch.device("cpu"))
    seen = torch.cat([y for _, y in dd.batches(3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    x, _ = next(dd.batches(10))
    torch.testing.assert_close(x, (data.images.float() / 255 - 0.5) / 0.25)
