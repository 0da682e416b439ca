"""What a neuron is, without torch: the table of the Linear modules of an ESM-2 layer whose
output units are scored, in the order tables and plots use.

A module type is one row of `MODULE_TYPES`; the model's hooks (`model.esm.module_name`), the
Hugging Face conversion, the effective-unit rules (`analysis.stats.effective_masks`), the
config schema's module names and the reports' order all read it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleType:
    """One scored Linear of an ESM-2 layer.

    name: its name in the config and the tables (fair-esm's attribute name).
    path: where it sits in fair-esm's `TransformerLayer` (below `layers.{i}.`).
    hf_path: where it sits in a Hugging Face `EsmLayer` (below `encoder.layer.{i}.`).
    width: its number of output units: `embed` (embed_dim) or `ffn` (4 x embed_dim).
    reach: how a kept unit can still change the output (`analysis.stats.effective_masks`):
      `residual` (it writes to the residual stream), `read_by:<module>` (through the kept
      input columns of that module), `logit:<module>` (an attention logit: it needs its
      partner in that module, a head whose values are read, and the rotary partner rule).
    """

    name: str
    path: str
    hf_path: str
    width: str
    reach: str


MODULE_TYPES = (
    ModuleType("q_proj", "self_attn.q_proj", "attention.self.query", "embed", "logit:k_proj"),
    ModuleType("k_proj", "self_attn.k_proj", "attention.self.key", "embed", "logit:q_proj"),
    ModuleType("v_proj", "self_attn.v_proj", "attention.self.value", "embed", "read_by:out_proj"),
    ModuleType("out_proj", "self_attn.out_proj", "attention.output.dense", "embed", "residual"),
    ModuleType("fc1", "fc1", "intermediate.dense", "ffn", "read_by:fc2"),
    ModuleType("fc2", "fc2", "output.dense", "embed", "residual"),
)
MODULE_TYPE = {m.name: m for m in MODULE_TYPES}
MODULES = tuple(MODULE_TYPE)
# the columns of a unit table: one row per unit (output unit `unit` of `module` in `layer`)
UNIT_COLUMNS = ["layer", "module", "unit"]
# the scope of a pruned model's selection: every unit, or one of MODULES (within-module pruning)
GLOBAL = "global"
# what the knowledge-neuron test does to a class's units: their outputs times the factor
INTERVENTIONS = {"suppress": 0.0, "amplify": 2.0}
