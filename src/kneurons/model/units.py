"""What a neuron is, without torch: the Linear modules of an ESM-2 layer whose output units
are scored (fair-esm names, in the order tables and plots use)."""

MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
