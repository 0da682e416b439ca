"""`analysis.stats.effective_masks` against the model itself: a kept unit (weight) it calls
effective changes the classifier's logits when it is pruned as well; one it does not call effective
leaves them unchanged."""

import numpy as np
import pytest
import torch

from kneurons.analysis.stats import effective_masks
from kneurons.model.esm import ablated, encode

LAYERS, EMBED, HEADS, FFN = 3, 32, 4, 128  # conftest's tiny_classifier
HEAD_DIM = EMBED // HEADS
SIZES = {"q_proj": (EMBED, EMBED), "k_proj": (EMBED, EMBED), "v_proj": (EMBED, EMBED)}
SIZES |= {"out_proj": (EMBED, EMBED), "fc1": (FFN, EMBED), "fc2": (EMBED, FFN)}


def logits(model, sequences, keep):
    masks = {key: torch.from_numpy(mask) for key, mask in keep.items()}
    with torch.no_grad(), ablated(model, masks):
        return model(encode(sequences))


def unit_masks():
    rng = np.random.default_rng(0)
    keep = {
        (layer, module): rng.random(SIZES[module][0]) < 0.6
        for layer in range(LAYERS)
        for module in SIZES
    }
    keep[(0, "out_proj")][:] = False  # no q/k/v unit of layer 0 can matter
    keep[(1, "v_proj")][:HEAD_DIM] = False  # head 0 of layer 1 mixes nothing
    q, k = keep[(1, "q_proj")], keep[(1, "k_proj")]
    half = HEAD_DIM // 2
    q[[8 + 1, 8 + 3]] = True  # head 1, dimensions 1 and 3
    k[[8 + 1, 8 + 3, 8 + 3 + half]] = False  # 3 and its rotary partner: q 3 has no k
    k[8 + 1 + half] = True  # 1 only has its partner, which the rotary embedding mixes in
    keep[(2, "fc2")][:] = False  # no fc1 unit of layer 2 can matter
    return keep


def weight_masks():
    rng = np.random.default_rng(1)
    keep = {
        (layer, module): rng.random(SIZES[module]) < 0.6
        for layer in range(LAYERS)
        for module in SIZES
    }
    keep[(0, "out_proj")][:, HEAD_DIM : 2 * HEAD_DIM] = False  # head 1's output is not read
    keep[(1, "v_proj")][2 * HEAD_DIM : 3 * HEAD_DIM] = False  # head 2's v is its bias only
    keep[(1, "k_proj")][[3, 3 + HEAD_DIM // 2]] = False  # k 3 and partner: only their biases
    keep[(2, "fc2")][:, : FFN // 2] = False  # half of fc1's units are not read
    return keep


def change_when_pruned(model, sequences, keep, key, index):
    reference = logits(model, sequences, keep)
    pruned = {**keep, key: keep[key].copy()}
    pruned[key][index] = False
    return (logits(model, sequences, pruned) - reference).abs().max().item()


@pytest.mark.parametrize("masks", [unit_masks, weight_masks])
def test_effective_units_are_the_ones_that_change_the_output(tiny_classifier, sequences, masks):
    keep = masks()
    effective = effective_masks(keep, LAYERS, EMBED, HEADS, FFN)
    assert effective.keys() == keep.keys()
    for key, mask in keep.items():
        assert effective[key].shape == mask.shape
        assert not (effective[key] & ~mask).any()
        if key[1] in ("out_proj", "fc2"):
            assert (effective[key] == mask).all()
            continue
        kept_units = np.flatnonzero(mask.any(axis=1) if mask.ndim == 2 else mask)
        for unit in kept_units:
            # per weight: the unit's first kept weight stands for all (same verdict by design)
            index = unit if mask.ndim == 1 else (unit, np.flatnonzero(mask[unit])[0])
            change = change_when_pruned(tiny_classifier, sequences, keep, key, index)
            if effective[key][index]:
                assert change > 1e-9, (key, index)
            else:
                assert change < 1e-13, (key, index)
    # the constructed cases decided what they were built to decide
    if masks is unit_masks:
        assert not any(effective[(0, m)].any() for m in ("q_proj", "k_proj", "v_proj"))
        assert not effective[(1, "q_proj")][:HEAD_DIM].any()
        assert not effective[(1, "q_proj")][8 + 3] and effective[(1, "q_proj")][8 + 1]
        assert not effective[(2, "fc1")].any()
    else:
        assert not effective[(0, "v_proj")][HEAD_DIM : 2 * HEAD_DIM].any()
        assert not effective[(0, "q_proj")][HEAD_DIM : 2 * HEAD_DIM].any()
        assert not effective[(1, "k_proj")][2 * HEAD_DIM : 3 * HEAD_DIM].any()
        assert effective[(1, "q_proj")][3].any()  # k 3's bias still meets q 3
        assert not effective[(2, "fc1")][: FFN // 2].any()
