# A sparse autoencoder on the residual stream after each layer of each fine-tuned model.
rule sae:
    input:
        unpack(sae_inputs),
    output:
        sae="results/sae/seed{seed}/layer{layer}.safetensors",
        history="results/sae/seed{seed}/layer{layer}_history.tsv",
    log:
        "results/logs/sae/seed{seed}_layer{layer}.log",
    benchmark:
        "results/benchmarks/sae/seed{seed}_layer{layer}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["sae"]["device"].startswith("cuda") else 0,
    params:
        settings=params(step_settings.sae_params(config), "sae"),
    script:
        "../scripts/sae.py"


# Neurons vs SAE features on InterPLM's concept metric; SAE quality; the causal test.
rule features:
    input:
        unpack(features_inputs),
    output:
        concepts="results/sae/seed{seed}/concepts.tsv",
        quality="results/sae/seed{seed}/quality.tsv",
        effects="results/sae/seed{seed}/effects.tsv",
    log:
        "results/logs/features/seed{seed}.log",
    benchmark:
        "results/benchmarks/features/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["sae"]["device"].startswith("cuda") else 0,
    params:
        settings=params(step_settings.features_params(config), "features"),
    script:
        "../scripts/features.py"


rule features_summary:
    input:
        concepts=seed_files("results/sae/seed{seed}/concepts.tsv"),
        quality=seed_files("results/sae/seed{seed}/quality.tsv"),
        effects=seed_files("results/sae/seed{seed}/effects.tsv"),
        histories=sae_histories(),
    output:
        summary="results/sae/summary.md",
        coverage=report(
            "results/sae/coverage.tsv",
            caption="../report/sae_coverage.rst",
            category="Neurons vs SAE features",
        ),
        best_f1="results/sae/best_f1.tsv",
        quality=report(
            "results/sae/quality.tsv",
            caption="../report/sae_quality.rst",
            category="Neurons vs SAE features",
        ),
        causal=report(
            "results/sae/causal.tsv",
            caption="../report/sae_causal.rst",
            category="Neurons vs SAE features",
        ),
        coverage_png=report(
            "results/sae/coverage.png",
            caption="../report/sae_coverage_figure.rst",
            category="Neurons vs SAE features",
        ),
        coverage_pdf="results/sae/coverage.pdf",
    log:
        "results/logs/features_summary.log",
    benchmark:
        "results/benchmarks/features_summary.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.settings(
                step_settings.KnowledgeSummarySettings, config["plots"], seeds=SEEDS
            ),
            "features_summary",
        ),
    script:
        "../scripts/features_summary.py"
