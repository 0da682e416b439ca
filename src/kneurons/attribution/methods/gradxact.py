"""Gradient x activation: each unit's output times the gradient of p(true class) with respect
to it, summed over positions and averaged over sequences, with every other unit at its full
value. One forward and one backward pass per batch score every unit of every scored module in
all layers: the cheapest first-order attribution. It equals integrated gradients with a single
right-Riemann step (alpha = 1) per module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod

if TYPE_CHECKING:
    from kneurons.attribution.methods.base import Scores
    from kneurons.model.esm import EnzymeClassifier


def gradxact_scores(
    model: EnzymeClassifier,
    sequences: list[str],
    labels: list[int],
    layers,
    modules,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    granularity: str = "unit",
) -> Scores:
    """{(layer, module): (units,)} mean over sequences of sum over tokens (BOS/EOS included,
    padding excluded) of output x d p(true class) / d output. granularity="weight": (units,
    inputs), w_ij x d p / d w_ij = w_ij x sum over tokens of (d p / d output_i) x input_j."""
    import torch  # lazy: see methods.base

    from kneurons.attribution.engine import length_sorted_batches
    from kneurons.model.esm import encode, frozen, linear
    from kneurons.progress import progress

    per_weight = granularity == "weight"
    model.eval()
    device = next(model.parameters()).device
    keys = [(layer, module) for layer in layers for module in modules]
    shapes = {key: linear(model.esm, *key).weight.shape for key in keys}
    totals = {key: torch.zeros(shapes[key] if per_weight else shapes[key][:1], dtype=torch.float64)
              for key in keys}  # fmt: skip
    inputs: dict = {}
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    outputs: dict = {}
    probes: dict = {}

    def probe(key):
        def hook(_mod, inp, out):
            # out + a zero that requires grad: d p / d probe is the total derivative d p / d out,
            # and the graph still runs through every later unit.
            outputs[key] = out.detach()
            inputs[key] = inp[0].detach() if per_weight else None
            probes[key] = torch.zeros_like(out, requires_grad=True)
            return out + probes[key]

        return hook

    handles = [linear(model.esm, *key).register_forward_hook(probe(key)) for key in keys]
    try:
        with frozen(model):
            for chunk in progress(length_sorted_batches(sequences, batch_size), "gradxact"):
                tokens = encode([sequences[i] for i in chunk], max_length).to(device)
                with torch.enable_grad():
                    probs = model(tokens).softmax(-1)
                    p_true = probs.gather(1, labels_t[chunk].to(device)[:, None]).sum()
                    grads = torch.autograd.grad(p_true, [probes[key] for key in keys])
                residues = (tokens != model.esm.padding_idx).T.unsqueeze(-1)  # (T, B, 1)
                for key, grad in zip(keys, grads, strict=True):
                    if per_weight:
                        grad = grad.masked_fill(~residues, 0)
                        weight = linear(model.esm, *key).weight.detach()
                        gx = torch.einsum("tbu,tbi->ui", grad, inputs[key])
                        totals[key] += (weight * gx).double().cpu()
                    else:
                        attribution = (outputs[key] * grad).masked_fill(~residues, 0)
                        totals[key] += attribution.sum((0, 1)).double().cpu()
    finally:
        for handle in handles:
            handle.remove()
    return {key: total / len(sequences) for key, total in totals.items()}


def score(model, inputs: ScoringInputs) -> Scores:
    """Gradient x activation of every unit of `inputs.modules` in `inputs.layers`."""
    return gradxact_scores(
        model,
        list(inputs.sequences),
        list(inputs.labels),
        inputs.layers,
        inputs.modules,
        batch_size=inputs.settings["batch_size"],
        max_length=inputs.max_length,
        granularity=inputs.settings.get("granularity", "unit"),
    )


METHOD = ScoringMethod(name="gradxact", score=score, settings=("batch_size",), color="#2ca02c")
