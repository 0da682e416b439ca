rule download:
    input:
        table=user_table(),
    output:
        table="results/data/sequences.tsv",
        info="results/data/download.json",
    log:
        "results/logs/download.log",
    benchmark:
        "results/benchmarks/download.tsv"
    # on a cluster, downloads run on the submit host: compute nodes often lack internet
    localrule: True
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=download_params(),
    script:
        "../scripts/download.py"


# One split per seed (split.shared: one for all), named seed<N> or shared.
rule split:
    input:
        table=rules.download.output.table,
    output:
        split="results/data/split/{split}.tsv",
        report="results/data/split/{split}.json",
    log:
        "results/logs/split/{split}.log",
    benchmark:
        "results/benchmarks/split/{split}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=lambda wildcards: params(
            step_settings.split_params(config, wildcards.split), "split"
        ),
    script:
        "../scripts/split.py"


# Controls that need no model: the majority class and residue composition + length.
rule baselines:
    input:
        split=rules.split.output.split,
    output:
        baselines="results/baselines/{split}.json",
    log:
        "results/logs/baselines/{split}.log",
    benchmark:
        "results/benchmarks/baselines/{split}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.settings(step_settings.BaselinesSettings, config["sweep"]),
            "baselines",
        ),
    script:
        "../scripts/baselines.py"
