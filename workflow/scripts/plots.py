from kneurons.workflow import run

run(snakemake, "plots")  # noqa: F821 - injected by Snakemake
