from kneurons.workflow import run

run(snakemake, "knowledge_summary")  # noqa: F821 - injected by Snakemake
