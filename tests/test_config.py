"""Canonical settings: numbers typed by the schema, however they were written."""

import copy
from pathlib import Path

import pytest
import yaml

from kneurons.attribution.methods import REGISTRY
from kneurons.config import (
    ConfigError,
    canonical,
    check_config,
    conform,
    knowledge_enabled,
    pretrain_enabled,
)
from kneurons.model.release import check_model_config, model_kind, num_layers

SCHEMA = {
    "type": "object",
    "properties": {
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "lr": {"type": "number"},
        "device": {"type": "string"},
        "epochs": {"type": "integer"},
        "enabled": {"type": "boolean"},
    },
}


def test_numbers_are_typed_by_the_schema():
    config = {"seeds": [0, 3.0], "lr": 1, "device": "cpu", "epochs": 10.0}
    assert conform(config, SCHEMA) == {"seeds": [0, 3], "lr": 1.0, "device": "cpu", "epochs": 10}
    assert type(conform(config, SCHEMA)["lr"]) is float


def test_numbers_written_as_strings_become_numbers():
    """`snakemake --config seeds=[0,3]` hands the list items over as strings."""
    config = {"seeds": ["0", "3"], "lr": "1e-3", "device": "0", "epochs": "x"}
    out = conform(config, SCHEMA)
    assert out["seeds"] == [0, 3] and out["lr"] == 0.001
    assert out["device"] == "0"  # a string where the schema wants one stays a string
    assert out["epochs"] == "x"  # not a number: left for the schema check to name


def test_booleans_written_as_strings_become_booleans():
    """`--config "model={'pretrain': {'enabled': True}}"` hands nested values over as strings."""
    assert conform({"enabled": "True"}, SCHEMA) == {"enabled": True}
    assert conform({"enabled": "false"}, SCHEMA) == {"enabled": False}
    assert conform({"enabled": "yes"}, SCHEMA) == {"enabled": "yes"}  # for the schema to name
    assert conform({"device": "true"}, SCHEMA) == {"device": "true"}  # a string stays a string


def test_canonical_sorts_keys_recursively():
    assert list(canonical({"b": {"d": 1, "c": 2}, "a": (1, 2)})) == ["a", "b"]
    assert canonical({"b": {"d": 1, "c": 2}, "a": (1, 2)}) == {"a": [1, 2], "b": {"c": 2, "d": 1}}


# --- the checks across keys ------------------------------------------------------------------

DEFAULT = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())


def changed(**sections) -> dict:
    config = copy.deepcopy(DEFAULT)
    for section, values in sections.items():
        config[section].update(values)
    return config


def test_the_default_config_passes():
    check_config(DEFAULT, REGISTRY)
    check_model_config(DEFAULT["model"])
    assert knowledge_enabled(DEFAULT, REGISTRY)


def with_model(name: str, source: str = "synthetic", corpus: str = "", enabled="auto") -> dict:
    model = {**DEFAULT["model"], "name": name}
    model["pretrain"] = {**DEFAULT["model"]["pretrain"], "corpus": corpus, "enabled": enabled}
    return changed(model=model, data={"source": source})


@pytest.mark.parametrize(
    "config, expected",
    [
        (with_model("tiny"), True),  # the default: the synthetic pool
        (with_model("tiny", source="uniprot"), False),  # no corpus fits real enzymes
        (with_model("tiny", source="uniprot", corpus="seqs.fasta"), True),
        # a release ESM-2 already is a masked LM: never pretrained on the synthetic pool unasked
        (with_model("esm2_t6_8M_UR50D"), False),
        (with_model("esm2_t6_8M_UR50D", corpus="seqs.fasta"), False),
        (with_model("esm2_t6_8M_UR50D", corpus="seqs.fasta", enabled=True), True),
        (with_model("tiny", enabled=False), False),
    ],
)
def test_pretraining_auto_pretrains_only_the_tiny_model_on_a_fitting_corpus(config, expected):
    assert pretrain_enabled(config) is expected


