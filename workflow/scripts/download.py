from kneurons.workflow import download, run

run(snakemake, download)  # noqa: F821 - injected by Snakemake
