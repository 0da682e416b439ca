from kneurons.workflow import run

run(snakemake, "features")  # noqa: F821 - injected by Snakemake