def test_the_workflow_config_resolves_auto(tmp_path):
    """The rules see a boolean: `auto` and the value it stands for are one setting."""
    from snakemake.utils import validate

    from kneurons.config import checked_config
    from kneurons.model.units import MODULES

    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    auto = checked_config(copy.deepcopy(DEFAULT), schema, REGISTRY, MODULES, validate)
    explicit = copy.deepcopy(DEFAULT)
    explicit["model"]["pretrain"]["enabled"] = True
    assert auto == checked_config(explicit, schema, REGISTRY, MODULES, validate)
    assert auto["model"]["pretrain"]["enabled"] is True
    bad = copy.deepcopy(DEFAULT)
    bad["model"]["pretrain"]["enabled"] = "sometimes"
    with pytest.raises(ConfigError, match="model.pretrain.enabled"):
        checked_config(bad, schema, REGISTRY, MODULES, validate)


@pytest.mark.parametrize(
    "config, message",
    [
        (changed(split={"train": 0.8}), "config key 'split': train + validation + test must be 1"),
        (changed(data={"min_length": 2000}), "config key 'data.min_length': is larger than"),
        (
            changed(data={"synthetic": {**DEFAULT["data"]["synthetic"], "min_length": 100}}),
            "config key 'data.synthetic.min_length': is larger than",
        ),
        (
            changed(data={"source": "table"}),
            "config key 'data.table.path': is empty but data.source is 'table'",
        ),
        (
            changed(model={"tiny": {"num_layers": 2, "embed_dim": 30, "attention_heads": 4}}),
            "config key 'model.tiny.embed_dim': must be divisible by",
        ),
        (
            changed(knowledge={"method": "activation"}),
            "config key 'knowledge.method': activation gives no per-sequence attributions; "
            "use one of ig",
        ),
    ],
)
def test_a_bad_combination_names_its_key(config, message):
    with pytest.raises(ConfigError) as err:
        check_config(config, REGISTRY)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_missing_table_names_its_path(tmp_path):
    config = changed(data={"source": "table", "table": {"path": str(tmp_path / "no.tsv")}})
    with pytest.raises(ConfigError, match=r"^config key 'data.table.path': .*no.tsv does not"):
        check_config(config, REGISTRY)


def test_model_names(tmp_path):
    assert model_kind("tiny") == "tiny"
    assert model_kind("esm2_t33_650M_UR50D") == "release"
    assert model_kind("esm2_t33_651M_UR50D") == "hf"  # not a release: a directory, if any
    assert model_kind("x/esm2_mine.pt") == "checkpoint"
    assert num_layers(DEFAULT["model"]) == DEFAULT["model"]["tiny"]["num_layers"]
    assert num_layers({"name": "esm2_t12_35M_UR50D"}) == 12
    assert num_layers({"name": "a/esm2_x.pt", "num_layers": 7}) == 7
    cases = [
        ({"name": str(tmp_path / "esm2_x.pt")}, "does not exist"),
        ({"name": str(tmp_path / "mine.pt")}, "does not exist"),
        ({"name": str(tmp_path / "nowhere")}, "is not tiny, a fair-esm ESM-2 release name"),
        ({"name": str(tmp_path)}, "has no config.json"),
    ]
    for model, problem in cases:
        with pytest.raises(ConfigError, match=f"^config key 'model.name': .*{problem}"):
            check_model_config(model)
    (tmp_path / "mine.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="file name starts with 'esm2'"):
        check_model_config({"name": str(tmp_path / "mine.pt")})
    (tmp_path / "esm2_x.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="^config key 'model.num_layers': is required"):
        check_model_config({"name": str(tmp_path / "esm2_x.pt")})


def test_knowledge_needs_its_method_scored_per_unit():
    assert not knowledge_enabled(changed(scoring={"methods": ["activation"]}), REGISTRY)
    assert not knowledge_enabled(changed(scoring={"granularity": "weight"}), REGISTRY)
    assert not knowledge_enabled(changed(knowledge={"enabled": False}), REGISTRY)
