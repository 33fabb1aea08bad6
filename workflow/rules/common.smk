# Paths and get_* helpers shared by the stage and summary rules, as in snakemake-workflows.
# One params file per level of a cell: upstream levels never see downstream keys, so a
# poisoned data set serves every architecture and a model every defense setting. Each
# stage writes its level's file into its own output folder, with no job of its own
# (a job per params file cost a Snakemake start each, as long as a small stage).

import yaml

from rnp.grid import Cell, level_params, method

BASE_PARAMS = yaml.safe_load(Path(config["params"]).read_text())
POISON = f"{RESULTS}/{{dataset}}/{{attack}}/seed{{seed}}"
TRAIN = f"{POISON}/{{arch}}"
DEFENSE = f"{TRAIN}/{{defense}}"
BENCH_POISON = f"{BENCH}/{{dataset}}/{{attack}}/seed{{seed}}"
BENCH_TRAIN = f"{BENCH_POISON}/{{arch}}"
BENCH_DEFENSE = f"{BENCH_TRAIN}/{{defense}}"
DATA_FILES = ["train.safetensors", "test_clean.safetensors", "test_poison.safetensors", "defense.safetensors", "holdout.safetensors"]
ENV = "../envs/rnp.yaml"  # --sdm conda; the Kubernetes profile's image is built from envs/Dockerfile
SRC = str(Path(workflow.basedir).parent)  # this checkout: jobs import rnp from it (the conda env holds its dependencies)


def get_cell(w) -> Cell:
    arch = ARCHS.get(getattr(w, "arch", ""), config["archs"][0])
    setting = getattr(w, "defense", next(iter(config["defenses"])))
    return Cell(w.dataset, w.attack, int(w.seed), arch, setting, method(config, setting))


def get_params_text(level: str):
    """A params function for one level (poison, train or defense) of the wildcards' cell."""
    return lambda w: yaml.safe_dump(level_params(BASE_PARAMS, config, get_cell(w), level), sort_keys=False)


def get_poison_files(names: list[str] = DATA_FILES) -> list[str]:
    return [f"{POISON}/poison/{name}" for name in names]


def get_method(w) -> str:
    """The registered defense a cell's setting runs: rnp (the stages) or a baseline (rule baseline)."""
    return get_cell(w).method


def get_summary_inputs() -> list[str]:
    """RNP cells: their prune and unlearn metrics; a baseline's cell: its baseline metrics."""
    stages = {"rnp": ("prune", "unlearn")}
    return [f"{RESULTS}/{c.defense_dir}/{stage}/metrics.json" for c in GRID for stage in stages.get(c.method, ("baseline",))]
