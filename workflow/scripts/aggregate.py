from kneurons.workflow import run

run(snakemake, "aggregate")  # noqa: F821 - injected by Snakemake
