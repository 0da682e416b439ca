"""The real model paths through Snakemake: a fair-esm release name fetched from a (fake) mirror,
and a user's checkpoint file, both written in fair-esm's format."""

import pandas as pd
import pytest
from workflow_helpers import make_workdir, snakemake

from kneurons.model.esm import build_tiny_esm2, load_esm_checkpoint, save_esm_checkpoint

from fake_uniprot import FakeServer

NAME = "esm2_t6_8M_UR50D"

pytestmark = pytest.mark.slow  # every test runs snakemake


def workdir(tmp_path, config):
    (tmp_path / "run").mkdir()
    return make_workdir(tmp_path / "run", config)


def release_files(tmp_path, name, layers):
    """A stand-in for a fair-esm release: the real file layout, a small model inside."""
    path = tmp_path / f"{name}.pt"
    save_esm_checkpoint(build_tiny_esm2(layers, 16, 2, seed=5), path)
    return {
        f"models/{name}.pt": path.read_bytes(),
        f"regression/{name}-contact-regression.pt": (
            tmp_path / f"{name}-contact-regression.pt"
        ).read_bytes(),
    }


def test_release_name_is_fetched_once_from_the_configured_url(tmp_path):
    files = release_files(tmp_path, NAME, layers=6)  # the name says 6 layers
    with FakeServer(files=files) as server:
        work = workdir(tmp_path, {"model": {"name": NAME, "url": server.url + "/files"}})
        targets = ["results/finetune/seed0/metrics.json", "results/scores/seed0/ig/layer5.tsv"]
        snakemake(work, *targets)
        fetched = server.count()
        snakemake(work, *targets)  # nothing to do: no second download
        assert server.count() == fetched == 2
    checkpoint = work / "resources/models" / f"{NAME}.pt"
    assert load_esm_checkpoint(checkpoint).num_layers == 6
    scores = pd.read_csv(work / "results/scores/seed0/ig/layer5.tsv", sep="\t")
    assert set(scores["layer"]) == {5} and len(scores) == 4 * 16 + 64 + 16


def test_unreachable_release_fails_with_the_url_and_leaves_nothing(tmp_path):
    with FakeServer() as server:  # serves no model files: 404
        work = workdir(tmp_path, {"model": {"name": NAME, "url": server.url + "/files"}})
        result = snakemake(work, f"resources/models/{NAME}.pt", check=False)
    assert result.returncode != 0
    assert f"/files/models/{NAME}.pt" in result.stdout + result.stderr
    assert not list(work.glob("resources/models/*"))


def test_checkpoint_path_is_used_as_it_is(tmp_path):
    own = tmp_path / "mine" / "esm2_custom.pt"
    own.parent.mkdir()
    save_esm_checkpoint(build_tiny_esm2(3, 16, 2, seed=9), own)
    work = workdir(tmp_path, {"model": {"name": str(own), "num_layers": 3}})
    result = snakemake(work, "results/scores/seed0/ig.tsv")
    assert "prepare_model" not in result.stdout + result.stderr
    scores = pd.read_csv(work / "results/scores/seed0/ig.tsv", sep="\t")
    assert sorted(scores["layer"].unique()) == [0, 1, 2]


def test_hugging_face_directory_is_converted_once(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.EsmConfig(  # the facebook/esm2_t* settings at a small size
        vocab_size=33,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        pad_token_id=1,
        mask_token_id=32,
        layer_norm_eps=1e-5,
    )
    hf_dir = tmp_path / "hub" / "esm2_small_hf"
    transformers.EsmForMaskedLM(config).save_pretrained(hf_dir)
    work = workdir(tmp_path, {"model": {"name": str(hf_dir)}})
    checkpoint = work / "resources/models/esm2_small_hf.pt"
    snakemake(work, str(checkpoint.relative_to(work)))
    assert load_esm_checkpoint(checkpoint).num_layers == 3
    plan = snakemake(work, "--dry-run", "results/scores/seed0/ig.tsv")
    plan = plan.stdout + plan.stderr
    assert "convert_hf_model" not in plan  # done; its output is up to date
    assert "prepare_model" not in plan and "fetch_pretrained_model" not in plan
    assert "layer2.tsv" in plan and "layer3.tsv" not in plan  # num_hidden_layers


def test_checkpoint_cut_short_is_one_line_naming_it(tmp_path):
    """A user's checkpoint that is cut short: one `error in finetune` line, no traceback."""
    path = tmp_path / "esm2_mine.pt"
    save_esm_checkpoint(build_tiny_esm2(2, 16, 2, seed=0), path)
    path.write_bytes(path.read_bytes()[:-5000])
    work = workdir(tmp_path, {"model": {"name": str(path), "num_layers": 2}})
    result = snakemake(work, "results/finetune/seed0/metrics.json", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error in")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error in finetune: {path}: not a readable fair-esm checkpoint")
    log = (work / "results/logs/finetune/seed0.log").read_text()
    assert log.count("\n") == 1 and "Traceback" not in log
    assert not (work / "results/finetune/seed0/model.pt").exists()
