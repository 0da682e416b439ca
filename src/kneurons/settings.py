"""Typed settings of every step, and the one place that builds them from the config.

A rule's params are `settings(<Step>Settings, config)`: exactly the config keys the step's
dataclass declares, in canonical form (`kneurons.config.canonical`), so a step's settings and
its rerun trigger are the same object. The step receives them back as the dataclass
(`build`). A new setting is its schema entry, its `config.yaml` line and a field here.

Nothing here decides a number: the values come from the config (and its schema's defaults),
and whatever a builder derives (the split seed, the identity report) travels in the params,
so a change to it reruns the rule. Hence this module is not in any code hash.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from kneurons.config import canonical

# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSettings:
    """`data.synthetic`: the offline generator."""

    n_per_class: int
    min_length: int
    max_length: int
    motifs_per_sequence: tuple[int, ...]
    seed: int
    mutation_rate: float
    decoy_rate: float
    balance_composition: bool


@dataclass(frozen=True)
class UniprotSettings:
    """`data.uniprot`: the UniProt REST client."""

    url: str
    per_class: int
    seed: int
    retries: int
    timeout: float
    features: bool


@dataclass(frozen=True)
class TableSettings:
    """`data.table`, the table's content hash in place of its path (the path is an input)."""

    sha256: str
    id_column: str
    ec_column: str
    sequence_column: str
    motif_column: str
    per_class: int
    seed: int


@dataclass(frozen=True)
class DownloadSettings:
    """`data.*` of the active source only: editing another source reruns nothing."""

    source: str
    classes: tuple[int, ...]
    min_length: int
    max_length: int
    nonstandard: str
    synthetic: SyntheticSettings | None = None
    uniprot: UniprotSettings | None = None
    table: TableSettings | None = None


@dataclass(frozen=True)
class SplitSettings:
    """`split.*` of one split; identity and coverage only for a cluster split."""

    method: str
    train: float
    validation: float
    test: float
    seed: int
    identity_report: bool  # measure test-to-train identity (not for synthetic random splits)
    identity: float | None = None
    coverage: float | None = None


# --- model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelSettings:
    """`model.tiny`: the architecture of the from-scratch backbone."""

    num_layers: int
    embed_dim: int
    attention_heads: int


@dataclass(frozen=True)
class ReleaseSettings:
    """A fair-esm release to fetch: its name and `model.url`."""

    name: str
    url: str


@dataclass(frozen=True)
class NoSettings:
    """A step that the config does not steer (it reads only its inputs)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """`finetune.*`."""

    epochs: int
    lr: float
    head_lr: float
    weight_decay: float
    batch_size: int
    max_length: int
    device: str
    class_weights: str
    max_tokens: int
    precision: str
    train_layers: int


@dataclass(frozen=True)
class CorpusSettings:
    """The pretraining corpus (`model.pretrain`: corpus as `path`, size, seed, heldout,
    overlap_window) and, for the synthetic pool, the labelled data's grammar (`data.classes`,
    `data.synthetic`)."""

    path: str
    size: int
    seed: int
    heldout: float
    overlap_window: int
    classes: tuple[int, ...]
    min_length: int
    max_length: int
    motifs_per_sequence: tuple[int, ...]
    mutation_rate: float
    decoy_rate: float
    balance_composition: bool


@dataclass(frozen=True)
class PretrainSettings:
    """Masked-LM pretraining (`model.pretrain`): the initialisation seed, the optimiser, the
    tiny shape (`model.tiny`, for a model built here) and `finetune.max_length`."""

    seed: int
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    device: str
    num_layers: int
    embed_dim: int
    attention_heads: int
    max_length: int


@dataclass(frozen=True)
class PretrainReportSettings:
    """The pretraining figure's style (`plots.dpi`, `font_size`, `figure_width`)."""

    dpi: int
    font_size: float
    figure_width: float


