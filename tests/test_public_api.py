"""benchmarks/ is research on rnp's public API: it imports no private module and no name a module does not export.

Public means a module of rnp with no leading underscore anywhere in its path (internal modules start with `_`, as in
timm), and of it only the names in its `__all__` (or a package's public submodules, such as a stage in rnp.stages).
`rnp.defense` itself exports what a user or a new defense needs; the finer tools the research uses are public in its
submodules (rnp.defense.prune, .recover, .detection).
"""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def _exported(module: str, name: str) -> bool:
    mod = importlib.import_module(module)
    if name in getattr(mod, "__all__", ()):
        return True
    return hasattr(mod, "__path__") and not name.startswith("_") and importlib.util.find_spec(f"{module}.{name}") is not None


def _public_module(dotted: str) -> bool:
    return not any(p.startswith("_") for p in dotted.split("."))


def private_imports(source: str) -> list[str]:
    """Every `rnp` import in `source` that reaches past the public API, as `module:name`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "rnp":
            if not _public_module(node.module):
                found.append(node.module)
                continue
            found.extend(f"{node.module}:{a.name}" for a in node.names if not _exported(node.module, a.name))
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] == "rnp" and not _public_module(a.name))
    return found


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_imports_only_the_public_api(path):
    assert not private_imports(path.read_text()), f"{path.name} reaches past rnp's public API"


def test_the_check_catches_each_kind_of_private_import():
    assert private_imports("from rnp.stages._runtime import say") == ["rnp.stages._runtime"]
    assert private_imports("import rnp.stages._runtime") == ["rnp.stages._runtime"]
    assert private_imports("from rnp.defense.recover import channel_view, NORMS") == ["rnp.defense.recover:NORMS"]  # not in __all__
    assert private_imports("from rnp.defense import constant_fitter") == ["rnp.defense:constant_fitter"]  # the research's: rnp.defense.prune
    assert private_imports("from rnp.config import _one_line, Config") == ["rnp.config:_one_line"]
    assert private_imports("def f():\n    from rnp.training import run_epoch, EpochStats\n") == []  # inside functions too, and exported
    assert private_imports("from rnp.stages import poison, STAGES\nfrom rnp.defense import defend") == []
