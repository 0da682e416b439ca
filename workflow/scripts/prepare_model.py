from kneurons.workflow import run

run(snakemake, "prepare_model")  # noqa: F821 - injected by Snakemake
