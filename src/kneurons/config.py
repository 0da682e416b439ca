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

from collections.abc import Mapping, Sequence
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
    string that reads as a number where the schema wants one becomes that number, and "true" or
    "false" (any case) where it wants a boolean becomes that boolean.

    Walks `properties`, `additionalProperties` (a schema) and `items`; other values pass as is.
    """
    types = _types(schema)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and "boolean" in types and value.lower() in ("true", "false"):
        # `--config "model={'pretrain': {'enabled': True}}"` hands nested values over as strings
        return value.lower() == "true"
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


def check_config(config: Mapping, methods: Mapping) -> None:
    """The checks across keys that a schema cannot express; ConfigError naming the key.
    `methods`: the scoring-method registry (name -> ScoringMethod). `model.name` is checked by
    `kneurons.model.release.check_model_config`."""
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
    pretrain = config["model"]["pretrain"]
    enabled = pretrain_enabled(config)
    if enabled and not pretrain["corpus"] and data["source"] != "synthetic":
        raise config_error(
            "model.pretrain.corpus",
            "is empty: the synthetic pool serves only data.source synthetic; give a FASTA or "
            "table of unlabeled sequences",
        )
    if enabled and pretrain["corpus"] and not Path(pretrain["corpus"]).is_file():
        raise config_error("model.pretrain.corpus", f"{pretrain['corpus']} does not exist")
    knowledge = config["knowledge"]
    method = methods.get(knowledge["method"])
    if knowledge["enabled"] and method is not None and not method.per_sequence:
        raise config_error(
            "knowledge.method",
            f"{method.name} gives no per-sequence attributions; use one of "
            + ", ".join(m.name for m in methods.values() if m.per_sequence),
        )


def knowledge_enabled(config: Mapping, methods: Mapping) -> bool:
    """The knowledge analysis runs when asked, its method is scored, per unit."""
    knowledge = config["knowledge"]
    return (
        knowledge["enabled"]
        and knowledge["method"] in config["scoring"]["methods"]
        and methods[knowledge["method"]].per_sequence
        and config["scoring"]["granularity"] == "unit"
    )


def checked_config(
    config: Mapping, schema_path, methods: Mapping, modules: Sequence[str], validate
) -> dict:
    """The workflow's config: numbers typed, checked against the schema (whose method and
    module names come from the registry and the module table), its defaults filled in by
    `validate` (Snakemake's), in canonical form, then the checks across keys. ConfigError
    (one line naming the key) for a bad value."""
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    scoring = schema["properties"]["scoring"]["properties"]
    scoring["methods"]["items"] = {"enum": list(methods)}
    scoring["modules"].update(items={"enum": list(modules)}, default=list(modules))
    schema["properties"]["knowledge"]["properties"]["method"]["enum"] = list(methods)
    # numbers given as strings on the command line (--config seeds=[0]) become numbers first
    config = conform(config, schema)
    check_schema(config, schema)
    validate(config, str(schema_path), set_default=True)
    config = canonical(conform(config, schema))
    pretrain = config["model"]["pretrain"]
    pretrain["enabled"] = pretrain_enabled(config)
    check_config(config, methods)
    return config


def pretrain_enabled(config: Mapping) -> bool:
    """`model.pretrain.enabled` resolved: `auto` pretrains only the tiny ESM-2 (a release or
    Hugging Face ESM-2 already is a masked LM), and only where a corpus fits the data: the
    user's `model.pretrain.corpus`, or the synthetic pool for `data.source: synthetic`."""
    pretrain = config["model"]["pretrain"]
    if pretrain["enabled"] != "auto":
        return pretrain["enabled"]
    corpus = pretrain["corpus"] or config["data"]["source"] == "synthetic"
    return config["model"]["name"] == "tiny" and bool(corpus)
