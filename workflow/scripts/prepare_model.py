from kneurons.workflow import prepare_model, run

run(snakemake, prepare_model)  # noqa: F821 - injected by Snakemake
