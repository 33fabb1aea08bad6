# The five DVC stages, one rule each, calling the same CLI; and `rnp baseline` for a setting that names another defense.
# Each first writes its params text where its outputs go, then runs `rnp <stage>` (python -m rnp.cli) on it.


rule poison:
    output:
        get_poison_files(),
        params=f"{POISON}/poison/params.yaml",
        trigger=f"{POISON}/poison/trigger.png",
        metrics=f"{POISON}/poison/metrics.json",
    params:
        src=SRC,
        text=get_params_text("poison"),
    benchmark:
        f"{BENCH_POISON}/poison.tsv"
    log:
        f"{POISON}/poison/log.txt",
    resources:
        runtime=30,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli poison --params {output.params} --out $(dirname {output.metrics}) > {log} 2>&1"


rule train:
    input:
        data=get_poison_files(DATA_FILES[:3]),
    output:
        params=f"{TRAIN}/train/params.yaml",
        model=f"{TRAIN}/train/model.safetensors",
        history=f"{TRAIN}/train/history.csv",
        metrics=f"{TRAIN}/train/metrics.json",
    params:
        src=SRC,
        text=get_params_text("train"),
    benchmark:
        f"{BENCH_TRAIN}/train.tsv"
    log:
        f"{TRAIN}/train/log.txt",
    resources:
        runtime=240,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli train --params {output.params} --poison $(dirname {input.data[0]}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule unlearn:
    input:
        data=get_poison_files(),
        model=f"{TRAIN}/train/model.safetensors",
    output:
        params=f"{DEFENSE}/unlearn/params.yaml",
        model=f"{DEFENSE}/unlearn/model.safetensors",
        metrics=f"{DEFENSE}/unlearn/metrics.json",
    params:
        src=SRC,
        text=get_params_text("defense"),
    benchmark:
        f"{BENCH_DEFENSE}/unlearn.tsv"
    log:
        f"{DEFENSE}/unlearn/log.txt",
    resources:
        runtime=30,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli unlearn --params {output.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) "
        "--out $(dirname {output.metrics}) > {log} 2>&1"


rule recover:
    input:
        data=get_poison_files(),
        model=f"{DEFENSE}/unlearn/model.safetensors",
    output:
        params=f"{DEFENSE}/recover/params.yaml",
        masks=f"{DEFENSE}/recover/masks.safetensors",
        metrics=f"{DEFENSE}/recover/metrics.json",
    params:
        src=SRC,
        text=get_params_text("defense"),
    benchmark:
        f"{BENCH_DEFENSE}/recover.tsv"
    log:
        f"{DEFENSE}/recover/log.txt",
    resources:
        runtime=30,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli recover --params {output.params} --poison $(dirname {input.data[0]}) --unlearn $(dirname {input.model}) "
        "--out $(dirname {output.metrics}) > {log} 2>&1"


rule prune:
    input:
        data=get_poison_files(),
        model=f"{TRAIN}/train/model.safetensors",
        masks=f"{DEFENSE}/recover/masks.safetensors",
    output:
        params=f"{DEFENSE}/prune/params.yaml",
        model=f"{DEFENSE}/prune/model.safetensors",
        curve=report(
            f"{DEFENSE}/prune/curve.png",
            caption="../report/curve.rst",
            category="Pruning curves",
            subcategory="{dataset} / {attack} / seed {seed}",
            labels={"arch": "{arch}", "defense": "{defense}"},
        ),
        metrics=f"{DEFENSE}/prune/metrics.json",
    params:
        src=SRC,
        text=get_params_text("defense"),
    benchmark:
        f"{BENCH_DEFENSE}/prune.tsv"
    log:
        f"{DEFENSE}/prune/log.txt",
    resources:
        runtime=30,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli prune --params {output.params} --poison $(dirname {input.data[0]}) --train $(dirname {input.model}) "
        "--recover $(dirname {input.masks}) --out $(dirname {output.metrics}) > {log} 2>&1"


rule baseline:
    input:
        data=get_poison_files(),
        model=f"{TRAIN}/train/model.safetensors",
    output:
        params=f"{DEFENSE}/baseline/params.yaml",
        model=f"{DEFENSE}/baseline/model.safetensors",
        metrics=f"{DEFENSE}/baseline/metrics.json",
    params:
        src=SRC,
        text=get_params_text("defense"),
        method=get_method,
    benchmark:
        f"{BENCH_DEFENSE}/baseline.tsv"
    log:
        f"{DEFENSE}/baseline/log.txt",
    resources:
        runtime=120,
    conda:
        ENV
    shell:
        "printf '%s\\n' {params.text:q} > {output.params} && PYTHONPATH={params.src:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m rnp.cli baseline --defense {params.method} --params {output.params} --poison $(dirname {input.data[0]}) "
        "--train $(dirname {input.model}) --out $(dirname {output.metrics}) > {log} 2>&1"
