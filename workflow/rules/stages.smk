# The five DVC stages, one rule each, calling the same CLI.

DATA_FILES = ["train.safetensors", "test_clean.safetensors", "test_poison.safetensors", "defense.safetensors", "holdout.safetensors"]


rule poison:
    input: params=POISON + "/params.yaml"
    output:
        expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        trigger=POISON + "/poison/trigger.png",
        metrics=POISON + "/poison/metrics.json",
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/poison.tsv"
    log: POISON + "/poison/log.txt"
    resources: runtime=30
    shell: "rnp poison --params {input.params} --out $(dirname {output.metrics}) > {log} 2>&1"


rule train:
    input:
        params=TRAIN + "/params.yaml",
        data=expand(POISON + "/poison/{file}", file=DATA_FILES[:3], allow_missing=True),
    output:
        model=TRAIN + "/train/model.safetensors",
        history=TRAIN + "/train/history.csv",
        metrics=TRAIN + "/train/metrics.json",
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/train.tsv"
    log: TRAIN + "/train/log.txt"
    resources: runtime=240
    shell: "rnp train --params {input.params} --poison $(dirname {input.data[0]}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule unlearn:
    input:
        params=DEFENSE + "/params.yaml",
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=TRAIN + "/train/model.safetensors",
    output:
        model=DEFENSE + "/unlearn/model.safetensors",
        metrics=DEFENSE + "/unlearn/metrics.json",
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/unlearn.tsv"
    log: DEFENSE + "/unlearn/log.txt"
    resources: runtime=30
    shell: "rnp unlearn --params {input.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule recover:
    input:
        params=DEFENSE + "/params.yaml",
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=DEFENSE + "/unlearn/model.safetensors",
    output:
        masks=DEFENSE + "/recover/masks.safetensors",
        metrics=DEFENSE + "/recover/metrics.json",
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/recover.tsv"
    log: DEFENSE + "/recover/log.txt"
    resources: runtime=30
    shell: "rnp recover --params {input.params} --poison $(dirname {input.data[0]}) --unlearn $(dirname {input.model}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule prune:
    input:
        params=DEFENSE + "/params.yaml",
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=TRAIN + "/train/model.safetensors",
        masks=DEFENSE + "/recover/masks.safetensors",
    output:
        model=DEFENSE + "/prune/model.safetensors",
        curve=report(DEFENSE + "/prune/curve.png", caption="../report/curve.rst", category="Pruning curves",
                     subcategory="{dataset} / {attack} / seed {seed}", labels={"arch": "{arch}", "defense": "{defense}"}),
        metrics=DEFENSE + "/prune/metrics.json",
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/prune.tsv"
    log: DEFENSE + "/prune/log.txt"
    resources: runtime=30
    shell: "rnp prune --params {input.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) --recover $(dirname {input.masks}) --out $(dirname {output.metrics}) > {log} 2>&1"
