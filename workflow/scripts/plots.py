from kneurons.workflow import plots, run

run(snakemake, plots)  # noqa: F821 - injected by Snakemake