# --- attribution ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringSettings:
    """`scoring.*` that one method uses: the modules, the granularity, the keys the method
    declares (`ScoringMethod.settings`) and, for methods that run the model on sequences, the
    scoring subset's size, device and precision (else None)."""

    modules: tuple[str, ...]
    granularity: str
    method: Mapping = field(default_factory=dict)
    max_sequences: int | None = None
    device: str | None = None
    precision: str | None = None


# --- analysis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselinesSettings:
    """The bootstrap of the baselines' intervals (`sweep.bootstrap`)."""

    bootstrap: int


@dataclass(frozen=True)
class SweepSettings:
    """`sweep.*` plus the scored methods (in order) and `scoring.normalize`."""

    retention_ratios: tuple[float, ...]
    random_draws: int
    control_draws: int
    module_ratios: tuple[float, ...]
    normalize: str
    bootstrap: int
    batch_size: int
    max_tokens: int
    device: str
    methods: tuple[str, ...]


@dataclass(frozen=True)
class KnowledgeSettings:
    """`knowledge.*` plus the scoring subset's size (`scoring.max_sequences`)."""

    method: str
    threshold: float
    share: float
    max_count: int
    matched_sets: int
    test_sequences: int
    max_tokens: int
    device: str
    max_sequences: int


@dataclass(frozen=True)
class SaeSettings:
    """`sae.*` for training one layer's sparse autoencoder."""

    expansion: int
    k: int
    steps: int
    batch_size: int
    lr: float
    dead_after: int
    corpus_sequences: int
    device: str


@dataclass(frozen=True)
class FeatureSettings:
    """`sae.random_sets`, `sae.device` and the knowledge step's test subset size."""

    random_sets: int
    test_sequences: int
    device: str


# --- reporting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotSettings:
    """`plots.*`, each method's colour and the granularity (for the axis labels)."""

    dpi: int
    font_size: float
    cmap: str
    figure_width: float
    method_colors: Mapping
    granularity: str


@dataclass(frozen=True)
class KnowledgeSummarySettings:
    """`plots.*` and the seeds (the order of the per-seed tables)."""

    dpi: int
    font_size: float
    cmap: str
    figure_width: float
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class BrowserSettings:
    """`browser.*` (examples per unit, the cap on units, the device), the seeds and the scored
    methods (the order of the browser's per-seed inputs)."""

    examples: int
    random_examples: int
    max_units: int
    device: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]


# --- building -------------------------------------------------------------------------------

CODE_KEY = "code"  # the rule's code hash travels beside the settings (kneurons.codehash)


def settings(cls: type, *sections: Mapping, **values) -> dict:
    """A rule's params: the fields of `cls` taken from config `sections` (later ones and
    `values` win), in canonical form; a missing field is a KeyError naming it."""
    merged: dict = {}
    for section in sections:
        merged.update(section)
    merged.update(values)
    names = [f.name for f in fields(cls)]
    chosen = {name: merged[name] for name in names if name in merged}
    required = [
        f.name
        for f in fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in chosen]
    if missing:
        raise KeyError(f"{cls.__name__} needs {', '.join(missing)}")
    return canonical(chosen)


def build(cls: type, values: Mapping):
    """The dataclass `cls` from a rule's params (`settings`); the code hash is dropped."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known - {CODE_KEY}
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**{name: _convert(hints[name], values[name]) for name in known if name in values})


def _convert(hint, value):
    """`value` as type `hint`: nested dataclasses built, lists made tuples where declared."""
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option):
            return build(option, value)
        if typing.get_origin(option) is tuple:
            return tuple(value)
    return value


# --- each rule's params, from the config -----------------------------------------------------
SOURCE_SECTIONS = tuple(f.name for f in fields(DownloadSettings) if f.default is None)


def _source_settings(source: str) -> type:
    """The dataclass of a data source's section: the type of its DownloadSettings field."""
    hint = typing.get_type_hints(DownloadSettings)[source]
    return next(arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg))


