# One params file per level of a cell: upstream levels never see downstream keys,
# so a poisoned data set serves every architecture and a model every defense setting.
# Each stage rule writes its level's file into its own output folder (no job of its own:
# a job per params file cost a Snakemake start each, as long as a small stage).

import yaml

from rnp.grid import Cell, level_params

BASE_PARAMS = yaml.safe_load(Path(config["params"]).read_text())
POISON = RESULTS + "/{dataset}/{attack}/seed{seed}"
TRAIN = POISON + "/{arch}"
DEFENSE = TRAIN + "/{defense}"


def cell_of(w) -> Cell:
    return Cell(w.dataset, w.attack, int(w.seed), ARCHS.get(getattr(w, "arch", ""), config["archs"][0]), getattr(w, "defense", next(iter(config["defenses"]))))


def params_text(w, level: str) -> str:
    return yaml.safe_dump(level_params(BASE_PARAMS, config, cell_of(w), level), sort_keys=False)


# The shell prefix of every stage rule: its params text, written where the stage's outputs go
WRITE_PARAMS = "printf '%s\\n' {params.text:q} > {output.params} && "
