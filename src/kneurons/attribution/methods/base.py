"""The scoring-method interface: what a method declares and what its function receives."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# torch only for type checking: the workflow reads the registry when it parses the Snakefile
# (every dry run, every cluster job), which should not pay for importing torch.
if TYPE_CHECKING:
    import torch

    Scores = dict[tuple[int, str], torch.Tensor]  # (layer, module) -> one score per unit


@dataclass(frozen=True)
class ScoringInputs:
    """What a method scores: the fine-tuned model's `layers` x `modules` units.

    `sequences`/`labels` (class indices of the head) are the scoring subset of the validation
    split; empty for methods that need no model pass. `settings` holds the `scoring.*` config
    keys the method declared; `seed` the run's seed.
    """

    sequences: Sequence[str]
    labels: Sequence[int]
    layers: Sequence[int]
    modules: Sequence[str]
    seed: int
    max_length: int | None
    settings: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class ScoringMethod:
    """A way to score every unit of the scored modules.

    name: the config and file name. score(model, inputs) -> {(layer, module): (units,) tensor}
    for every layer in `inputs.layers` and module in `inputs.modules`; higher = more important.
    settings: the `scoring.*` keys it reads (a change of one reruns only this method).
    needs_model_pass: False if it never runs the model on sequences (no scoring subset).
    per_layer: True if it is costly per layer (IG): with `scoring.jobs_per_layer` the workflow
    runs one job per layer so a cluster spreads them; otherwise one job scores all layers.
    per_sequence: True if, when `inputs.settings["per_sequence"]` is true, score() returns each
    scoring sequence's own value, (n_sequences, units), from the same passes (the per-class
    knowledge neurons need them).
    color: its colour in the plots.
    """

    name: str
    score: Callable[..., Scores]
    settings: tuple[str, ...] = ()
    needs_model_pass: bool = True
    per_layer: bool = False
    per_sequence: bool = False
    color: str | None = None