def download_params(config: Mapping, table_sha256: str | None = None) -> dict:
    """The download's settings: the active source's only (a user table by its content hash,
    so editing the table reruns the DAG and moving it does not)."""
    data = config["data"]
    source = data["source"]
    sections = {}
    if source == "table":
        sections["table"] = settings(TableSettings, data["table"], sha256=table_sha256)
    else:
        sections[source] = settings(_source_settings(source), data[source])
    common = {key: value for key, value in data.items() if key not in SOURCE_SECTIONS}
    return settings(DownloadSettings, common, **sections)


def split_params(config: Mapping, name: str) -> dict:
    """Split `name` (seed<N>, or shared: split.seed): identity and coverage only for a cluster
    split; the test-to-train identity only where it can leak (real data, cluster splits)."""
    split = config["split"]
    cluster = split["method"] == "cluster"
    seed = split["seed"] if name == "shared" else int(name.removeprefix("seed"))
    identity_report = config["data"]["source"] != "synthetic" or cluster
    keys = {k: v for k, v in split.items() if cluster or k not in ("identity", "coverage")}
    return settings(SplitSettings, keys, seed=seed, identity_report=identity_report)


def scoring_params(config: Mapping, method) -> dict:
    """One method's scoring settings: its own keys (`method.settings`) and, when it runs the
    model on sequences, the subset's size, device and precision."""
    scoring = config["scoring"]
    extra = {}
    if method.needs_model_pass:
        extra = {key: scoring[key] for key in ("max_sequences", "device", "precision")}
    own = {key: scoring[key] for key in method.settings}
    scope = {key: scoring[key] for key in ("modules", "granularity")}
    return settings(ScoringSettings, scope, method=own, **extra)


def sweep_params(config: Mapping) -> dict:
    """The evaluation's settings: `sweep.*`, the methods in order, `scoring.normalize`."""
    scoring = config["scoring"]
    return settings(
        SweepSettings, config["sweep"], methods=scoring["methods"], normalize=scoring["normalize"]
    )


def knowledge_params(config: Mapping) -> dict:
    return settings(
        KnowledgeSettings, config["knowledge"], max_sequences=config["scoring"]["max_sequences"]
    )


def sae_params(config: Mapping) -> dict:
    return settings(SaeSettings, config["sae"])


def features_params(config: Mapping) -> dict:
    return settings(
        FeatureSettings, config["sae"], test_sequences=config["knowledge"]["test_sequences"]
    )


def corpus_params(config: Mapping) -> dict:
    """The corpus's settings; the synthetic grammar only when the corpus is the synthetic pool
    (a user's corpus file is an input, hashed by Snakemake's content tracking)."""
    pretrain = config["model"]["pretrain"]
    grammar = {**config["data"]["synthetic"], "classes": config["data"]["classes"]}
    return settings(CorpusSettings, grammar, pretrain, path=pretrain["corpus"])


def pretrain_params(config: Mapping, seed: int | None = None) -> dict:
    """The pretraining settings; `seed` (per-seed pretraining) replaces `model.pretrain.seed`."""
    pretrain = dict(config["model"]["pretrain"])
    if seed is not None:
        pretrain["seed"] = seed
    return settings(
        PretrainSettings,
        config["model"]["tiny"],
        pretrain,
        max_length=config["finetune"]["max_length"],
    )


def plot_params(config: Mapping, colors: Mapping) -> dict:
    return settings(
        PlotSettings,
        config["plots"],
        method_colors={m: colors[m] for m in config["scoring"]["methods"]},
        granularity=config["scoring"]["granularity"],
    )


def browser_params(config: Mapping) -> dict:
    """The browser's settings: `browser.*` but `enabled`, the seeds and the scored methods."""
    return settings(
        BrowserSettings,
        config["browser"],
        seeds=config["seeds"],
        methods=config["scoring"]["methods"],
    )
