from kneurons.workflow import run, split

run(snakemake, split)  # noqa: F821 - injected by Snakemake
