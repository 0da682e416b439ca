from kneurons.workflow import baselines, run

run(snakemake, baselines)  # noqa: F821 - injected by Snakemake
