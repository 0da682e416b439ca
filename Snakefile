# Knowledge neurons in protein language models: the whole DAG.
# download -> split -> prepare_model -> finetune -> score -> evaluate (sweep) -> aggregate -> plots
#                                                        -> knowledge (per class) -> knowledge_summary
#                                    -> sae (per layer) -> features (concepts, causal) -> features_summary
#                                    -> browser (one page of every seed's neurons and features)


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/neurons.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/knowledge.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/browser.smk"


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.plots.output,
        rules.knowledge_summary.output if KNOWLEDGE else [],
        pretrain_reports(),
        rules.features_summary.output if SAE else [],
        rules.browser.output if config["browser"]["enabled"] else [],
