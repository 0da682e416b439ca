from kneurons.workflow import knowledge_summary, run

run(snakemake, knowledge_summary)  # noqa: F821 - injected by Snakemake
