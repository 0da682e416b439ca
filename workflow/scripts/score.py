from kneurons.workflow import run

run(snakemake, "score")  # noqa: F821 - injected by Snakemake
