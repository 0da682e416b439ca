from kneurons.workflow import run

run(snakemake, "baselines")  # noqa: F821 - injected by Snakemake
