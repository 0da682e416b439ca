from kneurons.workflow import run

run(snakemake, "download")  # noqa: F821 - injected by Snakemake
