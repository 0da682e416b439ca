from kneurons.workflow import run, score_activation

run(snakemake, score_activation)  # noqa: F821 - injected by Snakemake
