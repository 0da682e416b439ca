"""Scoring engines shared by the methods in `kneurons.attribution.methods`: activation
magnitude, integrated gradients (IG), the scoring subset, batching and the scores table.

A neuron is one output unit of a Linear module (`model.units.MODULES`) in one layer. IG follows
Dai et al.: the module's whole output is scaled from 0 to its value; a unit's attribution is
the sum over positions of output x path-averaged gradient of p(true class), averaged over
sequences. The engine runs the layers below the scored one once per batch, puts the path
steps in the batch dimension and takes one `autograd.grad` per chunk; weights never need grad.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kneurons.attribution.quadrature import quadrature
from kneurons.model.esm import EnzymeClassifier, encode, frozen, linear
from kneurons.progress import progress as report_progress

log = logging.getLogger(__name__)
GRANULARITIES = ("unit", "weight")


def scores_frame(scores: dict[tuple[int, str], torch.Tensor]) -> pd.DataFrame:
    """(layer, module, unit, score) rows, in the order of `scores`; per-weight scores (units,
    inputs) give (layer, module, unit, input, score) rows, unit-major."""
    frames = []
    for (layer, module), s in scores.items():
        columns = {"layer": layer, "module": module}
        if s.ndim == 1:
            columns["unit"] = np.arange(len(s))
        else:
            units, inputs = s.shape
            columns["unit"] = np.repeat(np.arange(units), inputs)
            columns["input"] = np.tile(np.arange(inputs), units)
        frames.append(pd.DataFrame({**columns, "score": s.double().flatten().numpy()}))
    return pd.concat(frames, ignore_index=True)


def scoring_subset(
    split: pd.DataFrame, classes: Sequence[int], max_sequences: int, seed: int
) -> tuple[list[str], list[int]]:
    """The validation split, or a seeded subset of `max_sequences` of it (never the test split):
    its sequences and their class indices in the head's order `classes`."""
    val = split.query("split == 'validation'")
    if len(val) > max_sequences:
        val = val.sample(n=max_sequences, random_state=seed)
    index = {c: k for k, c in enumerate(classes)}
    return list(val["sequence"]), [index[c] for c in val["ec_class"]]


