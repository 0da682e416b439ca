# The tiny backbone: one random initialisation per seed.
rule prepare_model:
    output:
        checkpoint="resources/models/esm2_tiny_seed{seed}.pt",
        regression="resources/models/esm2_tiny_seed{seed}-contact-regression.pt",
    log:
        "results/logs/prepare_model/seed{seed}.log",
    benchmark:
        "results/benchmarks/prepare_model/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.settings(
                step_settings.TinyModelSettings, config["model"]["tiny"]
            ),
            "prepare_model",
        ),
    script:
        "../scripts/prepare_model.py"


# Pretrained weights come from the internet, which cluster nodes often lack.
rule fetch_pretrained_model:
    output:
        checkpoint="resources/models/{name}.pt",
        regression="resources/models/{name}-contact-regression.pt",
    log:
        "results/logs/fetch_pretrained_model/{name}.log",
    benchmark:
        "results/benchmarks/fetch_pretrained_model/{name}.tsv"
    wildcard_constraints:
        name=r"esm2_t\d+_\w+_UR50D",
    localrule: True
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=lambda wildcards: params(
            step_settings.settings(
                step_settings.ReleaseSettings,
                name=wildcards.name,
                url=config["model"]["url"],
            ),
            "fetch_pretrained_model",
        ),
    script:
        "../scripts/fetch_pretrained_model.py"


if MODEL_KIND == "hf":

    # A local Hugging Face ESM-2 directory (model.name), written once in fair-esm's format.
    rule convert_hf_model:
        input:
            **hf_inputs(),
        output:
            checkpoint=converted_checkpoint(),
            regression=converted_checkpoint().removesuffix(".pt")
            + "-contact-regression.pt",
        log:
            "results/logs/convert_hf_model.log",
        benchmark:
            "results/benchmarks/convert_hf_model.tsv"
        conda:
            "../../envs/kneurons.yaml"
        params:
            settings=params({}, "convert_hf_model"),
        script:
            "../scripts/convert_hf_model.py"

    # a directory named like a release (or esm2_tiny) writes the same file: the user's wins
    ruleorder: convert_hf_model > fetch_pretrained_model
    ruleorder: convert_hf_model > prepare_model


# The unlabeled corpus of masked-LM pretraining: never a labelled sequence or near-duplicate.
rule pretrain_corpus:
    input:
        sequences=rules.download.output.table,
        corpus=corpus_file(),
    output:
        corpus="results/pretrain/corpus.tsv",
        report="results/pretrain/corpus.json",
    log:
        "results/logs/pretrain_corpus.log",
    benchmark:
        "results/benchmarks/pretrain_corpus.tsv"
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(step_settings.corpus_params(config), "pretrain_corpus"),
    script:
        "../scripts/pretrain_corpus.py"


# Masked-LM pretraining (ESM-2's recipe): one model for every seed, or one per seed.
rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        checkpoint="resources/models/pretrained_{name}.pt",
        regression="resources/models/pretrained_{name}-contact-regression.pt",
        history="results/pretrain/{name}/history.tsv",
        predictions="results/pretrain/{name}/predictions.tsv",
        info="results/pretrain/{name}/info.json",
    log:
        "results/logs/pretrain/{name}.log",
    benchmark:
        "results/benchmarks/pretrain/{name}.tsv"
    wildcard_constraints:
        name=r"seed\d+|shared",
    conda:
        "../../envs/kneurons.yaml"
    threads: 2
    resources:
        gpu=1 if PRETRAIN["device"].startswith("cuda") else 0,
    params:
        settings=pretrain_params,
    script:
        "../scripts/pretrain.py"


rule pretrain_report:
    input:
        predictions=rules.pretrain.output.predictions,
        history=rules.pretrain.output.history,
        corpus=rules.pretrain_corpus.output.corpus,
        corpus_report=rules.pretrain_corpus.output.report,
    output:
        table=report(
            "results/pretrain/{name}/metrics.tsv",
            caption="../report/pretraining_metrics.rst",
            category="Pretraining",
        ),
        summary="results/pretrain/{name}/summary.md",
        png=report(
            "results/pretrain/{name}/pretraining.png",
            caption="../report/pretraining.rst",
            category="Pretraining",
        ),
        pdf="results/pretrain/{name}/pretraining.pdf",
    log:
        "results/logs/pretrain_report/{name}.log",
    benchmark:
        "results/benchmarks/pretrain_report/{name}.tsv"
    wildcard_constraints:
        name=r"seed\d+|shared",
    conda:
        "../../envs/kneurons.yaml"
    params:
        settings=params(
            step_settings.settings(
                step_settings.PretrainReportSettings, config["plots"]
            ),
            "pretrain_report",
        ),
    script:
        "../scripts/pretrain_report.py"


rule finetune:
    input:
        checkpoint=model_checkpoint,
        split=split_table,
    output:
        model="results/finetune/seed{seed}/model.pt",
        metrics="results/finetune/seed{seed}/metrics.json",
    log:
        "results/logs/finetune/seed{seed}.log",
    benchmark:
        "results/benchmarks/finetune/seed{seed}.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["finetune"]["device"].startswith("cuda") else 0,
    params:
        settings=params(
            step_settings.settings(step_settings.FinetuneSettings, config["finetune"]),
            "finetune",
        ),
    script:
        "../scripts/finetune.py"
