rule aggregate:
    input:
        finetune=seed_files("results/finetune/seed{seed}/metrics.json"),
        results=seed_files("results/evaluation/seed{seed}/results.tsv"),
        kept=seed_files("results/evaluation/seed{seed}/kept.tsv"),
        baselines=baseline_files(),
    output:
        accuracy=report(
            "results/accuracy.tsv", caption="../report/accuracy.rst", category="Tables"
        ),
        summary=report(
            "results/summary.tsv", caption="../report/summary.rst", category="Tables"
        ),
        tests=report(
            "results/tests.tsv", caption="../report/tests.rst", category="Tables"
        ),
        enrichment=report(
            "results/enrichment.tsv",
            caption="../report/enrichment.rst",
            category="Tables",
        ),
        density=report(
            "results/density.tsv", caption="../report/density.rst", category="Tables"
        ),
        markdown="results/summary.md",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params({}, "aggregate"),
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        accuracy=rules.aggregate.output.accuracy,
        summary=rules.aggregate.output.summary,
        tests=rules.aggregate.output.tests,
        enrichment=rules.aggregate.output.enrichment,
        density=rules.aggregate.output.density,
        finetune=seed_files("results/finetune/seed{seed}/metrics.json"),
    output:
        plot_outputs(),
    log:
        "results/logs/plots.log",
    benchmark:
        "results/benchmarks/plots.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.plot_params(
                config, {name: m.color for name, m in METHOD_REGISTRY.items()}
            ),
            "plots",
        ),
    script:
        "../scripts/plots.py"
