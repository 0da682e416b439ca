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
        settings=settings(download_params(), code=download_code()),
    script:
        "../scripts/download.py"


rule split:
    input:
        table=rules.download.output.table,
    output:
        split="results/data/split.tsv",
        report="results/data/split.json",
    log:
        "results/logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=settings(split_params(), code=code_version("data", "clusters")),
    script:
        "../scripts/split.py"
