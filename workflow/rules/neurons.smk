rule score_ig_layer:
    input:
        model=rules.finetune.output.model,
        split=rules.split.output.split,
    output:
        scores="results/scores/seed{seed}/ig/layer{layer}.tsv",
    log:
        "results/logs/score/seed{seed}/ig/layer{layer}.log",
    benchmark:
        "results/benchmarks/score/seed{seed}/ig/layer{layer}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    params:
        settings=settings(
            scoring_params(
                "modules",
                "max_sequences",
                "ig_steps",
                "ig_rule",
                "ig_abs",
                "batch_size",
                "rows_per_pass",
                "device",
            ),
            code=code_version("model", "scoring"),
        ),
    script:
        "../scripts/score_ig_layer.py"


rule merge_ig_layers:
    input:
        layers=ig_layer_tables,
    output:
        scores="results/scores/seed{seed}/ig.tsv",
    log:
        "results/logs/merge_ig_layers/seed{seed}.log",
    benchmark:
        "results/benchmarks/merge_ig_layers/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    script:
        "../scripts/merge_scores.py"


rule score_activation:
    input:
        model=rules.finetune.output.model,
        split=rules.split.output.split,
    output:
        scores="results/scores/seed{seed}/activation.tsv",
    log:
        "results/logs/score/seed{seed}/activation.log",
    benchmark:
        "results/benchmarks/score/seed{seed}/activation.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    params:
        settings=settings(
            scoring_params("modules", "max_sequences", "batch_size", "device"),
            code=code_version("model", "scoring"),
        ),
    script:
        "../scripts/score_activation.py"


rule score_random:
    input:
        model=rules.finetune.output.model,
    output:
        scores="results/scores/seed{seed}/random.tsv",
    log:
        "results/logs/score/seed{seed}/random.log",
    benchmark:
        "results/benchmarks/score/seed{seed}/random.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=settings(
            scoring_params("modules"), code=code_version("model", "scoring")
        ),
    script:
        "../scripts/score_random.py"


rule evaluate:
    input:
        model=rules.finetune.output.model,
        split=rules.split.output.split,
        scores=scores_table,
    output:
        metrics="results/evaluation/seed{seed}/{method}/retention{ratio}.json",
    log:
        "results/logs/evaluate/seed{seed}/{method}/retention{ratio}.log",
    benchmark:
        "results/benchmarks/evaluate/seed{seed}/{method}/retention{ratio}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=settings(
            normalize=config["scoring"]["normalize"],
            batch_size=config["sweep"]["batch_size"],
            device=config["sweep"]["device"],
            code=code_version("model", "train", "selection"),
        ),
    script:
        "../scripts/evaluate.py"
