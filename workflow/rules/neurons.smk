# One rule family for every method in kneurons.methods: per-layer jobs for the costly ones
# (IG), so a cluster spreads them, then a merge; one job for the others.
rule score_layer:
    input:
        unpack(scoring_inputs),
    output:
        scores="results/scores/seed{seed}/{method}/layer{layer}.tsv",
    log:
        "results/logs/score/seed{seed}/{method}/layer{layer}.log",
    benchmark:
        "results/benchmarks/score/seed{seed}/{method}/layer{layer}.tsv"
    wildcard_constraints:
        method=methods_pattern(per_layer=True),
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    params:
        settings=scoring_settings,
    script:
        "../scripts/score.py"


rule merge_layers:
    input:
        layers=layer_tables,
    output:
        scores="results/scores/seed{seed}/{method}.tsv",
    log:
        "results/logs/merge_layers/seed{seed}/{method}.log",
    benchmark:
        "results/benchmarks/merge_layers/seed{seed}/{method}.tsv"
    wildcard_constraints:
        method=methods_pattern(per_layer=True),
    conda:
        "../../envs/kneurons.yaml"
    script:
        "../scripts/merge_scores.py"


rule score:
    input:
        unpack(scoring_inputs),
    output:
        scores="results/scores/seed{seed}/{method}.tsv",
    log:
        "results/logs/score/seed{seed}/{method}.log",
    benchmark:
        "results/benchmarks/score/seed{seed}/{method}.tsv"
    wildcard_constraints:
        method=methods_pattern(per_layer=False),
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    params:
        settings=scoring_settings,
    script:
        "../scripts/score.py"


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
