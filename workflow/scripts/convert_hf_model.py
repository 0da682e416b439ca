from kneurons.workflow import run

run(snakemake, "convert_hf_model")  # noqa: F821 - injected by Snakemake
