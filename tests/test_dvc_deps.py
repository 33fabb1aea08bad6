"""dvc.yaml cannot go stale: every project module a stage imports is one of its deps."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnp.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]


def _module_file(dotted: str) -> Path | None:
    base = ROOT / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


# Their function-level imports are not a stage's: rnp.defend's lazy import, and run_all's import of every stage
LAZY_ENTRY_POINTS = {ROOT / "rnp" / "__init__.py", ROOT / "rnp" / "stages" / "__init__.py"}


def _imports(path: Path) -> set[str]:
    """Dotted rnp modules `path` imports, functions included (attacks import their surrogate training lazily)."""
    everywhere = path not in LAZY_ENTRY_POINTS
    package = ".".join(path.relative_to(ROOT).parent.parts)  # what `from .` means in this file
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.startswith("rnp"):
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names if _module_file(f"{module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rnp"))
    return found


def stage_modules(stage: str) -> set[Path]:
    """Every rnp file that runs when `rnp <stage>` runs its stage module (packages' __init__ files included)."""
    todo, seen = [f"rnp.stages.{stage}"], set()
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imports(path))
    return {p.relative_to(ROOT) for p in seen}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dvc_dependency(stage):
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    modules = stage_modules(stage)
    missing = sorted(str(p) for p in modules if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} does not list: {', '.join(missing)}"
    unused = [d for d in deps if d.startswith("rnp/") and not any(covered(p, [d]) for p in modules)]
    assert not unused, f"dvc.yaml stage {stage} lists code it does not import (needless reruns): {', '.join(unused)}"


def test_the_derivation_sees_through_packages_and_registries():
    modules = stage_modules("poison")
    assert Path("rnp/attacks/badnets.py") in modules  # imported by rnp/attacks/__init__.py, to register itself
    assert Path("rnp/models/wide_resnet.py") in modules  # the same for architectures (poisoning trains surrogates)
    assert Path("rnp/datasets.py") in modules
    assert Path("rnp/defense/pipeline.py") not in modules  # `import rnp` stays light


@pytest.mark.parametrize("stage", ["train", "unlearn", "recover", "prune", "defend"])
def test_only_poisoning_imports_the_attacks(stage):
    """Editing an attack reruns the poison stage alone, and `rnp defend` never loads one (no import circle through config)."""
    assert not [p for p in stage_modules(stage) if p.parts[:2] == ("rnp", "attacks")]
    code = f"import sys, rnp.stages.{stage}; print(sorted(m for m in sys.modules if m.startswith('rnp.attacks')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
