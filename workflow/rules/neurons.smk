# One rule family for every method in kneurons.attribution.methods: with
# scoring.jobs_per_layer, per-layer jobs for the costly ones (IG), so a cluster spreads them,
# then a merge; else one job per seed and method.
rule score_layer:
    input:
        unpack(scoring_inputs),
    output:
        scores="results/scores/seed{seed}/{method}/layer{layer}.tsv",
        # each scoring sequence's attributions (rows in the scoring subset's order, columns
        # in the table's row order), for the per-class knowledge neurons
        per_sequence="results/scores/seed{seed}/{method}/layer{layer}.npy",
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
        settings=scoring_params,
    script:
        "../scripts/score.py"


rule merge_layers:
    input:
        layers=layer_files("tsv"),
        per_sequence=layer_files("npy"),
    output:
        scores="results/scores/seed{seed}/{method}.tsv",
        per_sequence="results/scores/seed{seed}/{method}.npy",
    log:
        "results/logs/merge_layers/seed{seed}/{method}.log",
    benchmark:
        "results/benchmarks/merge_layers/seed{seed}/{method}.tsv"
    wildcard_constraints:
        method=methods_pattern(per_layer=True),
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params({}, "merge_layers"),
    script:
        "../scripts/merge_layers.py"


rule score:
    input:
        unpack(scoring_inputs),
    output:
        scores="results/scores/seed{seed}/{method}.tsv",
        # per-sequence values (rows: scoring sequences; columns: the table's rows), for the
        # methods that give them (IG); empty for the others
        per_sequence="results/scores/seed{seed}/{method}.npy",
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
        settings=scoring_params,
    script:
        "../scripts/score.py"


# Every pruned model of a seed in one job: one model load, many cheap evaluations.
rule evaluate:
    input:
        model=rules.finetune.output.model,
        split=split_table,
        scores=seed_scores,
    output:
        results="results/evaluation/seed{seed}/results.tsv",
        kept="results/evaluation/seed{seed}/kept.tsv",
    log:
        "results/logs/evaluate/seed{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["sweep"]["device"].startswith("cuda") else 0,
    params:
        settings=params(step_settings.sweep_params(config), "evaluate"),
    script:
        "../scripts/evaluate.py"
