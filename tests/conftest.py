import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rnp.config import config_from_dict, with_overrides
from rnp.stages import run_all

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # pytest -n 2 on two cores: one thread per worker
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def make_config(**overrides):
    """The default params with dotted overrides: make_config(**{"train.epochs": 2})."""
    return config_from_dict(with_overrides(default_params(), overrides))


def random_clean_data(n: int = 64):
    """n random 8x8 grey images labelled 0..9 in turn, on the CPU: data for mechanics, not for accuracy."""
    from rnp.data import DeviceData, ImageSet

    g = torch.Generator().manual_seed(0)
    return DeviceData(ImageSet(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10), (0.5,), (0.25,), "cpu")


def train_elsewhere(arch: str, epochs: int):
    """A backdoored digits model of `arch` trained by a plain loop outside rnp's pipeline (BadNets, the default params);
    returns it and the data set."""
    from rnp.data import DeviceData
    from rnp.datasets import load_dataset
    from rnp.models import ModelSpec, create_model
    from rnp.poisoning import poison
    from rnp.training import run_epoch, seeded_generator

    cfg = make_config()
    ds = load_dataset("digits")
    pd = poison(ds, cfg.data, cfg.attack, 0)
    torch.manual_seed(0)
    net = create_model(ModelSpec(arch, 10, (1, 8, 8), ds.mean, ds.std))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        run_epoch(net, DeviceData(pd.train, ds.mean, ds.std, torch.device("cpu")), opt, 64, seeded_generator(0), cfg.augment)
    return net, ds


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The default pipeline (params.yaml), run once in-process and shared by the stage tests."""
    root = tmp_path_factory.mktemp("default")
    cfg = make_config()
    return cfg, root, run_all(cfg, root)


@pytest.fixture
def bin_path() -> str:
    """PATH with this interpreter's scripts (rnp, dvc) first."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("rnp", "workflow"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / ".dvc").mkdir()
    for name in ("config", "plots_offline.html"):  # the template `dvc plots show` uses (plots.html_template)
        shutil.copy(ROOT / ".dvc" / name, dest / ".dvc" / name)
    return dest
