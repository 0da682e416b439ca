from kneurons.workflow import run

run(snakemake, "fetch_pretrained_model")  # noqa: F821 - injected by Snakemake
