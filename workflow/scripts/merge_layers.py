from kneurons.workflow import run

run(snakemake, "merge_layers")  # noqa: F821 - injected by Snakemake
