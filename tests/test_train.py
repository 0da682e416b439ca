import pytest
import torch

from kneurons.data import synthetic, tables
from kneurons.errors import UserError
from kneurons.model.esm import EnzymeClassifier, build_tiny_esm2, save_esm_checkpoint
from kneurons.model.train import (
    _optimiser,
    _train_epoch,
    class_weights,
    finetune,
    freeze_lower_layers,
    resolve_precision,
    token_budget_batches,
)
from kneurons.settings import FinetuneSettings

LENGTHS = [12, 3, 40, 7, 7, 25, 9, 130, 18, 4, 7, 60, 33, 5, 21]


@pytest.mark.parametrize("max_tokens", [20, 64, 100, 500])
def test_token_budget_batches_respect_the_budget_and_cover_every_index_once(max_tokens):
    chunks = token_budget_batches(LENGTHS, max_tokens, torch.Generator().manual_seed(0))
    seen = sorted(i for c in chunks for i in c.tolist())
    assert seen == list(range(len(LENGTHS)))
    for chunk in chunks:
        padded = len(chunk) * max(LENGTHS[i] for i in chunk)
        # only a sequence longer than the budget may exceed it, alone in its batch
        assert padded <= max_tokens or len(chunk) == 1


def test_token_budget_batches_are_length_sorted_greedy_and_seeded():
    # 130 > 100: its own batch; the rest fill up to 100 padded tokens, shortest first
    unshuffled = [c.tolist() for c in token_budget_batches(LENGTHS, 100)]
    # lengths 3..12: 8 x 12 = 96; 18, 21, 25: 75; 33, 40: 80; 60 alone (3 x 60 > 100); 130
    assert unshuffled == [[1, 9, 13, 3, 4, 10, 6, 0], [8, 14, 5], [12, 2], [11], [7]]

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [[c.tolist() for c in token_budget_batches(LENGTHS, 100, g)] for _ in range(3)]

    assert run(0) == run(0)
    epochs = run(0)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # the order changes per epoch
    assert run(0) != run(1)
    # the same multiset of batch sizes every epoch: the scheduler's steps per epoch hold
    for epoch in epochs:
        assert sorted(map(len, epoch)) == sorted(map(len, unshuffled))


def test_balanced_class_weights_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    # n / (n_classes x n_c): 6 / (4 x 3), 6 / (4 x 1), 6 / (4 x 2); class 3 absent: 0
    assert class_weights(labels, 4, "balanced").tolist() == [0.5, 1.5, 0.75, 0.0]
    assert class_weights(labels, 4, "none") is None
    with pytest.raises(UserError, match="class_weights"):
        class_weights(labels, 4, "inverse")


def test_precision_auto_is_fp32_on_cpu_and_bf16_only_when_asked():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="precision"):
        resolve_precision("fp16", cpu)


SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYGG", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MAGHWWCLLK"]


def one_step(model, precision="fp32", weight=None):
    optimizer, scheduler = _optimiser(model, 1e-2, 1e-2, 0.01, steps_per_epoch=1, epochs=1)
    labels = torch.tensor([0, 3, 5, 1])
    return _train_epoch(
        model,
        optimizer,
        scheduler,
        [torch.arange(4)],
        SEQS,
        labels,
        100,
        torch.device("cpu"),
        1,
        weight,
        precision,
    )


def test_train_layers_freezes_embeddings_and_lower_layers():
    model = EnzymeClassifier(build_tiny_esm2(4, 32, 4, seed=0), 6)
    n = freeze_lower_layers(model, 1)
    top = dict(model.esm.layers[3].named_parameters())
    expected = sum(p.numel() for p in top.values())
    expected += sum(p.numel() for p in model.esm.emb_layer_norm_after.parameters())
    expected += sum(p.numel() for p in model.head.parameters())
    assert n == expected
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_step(model)
    after = model.state_dict()
    trained = ("esm.layers.3.", "esm.emb_layer_norm_after.", "head.")
    for key, value in before.items():
        if key.startswith(trained):
            continue
        assert torch.equal(after[key], value), key  # bit-identical
    for key in ("esm.layers.3.fc1.weight", "esm.layers.3.self_attn.q_proj.weight", "head.weight"):
        assert not torch.equal(after[key], before[key]), key
    with pytest.raises(UserError, match="train_layers"):
        freeze_lower_layers(model, 5)


def test_all_layers_by_default():
    model = EnzymeClassifier(build_tiny_esm2(2, 16, 2, seed=0), 6)
    assert freeze_lower_layers(model, None) == sum(p.numel() for p in model.parameters())
    assert freeze_lower_layers(model, 0) == sum(p.numel() for p in model.parameters())


def test_bf16_step_on_cpu_and_weighted_loss():
    torch.manual_seed(0)
    model = EnzymeClassifier(build_tiny_esm2(2, 16, 2, seed=0), 6)
    loss, _ = one_step(model, "bf16")
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    # class weights change the loss; uniform weights do not
    losses = [
        one_step(EnzymeClassifier(build_tiny_esm2(2, 16, 2, seed=0), 6), weight=w)[0]
        for w in (None, torch.ones(6), torch.tensor([5.0, 1, 1, 1, 1, 1]))
    ]
    assert losses[0] == pytest.approx(losses[1]) and losses[2] != pytest.approx(losses[0])


def test_finetune_with_every_option(tmp_path):
    table = synthetic.generate_synthetic(n_per_class=6, min_length=50, max_length=90, seed=0)
    split = tables.stratified_split(table, seed=0)
    save_esm_checkpoint(build_tiny_esm2(2, 16, 2, seed=0), tmp_path / "esm2_tiny.pt")
    _, classes, metrics = finetune(
        str(tmp_path / "esm2_tiny.pt"),
        split,
        FinetuneSettings(
            epochs=1,
            lr=1e-3,
            head_lr=1e-3,
            weight_decay=0.01,
            batch_size=4,
            max_length=80,
            device="cpu",
            class_weights="balanced",
            max_tokens=250,
            precision="bf16",
            train_layers=1,
        ),
        seed=0,
        device=torch.device("cpu"),
    )
    training = metrics["training"]
    assert training["precision"] == "bf16" and training["train_layers"] == 1
    assert training["max_tokens"] == 250 and len(training["class_weights"]) == len(classes)
    assert 0 <= metrics["test"]["balanced_accuracy"] <= 1
    assert "val_balanced_accuracy" in metrics["history"][0]
