# One params file per level of a cell: upstream levels never see downstream keys,
# so a poisoned data set serves every architecture and a model every defense setting.

import yaml

from rnp.grid import Cell, level_params
from rnp.io import atomic_write_bytes

BASE_PARAMS = yaml.safe_load(Path(config["params"]).read_text())
POISON = RESULTS + "/{dataset}/{attack}/seed{seed}"
TRAIN = POISON + "/{arch}"
DEFENSE = TRAIN + "/{defense}"


def cell_of(w) -> Cell:
    return Cell(w.dataset, w.attack, int(w.seed), ARCHS.get(getattr(w, "arch", ""), config["archs"][0]), getattr(w, "defense", next(iter(config["defenses"]))))


def params_text(w, level: str) -> str:
    return yaml.safe_dump(level_params(BASE_PARAMS, config, cell_of(w), level), sort_keys=False)


localrules: params_poison, params_train, params_defense


rule params_poison:
    output: POISON + "/params.yaml"
    params: text=lambda w: params_text(w, "poison")
    run: atomic_write_bytes(output[0], params.text.encode())


rule params_train:
    output: TRAIN + "/params.yaml"
    params: text=lambda w: params_text(w, "train")
    run: atomic_write_bytes(output[0], params.text.encode())


rule params_defense:
    output: DEFENSE + "/params.yaml"
    params: text=lambda w: params_text(w, "defense")
    run: atomic_write_bytes(output[0], params.text.encode())
