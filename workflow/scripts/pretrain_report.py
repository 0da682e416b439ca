from kneurons.workflow import run

run(snakemake, "pretrain_report")  # noqa: F821 - injected by Snakemake
