from kneurons.workflow import run

run(snakemake, "pretrain_corpus")  # noqa: F821 - injected by Snakemake
