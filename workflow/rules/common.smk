import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from kneurons import settings as step_settings
from kneurons.attribution.methods import REGISTRY as METHOD_REGISTRY
from kneurons.codehash import code_version, file_sha256
from kneurons.data.download import SOURCES
from kneurons.config import ConfigError, checked_config, knowledge_enabled
from kneurons.model.hf_checkpoint import weight_files
from kneurons.model.release import check_model_config, model_kind, num_layers
from kneurons.model.units import MODULES
from kneurons.reporting.format import PRUNING_FIGURES
from kneurons.workflow import step_module

min_version("9.0")

# --- the config: schema defaults, one-line errors, one canonical spelling ----------------------
try:
    config.update(
        checked_config(
            config,
            Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
            METHOD_REGISTRY,
            MODULES,
            validate,
        )
    )
    check_model_config(config["model"])
except ConfigError as err:
    sys.exit(str(err))  # one line naming the key, no traceback

SEEDS = config["seeds"]
METHODS = config["scoring"]["methods"]
MODEL = config["model"]["name"]
MODEL_KIND = model_kind(MODEL)
KNOWLEDGE = knowledge_enabled(config, METHOD_REGISTRY)
SAE = config["sae"]["enabled"]
LAYERS = list(range(num_layers(config["model"])))
PRETRAIN = config["model"]["pretrain"]


wildcard_constraints:
    seed=r"\d+",
    method="|".join(METHOD_REGISTRY),
    layer=r"\d+",
    split=r"seed\d+|shared",


def params(settings, step, *modules):
    """A rule's one param: its settings and the hash of the code that decides its results
    (the step's module, `modules`, and what they import).

    One named mapping, not a param per key: Snakemake compares params as an unnamed set of
    value reprs, so two values swapped between keys would otherwise go unnoticed."""
    return {
        **settings,
        step_settings.CODE_KEY: code_version(step_module(step), *modules),
    }


# --- input functions -----------------------------------------------------------------------
def user_table():
    """The user's table (data.table.path) when data.source is table, else nothing."""
    if config["data"]["source"] != "table":
        return []
    return os.path.normpath(config["data"]["table"]["path"])


def download_params():
    """Only the active source's settings and code; a user table by its content hash."""
    source = config["data"]["source"]
    sha = file_sha256(user_table()) if source == "table" else None
    return params(
        step_settings.download_params(config, sha), "download", SOURCES[source]
    )


def hf_inputs():
    """The files of the Hugging Face directory the conversion reads (editing one reruns it)."""
    files = {
        "config": str(Path(MODEL, "config.json")),
        "weights": [str(path) for path in weight_files(MODEL)],
    }
    if Path(MODEL, "vocab.txt").is_file():  # checked against ESM-2's alphabet
        files["vocab"] = str(Path(MODEL, "vocab.txt"))
    return files


def converted_checkpoint():
    """Where a Hugging Face directory's conversion to fair-esm's format is written."""
    return f"resources/models/{Path(MODEL).resolve().name}.pt"


def base_checkpoint(seed):
    """The configured backbone: the seed's own tiny initialisation, or the configured model."""
    if MODEL_KIND == "tiny":
        return f"resources/models/esm2_tiny_seed{seed}.pt"
    if MODEL_KIND == "hf":
        return converted_checkpoint()
    return MODEL if MODEL_KIND == "checkpoint" else f"resources/models/{MODEL}.pt"


def pretrain_name(seed):
    """The pretrained model a seed fine-tunes: the shared one, or its own (per_seed)."""
    return f"seed{seed}" if PRETRAIN["per_seed"] else "shared"


def model_checkpoint(wildcards):
    """The backbone a seed fine-tunes: pretrained here (model.pretrain), or the configured one."""
    if PRETRAIN["enabled"]:
        return f"resources/models/pretrained_{pretrain_name(wildcards.seed)}.pt"
    return base_checkpoint(wildcards.seed)


def corpus_file():
    """The user's corpus file (model.pretrain.corpus), or nothing for the synthetic pool."""
    return os.path.normpath(PRETRAIN["corpus"]) if PRETRAIN["corpus"] else []


def pretrain_inputs(wildcards):
    """The corpus; a model other than tiny continues from its own weights."""
    inputs = {"corpus": rules.pretrain_corpus.output.corpus}
    if MODEL_KIND != "tiny":
        inputs["checkpoint"] = base_checkpoint(None)
    return inputs


def pretrain_params(wildcards):
    seed = (
        int(wildcards.name.removeprefix("seed")) if wildcards.name != "shared" else None
    )
    return params(step_settings.pretrain_params(config, seed), "pretrain")


def pretrain_reports():
    """The pretraining page, table and figure of each pretrained model (when enabled)."""
    if not PRETRAIN["enabled"]:
        return []
    names = sorted({pretrain_name(seed) for seed in SEEDS})
    return expand(
        "results/pretrain/{name}/{file}",
        name=names,
        file=["metrics.tsv", "summary.md", "pretraining.png", "pretraining.pdf"],
    )


