from kneurons.workflow import run, score_random

run(snakemake, score_random)  # noqa: F821 - injected by Snakemake
