# The five DVC stages, one rule each, calling the same CLI.

DATA_FILES = ["train.safetensors", "test_clean.safetensors", "test_poison.safetensors", "defense.safetensors", "holdout.safetensors"]


rule poison:
    output:
        expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        params=POISON + "/poison/params.yaml",
        trigger=POISON + "/poison/trigger.png",
        metrics=POISON + "/poison/metrics.json",
    params: text=lambda w: params_text(w, "poison")
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/poison.tsv"
    log: POISON + "/poison/log.txt"
    resources: runtime=30
    shell: WRITE_PARAMS + "rnp poison --params {output.params} --out $(dirname {output.metrics}) > {log} 2>&1"


rule train:
    input:
        data=expand(POISON + "/poison/{file}", file=DATA_FILES[:3], allow_missing=True),
    output:
        params=TRAIN + "/train/params.yaml",
        model=TRAIN + "/train/model.safetensors",
        history=TRAIN + "/train/history.csv",
        metrics=TRAIN + "/train/metrics.json",
    params: text=lambda w: params_text(w, "train")
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/train.tsv"
    log: TRAIN + "/train/log.txt"
    resources: runtime=240
    shell: WRITE_PARAMS + "rnp train --params {output.params} --poison $(dirname {input.data[0]}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule unlearn:
    input:
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=TRAIN + "/train/model.safetensors",
    output:
        params=DEFENSE + "/unlearn/params.yaml",
        model=DEFENSE + "/unlearn/model.safetensors",
        metrics=DEFENSE + "/unlearn/metrics.json",
    params: text=lambda w: params_text(w, "defense")
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/unlearn.tsv"
    log: DEFENSE + "/unlearn/log.txt"
    resources: runtime=30
    shell: WRITE_PARAMS + "rnp unlearn --params {output.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule recover:
    input:
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=DEFENSE + "/unlearn/model.safetensors",
    output:
        params=DEFENSE + "/recover/params.yaml",
        masks=DEFENSE + "/recover/masks.safetensors",
        metrics=DEFENSE + "/recover/metrics.json",
    params: text=lambda w: params_text(w, "defense")
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/recover.tsv"
    log: DEFENSE + "/recover/log.txt"
    resources: runtime=30
    shell: WRITE_PARAMS + "rnp recover --params {output.params} --poison $(dirname {input.data[0]}) --unlearn $(dirname {input.model}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule prune:
    input:
        data=expand(POISON + "/poison/{file}", file=DATA_FILES, allow_missing=True),
        model=TRAIN + "/train/model.safetensors",
        masks=DEFENSE + "/recover/masks.safetensors",
    output:
        params=DEFENSE + "/prune/params.yaml",
        model=DEFENSE + "/prune/model.safetensors",
        curve=report(DEFENSE + "/prune/curve.png", caption="../report/curve.rst", category="Pruning curves",
                     subcategory="{dataset} / {attack} / seed {seed}", labels={"arch": "{arch}", "defense": "{defense}"}),
        metrics=DEFENSE + "/prune/metrics.json",
    params: text=lambda w: params_text(w, "defense")
    benchmark: BENCH + "/{dataset}/{attack}/seed{seed}/{arch}/{defense}/prune.tsv"
    log: DEFENSE + "/prune/log.txt"
    resources: runtime=30
    shell: WRITE_PARAMS + "rnp prune --params {output.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) --recover $(dirname {input.masks}) --out $(dirname {output.metrics}) > {log} 2>&1"
