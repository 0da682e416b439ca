from kneurons.workflow import run

run(snakemake, "pretrain")  # noqa: F821 - injected by Snakemake
