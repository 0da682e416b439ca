from kneurons.workflow import run, score

run(snakemake, score)  # noqa: F821 - injected by Snakemake
