"""Typed step settings: every step gets a dataclass, built from exactly the config keys it
declares; every config key reaches some step (or decides the DAG)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from kneurons import settings, workflow
from kneurons.attribution.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def schema_keys(section: str) -> set[str]:
    return set(SCHEMA["properties"][section]["properties"])


@pytest.mark.parametrize("step", sorted(workflow.STEPS))
def test_every_step_takes_a_settings_dataclass(step):
    cls = typing.get_type_hints(workflow.step_function(step))["settings"]
    assert dataclasses.is_dataclass(cls) and cls.__module__ == "kneurons.settings"


def test_every_config_key_reaches_a_step_or_the_dag():
    """A key of the schema no step declares would be a setting that does nothing."""
    dag = {"seeds", "scoring.methods", "scoring.jobs_per_layer", "knowledge.enabled"}
    dag |= {"model.name", "model.num_layers", "data.source", "data.table.path"}
    dag |= {"split.shared"}  # which splits exist; split.seed travels as the split's seed
    dag |= {"model.pretrain.enabled", "model.pretrain.per_seed"}  # which pretrained models
    dag |= {"sae.enabled", "browser.enabled"}
    used = {f"finetune.{k}" for k in names(settings.FinetuneSettings)}
    used |= {f"sweep.{k}" for k in names(settings.SweepSettings)}
    used |= {f"knowledge.{k}" for k in names(settings.KnowledgeSettings)}
    used |= {f"sae.{k}" for k in names(settings.SaeSettings) | names(settings.FeatureSettings)}
    used |= {f"plots.{k}" for k in names(settings.PlotSettings)}
    used |= {f"browser.{k}" for k in names(settings.BrowserSettings)}
    used |= {f"model.tiny.{k}" for k in names(settings.TinyModelSettings)} | {"model.url"}
    used |= {f"split.{k}" for k in names(settings.SplitSettings)}
    pretrain = names(settings.CorpusSettings) | names(settings.PretrainSettings) | {"corpus"}
    used |= {f"model.pretrain.{k}" for k in pretrain}
    used |= {f"scoring.{k}" for k in names(settings.ScoringSettings)}
    used |= {f"scoring.{k}" for m in REGISTRY.values() for k in m.settings}
    used |= {"scoring.normalize"}  # a sweep setting (how scores are ranked)
    used |= {f"data.{k}" for k in names(settings.DownloadSettings)}
    for source, cls in [
        ("synthetic", settings.SyntheticSettings),
        ("uniprot", settings.UniprotSettings),
        ("table", settings.TableSettings),
    ]:
        used |= {f"data.{source}.{k}" for k in names(cls)}
    keys = set()
    for section, spec in SCHEMA["properties"].items():
        if "properties" not in spec:
            keys.add(section)
            continue
        for key, sub in spec["properties"].items():
            if "properties" in sub and key != "method":
                keys |= {f"{section}.{key}.{k}" for k in sub["properties"]}
            else:
                keys.add(f"{section}.{key}")
    unused = keys - used - dag
    assert not unused, unused


def test_settings_take_only_declared_keys_and_build_back():
    params = settings.settings(settings.FinetuneSettings, CONFIG["finetune"], extra=1)
    assert set(params) == names(settings.FinetuneSettings)
    built = settings.build(settings.FinetuneSettings, {**params, "code": "x:1"})
    assert built == settings.FinetuneSettings(**params)
    with pytest.raises(TypeError, match="has no fields"):
        settings.build(settings.FinetuneSettings, {**params, "epoch": 3})
    with pytest.raises(KeyError, match="FinetuneSettings needs lr"):
        settings.settings(settings.FinetuneSettings, {k: v for k, v in params.items() if k != "lr"})


def test_params_are_canonical_whatever_the_key_order():
    reordered = {key: CONFIG["sweep"][key] for key in reversed(list(CONFIG["sweep"]))}
    a = settings.sweep_params(CONFIG)
    b = settings.sweep_params({**CONFIG, "sweep": reordered})
    assert a == b and list(a) == list(b) == sorted(a)


def test_download_params_hold_only_the_active_source():
    params = settings.download_params(CONFIG)
    assert "synthetic" in params and "uniprot" not in params and "table" not in params
    built = settings.build(settings.DownloadSettings, params)
    assert built.synthetic.motifs_per_sequence == (2, 3) and built.table is None
    table = {**CONFIG, "data": {**CONFIG["data"], "source": "table"}}
    params = settings.download_params(table, table_sha256="abc")
    assert params["table"]["sha256"] == "abc" and "path" not in params["table"]


def test_split_params_per_method_and_seed():
    random = settings.split_params(CONFIG, "seed3")
    assert random["seed"] == 3 and "identity" not in random
    assert random["identity_report"] is False  # synthetic sequences share no homology
    cluster = {**CONFIG, "split": {**CONFIG["split"], "method": "cluster", "seed": 7}}
    shared = settings.split_params(cluster, "shared")
    assert shared["seed"] == 7 and shared["identity"] == 0.3 and shared["identity_report"]


def test_scoring_params_hold_the_methods_own_keys():
    ig = settings.scoring_params(CONFIG, REGISTRY["ig"])
    activation = settings.scoring_params(CONFIG, REGISTRY["activation"])
    assert set(ig["method"]) == set(REGISTRY["ig"].settings)
    assert set(activation["method"]) == {"batch_size"}
    assert ig["max_sequences"] == CONFIG["scoring"]["max_sequences"]
    # a method that never runs the model does not rerun for the subset, device or precision
    magnitude = settings.scoring_params(CONFIG, REGISTRY["magnitude"])
    assert set(magnitude) == {"modules", "granularity", "method"}
