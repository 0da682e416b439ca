from kneurons.workflow import aggregate, run

run(snakemake, aggregate)  # noqa: F821 - injected by Snakemake
