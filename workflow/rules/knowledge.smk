# What the knowledge neurons know: per class, from knowledge.method's per-sequence values.
rule knowledge:
    input:
        unpack(knowledge_inputs),
    output:
        neurons="results/knowledge/seed{seed}/neurons.tsv",
        effects="results/knowledge/seed{seed}/effects.tsv",
        motifs="results/knowledge/seed{seed}/motifs.tsv",
    log:
        "results/logs/knowledge/seed{seed}.log",
    benchmark:
        "results/benchmarks/knowledge/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["knowledge"]["device"].startswith("cuda") else 0,
    params:
        settings=params(step_settings.knowledge_params(config), "knowledge"),
    script:
        "../scripts/knowledge.py"


rule knowledge_summary:
    input:
        neurons=seed_files("results/knowledge/seed{seed}/neurons.tsv"),
        effects=seed_files("results/knowledge/seed{seed}/effects.tsv"),
        motifs=seed_files("results/knowledge/seed{seed}/motifs.tsv"),
    output:
        summary="results/knowledge/summary.md",
        specificity=report(
            "results/knowledge/specificity.tsv",
            caption="../report/knowledge_specificity.rst",
            category="Knowledge neurons",
        ),
        detectors=report(
            "results/knowledge/detectors.tsv",
            caption="../report/knowledge_detectors.rst",
            category="Knowledge neurons",
        ),
        effects_png=report(
            "results/knowledge/knowledge_effects.png",
            caption="../report/knowledge_effects.rst",
            category="Knowledge neurons",
        ),
        effects_pdf="results/knowledge/knowledge_effects.pdf",
        placement_png=report(
            "results/knowledge/knowledge_placement.png",
            caption="../report/knowledge_placement.rst",
            category="Knowledge neurons",
        ),
        placement_pdf="results/knowledge/knowledge_placement.pdf",
        motif_detectors_png=report(
            "results/knowledge/motif_detectors.png",
            caption="../report/motif_detectors.rst",
            category="Knowledge neurons",
        ),
        motif_detectors_pdf="results/knowledge/motif_detectors.pdf",
    log:
        "results/logs/knowledge_summary.log",
    benchmark:
        "results/benchmarks/knowledge_summary.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.settings(
                step_settings.KnowledgeSummarySettings, config["plots"], seeds=SEEDS
            ),
            "knowledge_summary",
        ),
    script:
        "../scripts/knowledge_summary.py"
