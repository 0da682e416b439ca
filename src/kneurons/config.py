"""Canonical settings: equal settings compare equal however the user wrote them.

Snakemake decides "Params have changed" by comparing the set of `repr()`s of a rule's param
values, without their names. Two consequences this module removes:
- a mapping's repr depends on key order, so a reordered config file (or a default the schema
  filled in at the end) looks like a change;
- values without names: swapping the values of two params (lr 1e-3 / head_lr 3e-3 -> lr 3e-3 /
  head_lr 1e-3) looks like no change.
Rules therefore pass one param, `settings`: a mapping of every setting they use by name, with
keys sorted recursively, and numbers typed by the schema (`30` and `30.0` are one timeout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from kneurons.errors import UserError


def canonical(value):
    """`value` with every mapping's keys sorted (recursively) and tuples made lists."""
    if isinstance(value, Mapping):
        return {str(key): canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def _types(schema: Mapping) -> set[str]:
    kind = schema.get("type", ())
    return {kind} if isinstance(kind, str) else set(kind)


def conform(value, schema: Mapping):
    """`value` with numbers typed as the JSON schema says: `number` -> float, an integral
    `integer` -> int (JSON Schema accepts 10.0 as an integer; Python's range() does not); a
    string that reads as a number where the schema wants one becomes that number.

    Walks `properties`, `additionalProperties` (a schema) and `items`; other values pass as is.
    """
    types = _types(schema)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and types & {"integer", "number"}:
        # `--config seeds=[0]` hands Snakemake's list items over as strings
        try:
            value = float(value)
        except ValueError:
            return value  # not a number: the schema check names the key

    if isinstance(value, int | float):
        if "integer" in types and float(value).is_integer():
            return int(value)
        if "number" in types:
            return float(value)
        return value
    if isinstance(value, Mapping):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, Mapping) else {})
            out[key] = conform(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [conform(item, schema["items"]) for item in value]
    return value


class ConfigError(UserError):
    """A config value the schema or a cross-key check rejects; one line naming the key."""


def check_schema(config: Mapping, schema: Mapping) -> None:
    """Raise ConfigError naming the key of the most relevant schema violation, if any."""
    import jsonschema  # comes with snakemake; only the workflow needs this

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"config key '{key}': {' '.join(error.message.split())}")


def config_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"config key '{key}': {problem}")


def model_kind(name: str) -> str:
    """What `model.name` names: tiny, a fair-esm release, a .pt checkpoint or (anything else)
    a Hugging Face ESM-2 directory."""
    from kneurons.model.release import RELEASE_NAME_PATTERN

    if name == "tiny":
        return "tiny"
    if name.endswith(".pt"):
        return "checkpoint"
    if re.fullmatch(RELEASE_NAME_PATTERN, name):
        return "release"
    return "hf"


def check_config(config: Mapping, methods: Mapping) -> None:
    """The checks across keys that a schema cannot express; ConfigError naming the key.
    `methods`: the scoring-method registry (name -> ScoringMethod)."""
    fractions = config["split"]
    total = fractions["train"] + fractions["validation"] + fractions["test"]
    if abs(total - 1) > 1e-6:
        raise config_error("split", f"train + validation + test must be 1, got {total:g}")
    data = config["data"]
    if data["min_length"] > data["max_length"]:
        raise config_error("data.min_length", "is larger than data.max_length")
    synthetic = data["synthetic"]
    if synthetic["min_length"] > synthetic["max_length"]:
        raise config_error("data.synthetic.min_length", "is larger than data.synthetic.max_length")
    if data["source"] == "table":
        path = data["table"]["path"]
        if not path:
            raise config_error("data.table.path", "is empty but data.source is 'table'")
        if not Path(path).is_file():
            raise config_error("data.table.path", f"{path} does not exist")
    tiny = config["model"]["tiny"]
    if tiny["embed_dim"] % tiny["attention_heads"]:
        raise config_error(
            "model.tiny.embed_dim", "must be divisible by model.tiny.attention_heads"
        )
    _check_model(config["model"])
    knowledge = config["knowledge"]
    method = methods.get(knowledge["method"])
    if knowledge["enabled"] and method is not None and not method.per_sequence:
        raise config_error(
            "knowledge.method",
            f"{method.name} gives no per-sequence attributions; use one of "
            + ", ".join(m.name for m in methods.values() if m.per_sequence),
        )


def _check_model(model: Mapping) -> None:
    name = model["name"]
    kind = model_kind(name)
    if kind == "checkpoint":
        if not Path(name).is_file():
            raise config_error("model.name", f"{name} does not exist")
        if not Path(name).name.startswith("esm2"):
            raise config_error(
                "model.name", f"{name}: an ESM-2 checkpoint file name starts with 'esm2'"
            )
        if "num_layers" not in model:
            raise config_error(
                "model.num_layers", "is required when model.name is a checkpoint path"
            )
    elif kind == "hf":
        from kneurons.model.hf_checkpoint import HFCheckpointError, read_hf_config, weight_files

        if not Path(name).is_dir():
            raise config_error(
                "model.name",
                f"{name} is not tiny, a fair-esm ESM-2 release name (esm2_t6_8M_UR50D, ...), "
                "a .pt checkpoint or a Hugging Face ESM-2 directory",
            )
        if not Path(name, "config.json").is_file():
            raise config_error(
                "model.name",
                f"{name} has no config.json (a Hugging Face ESM-2 directory holds "
                "config.json and model.safetensors or pytorch_model.bin)",
            )
        try:
            read_hf_config(name)
            weight_files(name)
        except HFCheckpointError as err:
            raise config_error("model.name", str(err)) from None


def knowledge_enabled(config: Mapping, methods: Mapping) -> bool:
    """The knowledge analysis runs when asked, its method is scored, per unit."""
    knowledge = config["knowledge"]
    return (
        knowledge["enabled"]
        and knowledge["method"] in config["scoring"]["methods"]
        and methods[knowledge["method"]].per_sequence
        and config["scoring"]["granularity"] == "unit"
    )
