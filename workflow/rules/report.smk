rule aggregate:
    input:
        finetune=finetune_metrics(),
        evaluations=evaluation_files(),
    output:
        summary="results/summary.tsv",
        density="results/density.tsv",
        markdown="results/summary.md",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        "../../envs/kneurons.yaml"
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        summary=rules.aggregate.output.summary,
        density=rules.aggregate.output.density,
        finetune=finetune_metrics(),
    output:
        expand("results/plots/{plot}.{ext}", plot=PLOTS, ext=["png", "pdf"]),
    log:
        "results/logs/plots.log",
    benchmark:
        "results/benchmarks/plots.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        **config["plots"],
    script:
        "../scripts/plots.py"
