from kneurons.workflow import finetune, run

run(snakemake, finetune)  # noqa: F821 - injected by Snakemake
