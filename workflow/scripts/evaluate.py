from kneurons.workflow import run

run(snakemake, "evaluate")  # noqa: F821 - injected by Snakemake
