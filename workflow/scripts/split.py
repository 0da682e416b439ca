from kneurons.workflow import run

run(snakemake, "split")  # noqa: F821 - injected by Snakemake
