from kneurons.workflow import run

run(snakemake, "knowledge")  # noqa: F821 - injected by Snakemake
