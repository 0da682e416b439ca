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
