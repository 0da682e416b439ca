from kneurons.workflow import knowledge, run

run(snakemake, knowledge)  # noqa: F821 - injected by Snakemake
