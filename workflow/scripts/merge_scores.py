from kneurons.workflow import merge_scores, run

run(snakemake, merge_scores)  # noqa: F821 - injected by Snakemake
