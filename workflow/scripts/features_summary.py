from kneurons.workflow import run

run(snakemake, "features_summary")  # noqa: F821 - injected by Snakemake
