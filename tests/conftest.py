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
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    return dest
