"""The dispatcher: a rule's script calls `run(snakemake, "<step>")`, which runs the step
function of its stage package with the job's inputs, outputs, typed settings and wildcards.

It decides nothing (logging, thread count, one call), so it is in no code hash.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import typing

from kneurons.errors import UserError
from kneurons.settings import build

# step -> "module:function"; the function takes (input, output, settings, wildcards) and
# annotates `settings` with its dataclass (kneurons.settings).
STEPS = {
    "download": "data.download:download",
    "split": "data.split:split",
    "prepare_model": "model.esm:prepare_model",
    "fetch_pretrained_model": "model.release:fetch_pretrained_model",
    "convert_hf_model": "model.hf_checkpoint:convert_hf_model",
    "pretrain_corpus": "data.corpus:pretrain_corpus",
    "pretrain": "model.pretrain:pretrain_step",
    "pretrain_report": "reporting.pretraining:pretrain_report",
    "finetune": "model.train:finetune_step",
    "score": "attribution.score:score",
    "merge_layers": "attribution.score:merge_layers",
    "baselines": "analysis.baselines:baselines",
    "evaluate": "analysis.evaluation:evaluate",
    "knowledge": "analysis.knowledge:knowledge",
    "aggregate": "reporting.aggregate:aggregate",
    "plots": "reporting.plots:plots",
    "knowledge_summary": "reporting.knowledge_summary:knowledge_summary",
    "sae": "model.sae:sae_step",
    "features": "analysis.features:features_step",
    "features_summary": "reporting.features:features_summary",
    "browser": "reporting.browser:browser",
}

log = logging.getLogger("kneurons")


def step_module(step: str) -> str:
    """The module (below kneurons) that holds `step`: what the rule's code hash starts from."""
    return STEPS[step].split(":")[0]


def step_function(step: str):
    """The function of `step` (imported on demand: the data steps never import torch)."""
    module, name = STEPS[step].split(":")
    return getattr(importlib.import_module(f"kneurons.{module}"), name)


def call(step: str, input, output, params: dict, wildcards: dict | None = None) -> None:
    """Run `step` on a rule's params (a plain mapping; the code hash, if any, is ignored),
    as its job would, without Snakemake."""
    function = step_function(step)
    cls = typing.get_type_hints(function)["settings"]
    function(input, output, build(cls, params), wildcards or {})


def run(smk, step: str) -> None:
    """Run `step` with the job's input/output/params; log to the job's log file.

    Messages go to the log; a UserError prints one line to the terminal, anything else its
    traceback to the log.
    """
    stderr = sys.stderr
    handle = open(smk.log[0], "w") if smk.log else None  # noqa: SIM115 - closed below
    if handle:
        sys.stderr = handle
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        step_function(step)  # imported first: torch only where the step needs it
        if "torch" in sys.modules:
            from kneurons.model.esm import set_threads

            set_threads(min(smk.threads, os.cpu_count() or 1))  # --cores may exceed the machine's
        params = dict(smk.params.settings) if "settings" in smk.params.keys() else {}
        call(step, smk.input, smk.output, params, dict(smk.wildcards.items()))
    except UserError as err:
        # The user's to fix: one line in the log and on the console, no traceback.
        log.error("%s", err)
        print(f"error in {step}: {err}", file=stderr)
        sys.exit(1)
    except Exception as err:
        traceback.print_exc()  # ours to fix: keep the traceback in the log
        print(f"error in {step}: {type(err).__name__}: {err}", file=stderr)
        sys.exit(1)
    finally:
        if handle:
            sys.stderr = stderr
            handle.close()
