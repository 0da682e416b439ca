from kneurons.workflow import evaluate, run

run(snakemake, evaluate)  # noqa: F821 - injected by Snakemake
