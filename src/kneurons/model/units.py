"""What a neuron is, without torch: the Linear modules of an ESM-2 layer whose output units
are scored (fair-esm names, in the order tables and plots use)."""

MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
# the columns of a unit table: one row per unit (output unit `unit` of `module` in `layer`)
UNIT_COLUMNS = ["layer", "module", "unit"]
# the scope of a pruned model's selection: every unit, or one of MODULES (within-module pruning)
GLOBAL = "global"
# what the knowledge-neuron test does to a class's units: their outputs times the factor
INTERVENTIONS = {"suppress": 0.0, "amplify": 2.0}
