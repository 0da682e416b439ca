from kneurons.workflow import run

run(snakemake, "browser")  # noqa: F821 - injected by Snakemake
