"""Scoring methods: one module each, found by name.

A method module defines `METHOD = ScoringMethod(...)` (see `base`). Every module in this
package that does is registered, in the order of `ORDER` and then alphabetically, so adding a
method is one new file here (plus its tests and a config entry); the config schema's method
names, the workflow's wildcard constraint, the report's ordering and the plots' colours all
come from this registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod

__all__ = ["REGISTRY", "ScoringInputs", "ScoringMethod", "get"]

# The methods the paper compared first; the rest follow alphabetically.
ORDER = ("ig", "activation")


def _discover() -> dict[str, ScoringMethod]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if isinstance(method, ScoringMethod):
            if method.name in found:
                raise RuntimeError(f"two scoring methods are named {method.name!r}")
            found[method.name] = method
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return {name: found[name] for name in names}


REGISTRY: dict[str, ScoringMethod] = _discover()


def get(name: str) -> ScoringMethod:
    """The registered method `name`; KeyError naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown scoring method {name!r}; known: {', '.join(REGISTRY)}") from None
