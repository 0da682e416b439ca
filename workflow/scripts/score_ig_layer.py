from kneurons.workflow import run, score_ig_layer

run(snakemake, score_ig_layer)  # noqa: F821 - injected by Snakemake
