import ast
import hashlib
import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from kneurons.config import ConfigError, canonical, check_schema, conform
from kneurons.model.hf_checkpoint import HFCheckpointError, read_hf_config, weight_files
from kneurons.attribution.methods import REGISTRY as METHOD_REGISTRY

min_version("9.0")

CONFIG_SCHEMA = Path(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
SCHEMA = yaml.safe_load(CONFIG_SCHEMA.read_text())
# the method names come from the registry, not from a hand-kept list
SCHEMA["properties"]["scoring"]["properties"]["methods"]["items"] = {
    "enum": list(METHOD_REGISTRY)
}
# numbers given as strings on the command line (--config seeds=[0]) become numbers first
config.update(conform(config, SCHEMA))
try:
    check_schema(config, SCHEMA)  # a bad value: one line naming the key, no traceback
except ConfigError as err:
    sys.exit(str(err))
validate(config, str(CONFIG_SCHEMA), set_default=True)
# One spelling per setting: keys sorted, numbers typed by the schema (kneurons.config).
config.update(canonical(conform(config, SCHEMA)))


def settings(*mappings, **values):
    """A rule's one param: the settings it uses, by name, in canonical form.

    Snakemake compares params as an unnamed set of value reprs, so separate params would miss
    two values swapped between keys, and a dict's repr would change with its key order.
    """
    merged = {}
    for mapping in mappings:
        merged.update(mapping)
    merged.update(values)
    return canonical(merged)


# fair-esm's ESM-2 releases, fetched by name (model.smk: fetch_pretrained_model)
RELEASE_NAME = r"esm2_t(6_8M|12_35M|30_150M|33_650M|36_3B|48_15B)_UR50D"


def hf_directory():
    """model.name when it is a local Hugging Face ESM-2 directory (not tiny, a release name or
    a .pt checkpoint), else None."""
    name = config["model"]["name"]
    if name == "tiny" or name.endswith(".pt") or re.fullmatch(RELEASE_NAME, name):
        return None
    return name


def config_error(key, problem):
    sys.exit(f"config key '{key}': {problem}")


def check_config():
    fractions = config["split"]
    total = fractions["train"] + fractions["validation"] + fractions["test"]
    if abs(total - 1) > 1e-6:
        config_error("split", f"train + validation + test must be 1, got {total:g}")
    data = config["data"]
    if data["min_length"] > data["max_length"]:
        config_error("data.min_length", "is larger than data.max_length")
    synthetic = data["synthetic"]
    if synthetic["min_length"] > synthetic["max_length"]:
        config_error(
            "data.synthetic.min_length", "is larger than data.synthetic.max_length"
        )
    if data["source"] == "table":
        path = data["table"]["path"]
        if not path:
            config_error("data.table.path", "is empty but data.source is 'table'")
        if not Path(path).is_file():
            config_error("data.table.path", f"{path} does not exist")
    tiny = config["model"]["tiny"]
    if tiny["embed_dim"] % tiny["attention_heads"]:
        config_error(
            "model.tiny.embed_dim", "must be divisible by model.tiny.attention_heads"
        )
    name = config["model"]["name"]
    if name.endswith(".pt"):
        if not Path(name).is_file():
            config_error("model.name", f"{name} does not exist")
        if not Path(name).name.startswith("esm2"):
            config_error(
                "model.name",
                f"{name}: an ESM-2 checkpoint file name starts with 'esm2'",
            )
        if "num_layers" not in config["model"]:
            config_error(
                "model.num_layers", "is required when model.name is a checkpoint path"
            )
    elif hf_directory():
        if not Path(name).is_dir():
            config_error(
                "model.name",
                f"{name} is not tiny, a fair-esm ESM-2 release name (esm2_t6_8M_UR50D, ...), "
                "a .pt checkpoint or a Hugging Face ESM-2 directory",
            )
        if not Path(name, "config.json").is_file():
            config_error(
                "model.name",
                f"{name} has no config.json (a Hugging Face ESM-2 directory holds "
                "config.json and model.safetensors or pytorch_model.bin)",
            )
        try:
            read_hf_config(name)
            weight_files(name)
        except HFCheckpointError as err:
            config_error("model.name", str(err))


def knowledge_enabled():
    """The knowledge analysis runs when asked and IG's per-unit, per-sequence scores exist."""
    return (
        config["knowledge"]["enabled"]
        and "ig" in config["scoring"]["methods"]
        and config["scoring"]["granularity"] == "unit"
    )


check_config()

SEEDS = config["seeds"]
METHODS = config["scoring"]["methods"]
RATIOS = config["sweep"]["retention_ratios"]


wildcard_constraints:
    seed=r"\d+",
    method="|".join(METHOD_REGISTRY),
    layer=r"\d+",
    ratio=r"[0-9.]+",


# --- code versions ------------------------------------------------------------------------
# A rule's scripts are one line (`run(snakemake, step)`); the code that decides its results
# is in the kneurons package. Each rule gets `code=code_version(<modules>)` as a param, so
# with the default rerun triggers (params among them) an edit of e.g. kneurons/scoring.py
# reruns the scoring rules and what follows them, and leaves finetune alone.
# The hash covers the listed modules plus the kneurons modules they import (transitively),
# read from the installed (editable) package, not from a copy of the workflow.
# Left out: code that decides no number. kneurons.io (atomic writes, reading files),
# kneurons.workflow (glue: paths and params in, one package call, outputs written; what
# selects, filters or labels data lives in the hashed modules), kneurons.errors and
# kneurons.progress (messages). Hashing them would rerun the DAG for a log message.
UNHASHED_MODULES = {"io", "workflow", "errors", "progress"}


@cache
def package_dir():
    spec = importlib.util.find_spec("kneurons")
    if spec is None or not spec.submodule_search_locations:
        raise WorkflowError("the kneurons package is not installed: pip install -e .")
    return Path(list(spec.submodule_search_locations)[0])


def module_file(name):
    """The source of kneurons module `name` (dotted below the package: `methods.ig`)."""
    path = package_dir().joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@cache
def module_imports(name):
    """kneurons modules that module `name` imports at the top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(module_file(name).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] != "kneurons":
                continue
            base = ".".join(parts[1:])
            for alias in node.names:  # `from kneurons.x import y`: y may be a module
                sub = f"{base}.{alias.name}" if base else alias.name
                if module_file(sub).is_file():
                    found.add(sub)
                elif base:
                    found.add(base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kneurons."):
                    found.add(alias.name.split(".", 1)[1])
    return frozenset(found - UNHASHED_MODULES)


@cache
def code_version(*names):
    """Short hash of the source of modules `names` and the kneurons modules they import."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(module_imports(name))
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0")
        digest.update(module_file(name).read_bytes())
    return f"{'+'.join(sorted(seen))}:{digest.hexdigest()[:12]}"


@cache
def hf_config():
    """The architecture in the Hugging Face directory's config.json (checked)."""
    return read_hf_config(hf_directory())


def hf_inputs():
    """The files of the Hugging Face directory the conversion reads (editing one reruns it)."""
    directory = Path(hf_directory())
    files = {
        "config": str(directory / "config.json"),
        "weights": [str(path) for path in weight_files(directory)],
    }
    if (directory / "vocab.txt").is_file():  # checked against ESM-2's alphabet
        files["vocab"] = str(directory / "vocab.txt")
    return files


def model_checkpoint(wildcards):
    """The backbone a seed fine-tunes: its own tiny initialisation, or the configured model."""
    name = config["model"]["name"]
    if name.endswith(".pt"):
        return name
    if name == "tiny":
        return f"resources/models/esm2_tiny_seed{wildcards.seed}.pt"
    if hf_directory():
        return converted_checkpoint()
    return f"resources/models/{name}.pt"


def converted_checkpoint():
    """Where a Hugging Face directory's conversion to fair-esm's format is written."""
    return f"resources/models/{Path(config['model']['name']).resolve().name}.pt"


def split_name(seed):
    """Each seed's own split, or the one shared split (split.shared)."""
    return "shared" if config["split"]["shared"] else f"seed{seed}"


def split_table(wildcards):
    return f"results/data/split/{split_name(wildcards.seed)}.tsv"


def split_settings(wildcards):
    """The split's settings and its seed: the run seed's, or split.seed for the shared one;
    identity and coverage only for a cluster split (editing them reruns nothing otherwise).
    """
    keys = ["method", "train", "validation", "test"]
    if config["split"]["method"] == "cluster":
        keys += ["identity", "coverage"]
    name = wildcards.split
    seed = (
        config["split"]["seed"] if name == "shared" else int(name.removeprefix("seed"))
    )
    # synthetic sequences share no homology: the test-to-train identity is measured for real
    # data and cluster splits only
    identity_report = (
        config["data"]["source"] != "synthetic"
        or config["split"]["method"] == "cluster"
    )
    return settings(
        {k: config["split"][k] for k in keys},
        seed=seed,
        identity_report=identity_report,
        code=code_version("data.tables", "data.clusters"),
    )


def num_layers():
    name = config["model"]["name"]
    if name == "tiny":
        return config["model"]["tiny"]["num_layers"]
    if name.endswith(".pt"):
        return config["model"]["num_layers"]
    if hf_directory():
        return hf_config()["num_layers"]
    return int(re.match(r"esm2_t(\d+)_", name).group(1))


def download_params():
    """Only the active source's settings, so editing another source reruns nothing.

    A user table is an input of `download`; its content hash stands in for its path, so
    editing the table reruns the DAG (the `input` rerun trigger only sees the file set) and
    moving it or spelling its path another way does not.
    """
    data = config["data"]
    keys = ["source", "classes", "min_length", "max_length", "nonstandard"]
    params = {key: data[key] for key in keys}
    source = dict(data[data["source"]])
    if data["source"] == "table":
        source["sha256"] = file_sha256(source.pop("path"))
    params[data["source"]] = source
    return params


def download_code():
    """The code that decides the download: the UniProt client only when it is used."""
    if config["data"]["source"] == "uniprot":
        return code_version("data.synthetic", "data.readers", "data.tables", "data.uniprot")
    return code_version("data.synthetic", "data.readers", "data.tables")


def user_table():
    """The user's table (data.table.path) when data.source is table, else nothing."""
    if config["data"]["source"] != "table":
        return []
    return os.path.normpath(config["data"]["table"]["path"])


@cache
def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def methods_pattern(per_layer):
    """Regex of the registered methods that run one job per layer (scoring.jobs_per_layer and
    costly per layer, IG), or one job per seed."""
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


def scoring_settings(wildcards):
    """Only the scoring settings this method uses, plus the code that decides its scores."""
    method = METHOD_REGISTRY[wildcards.method]
    keys = ["modules", "granularity", *method.settings]
    if method.needs_model_pass:
        keys += ["max_sequences", "device", "precision"]
    return settings(
        {key: config["scoring"][key] for key in keys},
        code=code_version("model.esm", "attribution.engine", f"attribution.methods.{method.name}"),
    )


def scores_table(wildcards):
    return f"results/scores/seed{wildcards.seed}/{wildcards.method}.tsv"


def layer_tables(wildcards):
    return expand(
        "results/scores/seed{seed}/{method}/layer{layer}.tsv",
        seed=wildcards.seed,
        method=wildcards.method,
        layer=range(num_layers()),
    )


def layer_arrays(wildcards):
    return [path.removesuffix(".tsv") + ".npy" for path in layer_tables(wildcards)]


def seed_scores(wildcards):
    """The seed's score tables, in the order of scoring.methods."""
    return expand(
        "results/scores/seed{seed}/{method}.tsv", seed=wildcards.seed, method=METHODS
    )


def evaluation_settings():
    """The sweep's settings, the methods (in order) and the code that decides the numbers."""
    return settings(
        {k: v for k, v in config["sweep"].items() if k != "device"},
        device=config["sweep"]["device"],
        methods=METHODS,
        normalize=config["scoring"]["normalize"],
        code=code_version("analysis.evaluation"),
    )


def seed_files(pattern):
    return expand(pattern, seed=SEEDS)


def baseline_files():
    """Each seed's split baselines, in seed order (one file repeated for a shared split)."""
    return [f"results/baselines/{split_name(seed)}.json" for seed in SEEDS]


def finetune_metrics():
    return seed_files("results/finetune/seed{seed}/metrics.json")


PLOTS = [
    "accuracy_vs_retention",
    "density_heatmaps",
    "enrichment_heatmaps",
    "module_enrichment",
    "module_pruning",
]


def plot_outputs():
    """The plots: PNGs go into `snakemake --report`, each with a caption."""
    pngs = []
    for plot in PLOTS:
        png = f"results/plots/{plot}.png"
        pngs.append(report(png, caption=f"../report/{plot}.rst", category="Plots"))
    return pngs + expand("results/plots/{plot}.pdf", plot=PLOTS)


KNOWLEDGE_PLOTS = ["knowledge_effects", "knowledge_placement", "motif_detectors"]


def knowledge_inputs(wildcards):
    """The fine-tuned model, the split, IG's scores and their per-sequence values."""
    return {
        "model": rules.finetune.output.model.format(seed=wildcards.seed),
        "split": split_table(wildcards),
        "scores": f"results/scores/seed{wildcards.seed}/ig.tsv",
        "per_sequence": f"results/scores/seed{wildcards.seed}/ig.npy",
    }


def knowledge_outputs():
    if not knowledge_enabled():
        return []
    return [
        "results/knowledge/summary.md",
        "results/knowledge/specificity.tsv",
        "results/knowledge/detectors.tsv",
        *expand(
            "results/knowledge/{plot}.{ext}", plot=KNOWLEDGE_PLOTS, ext=["png", "pdf"]
        ),
    ]


def final_outputs():
    return knowledge_outputs() + [
        "results/accuracy.tsv",
        "results/summary.tsv",
        "results/tests.tsv",
        "results/enrichment.tsv",
        "results/density.tsv",
        "results/summary.md",
        *expand("results/plots/{plot}.{ext}", plot=PLOTS, ext=["png", "pdf"]),
    ]
