from kneurons.workflow import run

run(snakemake, "sae")  # noqa: F821 - injected by Snakemake
