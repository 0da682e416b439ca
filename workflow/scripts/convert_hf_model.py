from kneurons.workflow import convert_hf_model, run

run(snakemake, convert_hf_model)  # noqa: F821 - injected by Snakemake