def split_name(seed):
    """Each seed's own split, or the one shared split (split.shared)."""
    return "shared" if config["split"]["shared"] else f"seed{seed}"


def split_table(wildcards):
    return f"results/data/split/{split_name(wildcards.seed)}.tsv"


def methods_pattern(per_layer):
    """Regex of the methods that run one job per layer (scoring.jobs_per_layer and costly per
    layer, IG), or one job per seed."""
    split = config["scoring"]["jobs_per_layer"]
    names = [
        m.name for m in METHOD_REGISTRY.values() if (m.per_layer and split) == per_layer
    ]
    return "|".join(names) or "(?!)"


def scoring_inputs(wildcards):
    """The fine-tuned model; the split too when the method runs the model on sequences."""
    inputs = {"model": rules.finetune.output.model.format(seed=wildcards.seed)}
    if METHOD_REGISTRY[wildcards.method].needs_model_pass:
        inputs["split"] = split_table(wildcards)
    return inputs


def scoring_params(wildcards):
    method = METHOD_REGISTRY[wildcards.method]
    return params(
        step_settings.scoring_params(config, method),
        "score",
        f"attribution.methods.{method.name}",
    )


def layer_files(suffix):
    def files(wildcards):
        return expand(
            "results/scores/seed{seed}/{method}/layer{layer}.{suffix}",
            seed=wildcards.seed,
            method=wildcards.method,
            layer=range(num_layers(config["model"])),
            suffix=suffix,
        )

    return files


def seed_scores(wildcards):
    """The seed's score tables, in the order of scoring.methods."""
    return expand(
        "results/scores/seed{seed}/{method}.tsv", seed=wildcards.seed, method=METHODS
    )


def knowledge_inputs(wildcards):
    """The fine-tuned model, the split, and knowledge.method's scores and per-sequence values."""
    scores = f"results/scores/seed{wildcards.seed}/{config['knowledge']['method']}"
    return {
        "model": rules.finetune.output.model.format(seed=wildcards.seed),
        "split": split_table(wildcards),
        "scores": f"{scores}.tsv",
        "per_sequence": f"{scores}.npy",
    }


def sae_inputs(wildcards):
    """The fine-tuned model, the split and (with pretraining) the unlabeled corpus."""
    inputs = {
        "model": rules.finetune.output.model.format(seed=wildcards.seed),
        "split": split_table(wildcards),
    }
    if PRETRAIN["enabled"] and config["sae"]["corpus_sequences"]:
        inputs["corpus"] = rules.pretrain_corpus.output.corpus
    return inputs


def features_inputs(wildcards):
    """The fine-tuned model, the split, every layer's SAE and the knowledge neurons."""
    inputs = {
        "model": rules.finetune.output.model.format(seed=wildcards.seed),
        "split": split_table(wildcards),
        "saes": expand(rules.sae.output.sae, seed=wildcards.seed, layer=LAYERS),
    }
    if KNOWLEDGE:
        inputs["neurons"] = rules.knowledge.output.neurons.format(seed=wildcards.seed)
    return inputs


def sae_histories():
    return expand(rules.sae.output.history, seed=SEEDS, layer=LAYERS)


def seed_files(pattern):
    return expand(pattern, seed=SEEDS)


def baseline_files():
    """Each seed's split baselines, in seed order (one file repeated for a shared split)."""
    return [f"results/baselines/{split_name(seed)}.json" for seed in SEEDS]


def plot_outputs():
    """The pruning figures: PNGs go into `snakemake --report`, each with a caption."""
    pngs = []
    for name in PRUNING_FIGURES.values():
        png = f"results/plots/{name}.png"
        pngs.append(report(png, caption=f"../report/{name}.rst", category="Plots"))
    return pngs + expand("results/plots/{name}.pdf", name=PRUNING_FIGURES.values())


def browser_inputs(wildcards):
    """Every seed's split, model and scores; the knowledge and SAE tables where they run
    (seed-major lists, as `reporting.browser.browser` reads them)."""
    inputs = {
        "splits": [f"results/data/split/{split_name(seed)}.tsv" for seed in SEEDS],
        "models": seed_files(rules.finetune.output.model),
        "scores": expand(
            "results/scores/seed{seed}/{method}.tsv", seed=SEEDS, method=METHODS
        ),
    }
    if KNOWLEDGE:
        inputs["neurons"] = seed_files(rules.knowledge.output.neurons)
        inputs["effects"] = seed_files(rules.knowledge.output.effects)
    if SAE:
        inputs["concepts"] = seed_files(rules.features.output.concepts)
        inputs["saes"] = expand(rules.sae.output.sae, seed=SEEDS, layer=LAYERS)
    return inputs
