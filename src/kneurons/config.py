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

from collections.abc import Mapping

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