def length_sorted_batches(sequences: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `sequences` in batches of similar length (less padding), ties by index."""
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def activation_scores(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    modules: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    granularity: str = "unit",
    per_sequence: bool = False,
) -> dict[tuple[int, str], torch.Tensor]:
    """Mean |output| of each unit over a sequence's tokens (BOS/EOS included, padding not),
    averaged over sequences. One inference pass for all modules of all layers.

    granularity="weight": mean |w_ij x_j| = |w_ij| x mean |x_j| over the same tokens and
    sequences, (units, inputs). per_sequence=True: each sequence's own value instead of the
    mean, (n_sequences, units) in input order (unit granularity only)."""
    _check_per_sequence(per_sequence, granularity)
    per_weight = granularity == "weight"
    rows: dict[tuple[int, str], torch.Tensor] = {}
    model.eval()
    device = next(model.parameters()).device
    layers = range(model.num_layers) if layers is None else layers
    sums: dict[tuple[int, str], torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def make_hook(key):
        def hook(_mod, inp, out):
            # out: (T, B, U), inp[0]: (T, B, I); per-sequence mean over its non-padding tokens
            w = state["token_weight"]
            seen = inp[0] if per_weight else out
            if per_sequence:
                per_row = torch.einsum("tbu,tb->bu", seen.abs().double(), w).cpu()
                _store_rows(rows, key, state["chunk"], per_row, len(sequences))
                return
            total = torch.einsum("tbu,tb->u", seen.abs().double(), w)
            sums[key] = sums.get(key, 0) + total.cpu()

        return hook

    handles = [
        linear(model.esm, layer, module).register_forward_hook(make_hook((layer, module)))
        for layer in layers
        for module in modules
    ]
    try:
        for chunk in report_progress(length_sorted_batches(sequences, batch_size), "activation"):
            tokens = encode([sequences[i] for i in chunk], max_length).to(device)
            not_pad = (tokens != model.esm.padding_idx).double()
            state["token_weight"] = (not_pad / not_pad.sum(1, keepdim=True)).T  # (T, B)
            state["chunk"] = chunk
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    keys = [(layer, m) for layer in layers for m in modules]
    if per_sequence:
        return {key: rows[key] for key in keys}
    if per_weight:
        return {
            key: linear(model.esm, *key).weight.detach().abs().double().cpu()
            * (sums[key] / len(sequences))[None, :]
            for key in keys
        }
    return {key: sums[key] / len(sequences) for key in keys}


def ig_scores(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    labels: Sequence[int],
    layer: int,
    modules: Sequence[str],
    *,
    steps: int = 20,
    rule: str = "riemann_left",
    absolute: bool = False,
    batch_size: int = 16,
    rows_per_pass: int = 256,
    max_length: int | None = None,
    progress: bool = True,
    granularity: str = "unit",
    per_sequence: bool = False,
) -> dict[tuple[int, str], torch.Tensor]:
    """IG attributions of every unit of `modules` in `layer` (see module docstring): (units,).

    granularity="weight": the attribution of each weight w_ij instead, (units, inputs): w_ij
    times the path integral of d p / d w_ij while the module's weight matrix is scaled from 0
    to W (bias unchanged). d p / d W = sum over positions of (output gradient) x (input)^T, so
    it comes from the same scaled passes. `labels` are class indices (the head's output
    positions). `rows_per_pass` bounds memory: sequences x path steps per forward/backward.

    per_sequence=True: each sequence's attribution instead of the mean over sequences,
    (n_sequences, units) in input order, from the same passes (unit granularity only).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; expected unit or weight")
    _check_per_sequence(per_sequence, granularity)
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    alphas, weights = (t.to(device, dtype) for t in quadrature(rule, steps))
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    totals = {(layer, m): 0 for m in modules}
    rows: dict[tuple[int, str], torch.Tensor] = {}
    batches = length_sorted_batches(sequences, max(1, min(batch_size, rows_per_pass)))
    with frozen(model):
        for chunk in report_progress(batches, f"IG layer {layer}", summary=progress):
            tokens = encode([sequences[i] for i in chunk], max_length).to(device)
            target = labels_t[chunk].to(device)
            with torch.no_grad():
                x, padding_mask = model.embed(tokens)
                hidden = _layer_parts(
                    model, model.run_layers(x, padding_mask, 0, layer), padding_mask, layer
                )
            residues = (tokens != model.esm.padding_idx).T.unsqueeze(-1)  # (T, B, 1)
            for module in modules:
                integrated, output, inputs = _integrated_gradients(
                    model,
                    tokens,
                    hidden,
                    padding_mask,
                    target,
                    layer,
                    module,
                    alphas,
                    weights,
                    rows_per_pass,
                    granularity,
                )
                if granularity == "unit":
                    attribution = (output * integrated).masked_fill(~residues, 0).sum(0)  # (B, U)
                else:
                    weight = linear(model.esm, layer, module).weight.detach()  # (U, I)
                    attribution = weight * torch.einsum(
                        "tbu,tbi->bui", integrated.masked_fill(~residues, 0), inputs
                    )  # (B, U, I)
                if absolute:
                    attribution = attribution.abs()
                if per_sequence:
                    per_row = attribution.double().cpu()
                    _store_rows(rows, (layer, module), chunk, per_row, len(sequences))
                    continue
                totals[(layer, module)] = (
                    totals[(layer, module)] + attribution.double().sum(0).cpu()
                )
    if per_sequence:
        return {key: rows[key] for key in totals}
    return {key: total / len(sequences) for key, total in totals.items()}


def _check_per_sequence(per_sequence: bool, granularity: str) -> None:
    if per_sequence and granularity != "unit":
        raise ValueError(
            f"per_sequence=True needs granularity 'unit' (got {granularity!r}): per-sequence "
            "per-weight attributions would be (sequences, units, inputs), too large to keep"
        )


def _store_rows(rows, key, chunk, values: torch.Tensor, n_sequences: int) -> None:
    """Put a batch's per-sequence values (B, U) at their input positions `chunk`."""
    if key not in rows:
        rows[key] = torch.zeros(n_sequences, values.shape[-1], dtype=torch.float64)
    rows[key][torch.as_tensor(chunk)] = values


def _layer_parts(model, x, padding_mask, layer) -> dict[str, torch.Tensor]:
    """Run layer `layer` once (no grad) and keep the inputs of its parts: the path of a module
    only changes what comes after it, so each scaled pass can start there."""
    block = model.esm.layers[layer]
    parts = {"x": x}
    watched = {"out_proj": block.self_attn.out_proj, "x1": block.final_layer_norm}
    watched |= {"fc1": block.fc1, "fc2": block.fc2}
    handles = [
        m.register_forward_pre_hook(lambda _m, inp, name=name: parts.setdefault(name, inp[0]))
        for name, m in watched.items()
    ]
    try:
        block(x, self_attn_padding_mask=padding_mask)
    finally:
        for h in handles:
            h.remove()
    return parts


def _layer_tail(model, parts, padding_mask, layer, module, k) -> torch.Tensor:
    """Layer `layer`'s output for k copies of the batch, recomputing only what `module`
    (scaled by the hook) changes; the same operations, in the same order, as fair-esm's
    TransformerLayer.forward."""
    block = model.esm.layers[layer]
    if module == "out_proj":
        x1 = parts["x"].repeat(1, k, 1) + block.self_attn.out_proj(
            parts["out_proj"].repeat(1, k, 1)
        )
        h = nn.functional.gelu(block.fc1(block.final_layer_norm(x1)))
    elif module == "fc1":
        x1 = parts["x1"].repeat(1, k, 1)
        h = nn.functional.gelu(block.fc1(parts["fc1"].repeat(1, k, 1)))
    elif module == "fc2":
        x1, h = parts["x1"].repeat(1, k, 1), parts["fc2"].repeat(1, k, 1)
    else:  # q, k, v or any other module type: the whole layer again, which is always right
        x, _ = block(parts["x"].repeat(1, k, 1), self_attn_padding_mask=padding_mask)
        return x
    return x1 + block.fc2(h)


def _integrated_gradients(
    model,
    tokens,
    hidden,
    padding_mask,
    target,
    layer,
    module,
    alphas,
    weights,
    rows_per_pass,
    granularity="unit",
):
    """The path-integrated gradient of p(true class) with respect to the module's output
    (T, B, U), the output (T, B, U) and, at weight granularity, the input (T, B, I; else None).
    unit: the output is scaled by alpha; weight: the weight matrix (bias kept)."""
    batch = tokens.shape[0]
    steps_per_pass = max(1, rows_per_pass // batch)
    target_module = linear(model.esm, layer, module)
    captured: dict[str, torch.Tensor] = {}

    def scale_output(mod, inp, out):
        captured["output"] = out.detach()[:, :batch]  # step 0's rows; every step has the same
        if granularity == "unit":
            scaled = out.detach() * captured["alpha"]
        else:  # alpha W x + b: the module's input is not on the path, so every step has it
            captured["input"] = inp[0].detach()[:, :batch]
            bias = 0 if mod.bias is None else mod.bias.detach()
            scaled = (out.detach() - bias) * captured["alpha"] + bias
        scaled.requires_grad_(True)
        captured["scaled"] = scaled
        # fair-esm scales q in place; the clone keeps our leaf intact.
        return scaled.clone()

    handle = target_module.register_forward_hook(scale_output)
    integrated = None
    try:
        for start in range(0, len(alphas), steps_per_pass):
            a, w = alphas[start : start + steps_per_pass], weights[start : start + steps_per_pass]
            k = len(a)
            # rows ordered step-major: row s * batch + b is sequence b at step s
            captured["alpha"] = a.repeat_interleave(batch)[None, :, None]
            mask = None if padding_mask is None else padding_mask.repeat(k, 1)
            with torch.enable_grad():
                out = _layer_tail(model, hidden, mask, layer, module, k)
                out = model.run_layers(out, mask, layer + 1)
                probs = model.classify(out, tokens.repeat(k, 1)).softmax(-1)
                p_true = probs.gather(1, target.repeat(k)[:, None]).sum()
                (grad,) = torch.autograd.grad(p_true, captured["scaled"])
            weighted = (grad.unflatten(1, (k, batch)) * w[None, :, None, None]).sum(1)
            integrated = weighted if integrated is None else integrated + weighted
    finally:
        handle.remove()
    return integrated, captured["output"], captured.get("input")


def ig_scores_reference(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    labels: Sequence[int],
    layer: int,
    modules: Sequence[str],
    *,
    steps: int = 20,
    rule: str = "riemann_left",
    absolute: bool = False,
    max_length: int | None = None,
) -> dict[tuple[int, str], torch.Tensor]:
    """The straightforward computation: one sequence, one path step, the whole model each time.

    Slow; it defines the numbers the engine must reproduce (tests, benchmarks/).
    """
    model.eval()
    alphas, weights = quadrature(rule, steps)
    totals = {}
    for module in modules:
        target_module = linear(model.esm, layer, module)
        total = 0
        for sequence, label in zip(sequences, labels, strict=True):
            tokens = encode([sequence], max_length).to(next(model.parameters()).device)
            integrated = 0
            for alpha, weight in zip(alphas.tolist(), weights.tolist(), strict=True):
                captured = {}

                def scale(_mod, _inp, out, alpha=alpha, captured=captured):
                    captured["output"] = out.detach()
                    captured["scaled"] = (out.detach() * alpha).requires_grad_(True)
                    return captured["scaled"].clone()

                handle = target_module.register_forward_hook(scale)
                try:
                    with torch.enable_grad():
                        p_true = model(tokens).softmax(-1)[0, label]
                        (grad,) = torch.autograd.grad(p_true, captured["scaled"])
                finally:
                    handle.remove()
                integrated = integrated + weight * grad
            attribution = (captured["output"] * integrated).sum(0)[0]  # sum over positions
            total = total + (attribution.abs() if absolute else attribution).double()
        totals[(layer, module)] = total.cpu() / len(sequences)
    return totals
