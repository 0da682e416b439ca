from kneurons.workflow import run

run(snakemake, "finetune")  # noqa: F821 - injected by Snakemake
