"""Tests for kneurons.reporting.knowledge on constructed per-seed tables (3 seeds x 3 classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kneurons.analysis import stats
from kneurons.reporting import knowledge as kr
from kneurons.reporting import knowledge_page, knowledge_summary

SEEDS = (0, 1, 2)
CLASSES = (1, 2, 3)
DRAWS = 4
# planted own-class effect of class 1's knowledge neurons; classes 2 and 3 act like random units
OWN = {"suppress": -0.5, "amplify": 0.3}
MOTIF_CLASS = {"m1a": 1, "m1b": 1, "m2a": 2, "m3a": 3}


def _effects(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for intervention in kr.INTERVENTIONS:
        for quantity in kr.QUANTITIES:
            for nc in CLASSES:
                # the matched draws: small noise around 0
                matched = rng.normal(0.0, 0.02, size=(DRAWS, len(CLASSES)))
                if nc == 1:
                    knowledge = rng.normal(0.0, 0.02, size=len(CLASSES))
                    knowledge[0] += OWN[intervention]
                elif nc == 2:
                    knowledge = matched.mean(axis=0)  # exactly the matched mean
                else:
                    knowledge = rng.normal(0.0, 0.02, size=len(CLASSES))
                sets = [("knowledge", 0, knowledge)]
                sets += [("matched", d, matched[d]) for d in range(DRAWS)]
                for set_name, draw, values in sets:
                    for sc, effect in zip(CLASSES, values, strict=True):
                        rows.append(
                            {
                                "intervention": intervention,
                                "set": set_name,
                                "draw": draw,
                                "quantity": quantity,
                                "neuron_class": nc,
                                "sequence_class": sc,
                                "effect": effect,
                            }
                        )
    return pd.DataFrame(rows)


def _neurons(seed: int) -> pd.DataFrame:
    rows = []
    for c in CLASSES:
        for unit in range(2 + c + seed):
            rows.append(
                {
                    "class": c,
                    "layer": unit % 3,
                    "module": ("fc1", "k_proj")[unit % 2],
                    "unit": 10 * c + unit,
                    "share": 0.8,
                    "mean_attribution": 0.1,
                }
            )
    return pd.DataFrame(rows)


# class 1's knowledge units: best motif own (0.9), other class's (0.8), none (all <= 0.5),
# own (0.7) -> own 1/2, other 1/4, none 1/4; its matched units detect nothing
AUROCS = {
    ("knowledge", 0): {"m1a": 0.9, "m1b": 0.6, "m2a": 0.5, "m3a": 0.4},
    ("knowledge", 1): {"m1a": 0.5, "m1b": 0.6, "m2a": 0.8, "m3a": 0.4},
    ("knowledge", 2): {"m1a": 0.5, "m1b": 0.3, "m2a": 0.45, "m3a": 0.4},
    ("knowledge", 3): {"m1a": 0.6, "m1b": 0.7, "m2a": 0.5, "m3a": 0.4},
    ("matched", 0): {"m1a": 0.5, "m1b": 0.4, "m2a": 0.5, "m3a": 0.4},
    ("matched", 1): {"m1a": 0.45, "m1b": 0.4, "m2a": 0.5, "m3a": 0.4},
    ("matched", 2): {"m1a": 0.5, "m1b": 0.5, "m2a": 0.5, "m3a": 0.4},
    ("matched", 3): {"m1a": 0.3, "m1b": 0.4, "m2a": 0.5, "m3a": float("nan")},
}


def _motifs(seed: int) -> pd.DataFrame:
    rows = []
    for (set_name, unit), aurocs in AUROCS.items():
        for motif, auroc in aurocs.items():
            rows.append(
                {
                    "set": set_name,
                    "class": 1,
                    "layer": 0,
                    "module": "fc1",
                    "unit": unit + (100 if set_name == "matched" else 0),
                    "motif": motif,
                    "motif_class": MOTIF_CLASS[motif],
                    # seed 1's first unit detects its own motif less well: same best motif
                    "auroc": auroc - (0.1 * (seed == 1) if unit == 0 else 0.0),
                    "n_positive": 30,
                }
            )
    return pd.DataFrame(rows)


def _write(tmp_path: Path, with_motifs: bool = True):
    paths = {"neurons": [], "effects": [], "motifs": []}
    for seed in SEEDS:
        folder = tmp_path / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        motifs = _motifs(seed) if with_motifs else _motifs(seed).head(0)
        for name, table in (("neurons", _neurons(seed)), ("effects", _effects(seed))):
            table.to_csv(folder / f"{name}.tsv", sep="\t", index=False)
            paths[name].append(folder / f"{name}.tsv")
        motifs.to_csv(folder / "motifs.tsv", sep="\t", index=False)
        paths["motifs"].append(folder / "motifs.tsv")
    outputs = {
        "specificity": tmp_path / "out" / "specificity.tsv",
        "detectors": tmp_path / "out" / "detectors.tsv",
        "summary": tmp_path / "out" / "summary.md",
    }
    for figure in ("effects", "placement", "motif_detectors"):
        for ext in ("png", "pdf"):
            outputs[f"{figure}_{ext}"] = tmp_path / "out" / f"{figure}.{ext}"
    assert set(outputs) == set(knowledge_summary.OUTPUT_KEYS)
    knowledge_summary.write_outputs(
        paths["neurons"], paths["effects"], paths["motifs"], SEEDS, outputs, {"dpi": 40}
    )
    return outputs


def _stacked(make) -> pd.DataFrame:
    return pd.concat([make(s).assign(seed=s) for s in SEEDS], ignore_index=True)


@pytest.fixture
def specificity():
    return kr.specificity_table(_stacked(_effects))


def test_planted_class_is_specific_and_random_like_classes_are_not(specificity):
    assert len(specificity) == 2 * 2 * 3
    row = specificity.set_index(["intervention", "quantity", "neuron_class"])
    for intervention in kr.INTERVENTIONS:
        planted = row.loc[(intervention, "p_true", 1)]
        assert planted["specific"]
        assert planted["n_seeds"] == 3
        assert planted["own_effect_mean"] == pytest.approx(OWN[intervention], abs=0.05)
        assert abs(planted["matched_specificity_mean"]) < 0.05
        same = row.loc[(intervention, "p_true", 2)]
        assert same["difference_mean"] == pytest.approx(0.0, abs=1e-12)
        # rounding leaves differences of ~1e-17: the t-test sees noise, not an effect
        assert same["p"] > 0.05 and not same["specific"]
    # class 1 under both interventions on p_true and under suppression on accuracy; its
    # amplify-accuracy row is significant only before Holm (test_holm_over_all_rows)
    assert specificity["specific"].sum() == 3


def test_specificity_per_seed_by_hand():
    effects = _effects(0).assign(seed=0)
    table = kr.seed_specificity(effects).set_index(["intervention", "quantity", "neuron_class"])
    cell = effects[(effects["intervention"] == "suppress") & (effects["quantity"] == "p_true")]
    know = cell[(cell["set"] == "knowledge") & (cell["neuron_class"] == 3)]
    know = know.set_index("sequence_class")["effect"]
    expected = know[3] - (know[1] + know[2]) / 2
    got = table.loc[("suppress", "p_true", 3)]
    assert got["specificity"] == pytest.approx(expected)
    matched = cell[(cell["set"] == "matched") & (cell["neuron_class"] == 3)]
    per_draw = matched.pivot(index="draw", columns="sequence_class", values="effect")
    expected = (per_draw[3] - (per_draw[1] + per_draw[2]) / 2).mean()
    assert got["matched_specificity_mean"] == pytest.approx(expected)
    assert got["n_draws"] == DRAWS


def test_holm_over_all_rows(specificity):
    assert np.allclose(specificity["p_holm"], stats.holm(specificity["p"].to_numpy()))
    assert (specificity["p_holm"] >= specificity["p"]).all()
    assert (specificity["p_holm"] > specificity["p"]).any()
    row = specificity.set_index(["intervention", "quantity", "neuron_class"])
    row = row.loc[("amplify", "accuracy", 1)]
    assert row["p"] < kr.ALPHA <= row["p_holm"] and not row["specific"]


def test_per_model_specificity_is_a_one_sided_permutation_p_combined_by_fisher(specificity):
    row = specificity.set_index(["intervention", "quantity", "neuron_class"])
    for intervention in kr.INTERVENTIONS:
        planted = row.loc[(intervention, "p_true", 1)]
        # beyond all 4 matched sets of every seed, in the expected direction: p = 1/5 each
        assert planted["per_seed_p"] == " ".join(f"{s}:0.2" for s in SEEDS)
        assert planted["n_draws"] == DRAWS
        assert planted["model_p"] == pytest.approx(stats.fisher_combined([0.2] * len(SEEDS)))
        # 3 seeds x 4 sets cannot reach Holm p < 0.05 (Fisher p 0.16): not specific this way
        assert not planted["model_specific"]
    # one seed by hand: class 3's suppression specificity among its matched sets (less)
    effects = _effects(0).assign(seed=0)
    per_seed = kr.seed_specificity(effects).set_index(["intervention", "quantity", "neuron_class"])
    cell = effects[(effects["intervention"] == "suppress") & (effects["quantity"] == "p_true")]
    matched = cell[(cell["set"] == "matched") & (cell["neuron_class"] == 3)]
    per_draw = matched.pivot(index="draw", columns="sequence_class", values="effect")
    draws = per_draw[3] - (per_draw[1] + per_draw[2]) / 2
    own = per_seed.loc[("suppress", "p_true", 3)]
    expected = (1 + (draws <= own["specificity"]).sum()) / (1 + DRAWS)
    assert own["permutation_p"] == pytest.approx(expected)
    assert np.allclose(specificity["model_p_holm"], stats.holm(specificity["model_p"].to_numpy()))


def test_enough_matched_sets_make_the_per_model_test_answer():
    def effects(seed):
        rng = np.random.default_rng(seed)
        rows = []
        for set_name, draw in [("knowledge", 0)] + [("matched", d) for d in range(99)]:
            for sc in CLASSES:
                planted = -0.5 if set_name == "knowledge" and sc == 1 else 0.0
                effect = rng.normal(0.0, 0.02) + planted
                rows.append(("suppress", set_name, draw, "p_true", 1, sc, effect))
        columns = ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]
        return pd.DataFrame(rows, columns=[*columns, "effect"])

    one_seed = kr.specificity_table(effects(0).assign(seed=0)).iloc[0]
    # one model, 99 sets: p = 0.01 without a second seed; the paired t-test has no answer
    assert one_seed["per_seed_p"] == "0:0.01" and one_seed["model_specific"]
    assert np.isnan(one_seed["p"]) and not one_seed["specific"]


def test_wrong_direction_is_not_specific():
    effects = _stacked(_effects)
    # suppression that raises class 1's own p_true: significant, but not the expected direction
    flip = (effects["intervention"] == "suppress") & (effects["set"] == "knowledge")
    effects.loc[flip & (effects["neuron_class"] == 1), "effect"] *= -1
    table = kr.specificity_table(effects).set_index(["intervention", "quantity", "neuron_class"])
    row = table.loc[("suppress", "p_true", 1)]
    assert row["p_holm"] < kr.ALPHA and row["difference_mean"] > 0 and not row["specific"]


def test_detector_shares_by_hand():
    shares = kr.detector_shares(_stacked(_motifs))
    first = shares[(shares["seed"] == 0) & (shares["class"] == 1)].set_index("set")
    assert first.loc["knowledge", ["own_share", "other_share", "none_share"]].tolist() == [
        0.5,
        0.25,
        0.25,
    ]
    assert first.loc["knowledge", "n_units"] == 4
    assert first.loc["matched", ["own_share", "other_share", "none_share"]].tolist() == [0, 0, 1]
    table = kr.detector_table(_stacked(_motifs)).set_index(["set", "class"])
    know = table.loc[("knowledge", 1)]
    assert know["own_share_mean"] == pytest.approx(0.5)
    assert know["other_share_mean"] == pytest.approx(0.25)
    assert know["n_seeds"] == 3
    # the same difference (0.5) in every seed: no variance, p = 0 (stats.paired_test)
    assert know["own_difference_mean"] == pytest.approx(0.5)
    assert know["p"] == 0.0 and know["more_own"]
    assert np.isnan(table.loc[("matched", 1), "p"])
    top = kr.top_detectors(_stacked(_motifs), n=2)
    assert top["best_motif"].tolist() == ["m1a", "m1a"]
    assert top["best_auroc"].tolist() == pytest.approx([0.9, 0.9])


def test_outputs_and_first_paragraph(tmp_path):
    outputs = _write(tmp_path)
    text = outputs["summary"].read_text()
    first = text.split("\n\n")[1]
    assert "**1 of 3 classes show specific knowledge neurons** (EC 1)" in first
    assert "Under suppression: 1 of 3 (EC 1); under amplification: 1 of 3 (EC 1)" in first
    assert "detect their own class's motifs more than matched random units pooled" in first
    assert "per class in 1 of 1 classes with scored units (EC 1)" in first
    assert "95% t-interval over seeds" in text
    assert "no motif annotation" not in text.lower()
    table = pd.read_csv(outputs["specificity"], sep="\t")
    assert table["specific"].sum() == 3
    assert not pd.read_csv(outputs["detectors"], sep="\t").empty
    for key, path in outputs.items():
        if key.endswith(("_png", "_pdf")):
            assert path.stat().st_size > 1000, key


def test_no_specific_class_is_said_plainly():
    effects = _stacked(_effects)
    effects = effects[effects["neuron_class"] != 1]
    neurons = _stacked(_neurons)
    table = kr.specificity_table(effects)
    text = knowledge_page.summary_markdown(
        neurons, effects, _stacked(_motifs).head(0), table, pd.DataFrame()
    )
    first = text.split("\n\n")[1]
    assert first.startswith("**0 of 3 classes show specific knowledge neurons**")
    assert "not class-specific" in first


def test_empty_motifs_are_reported_and_plotted(tmp_path):
    outputs = _write(tmp_path, with_motifs=False)
    text = outputs["summary"].read_text()
    first = text.split("\n\n")[1]
    assert "no motif annotation" in first
    assert "No motif annotation" in text
    assert pd.read_csv(outputs["detectors"], sep="\t").empty
    assert outputs["motif_detectors_png"].stat().st_size > 1000
    assert outputs["motif_detectors_pdf"].stat().st_size > 1000


def test_no_knowledge_neurons_anywhere(tmp_path):
    header_only = {
        "neurons": _neurons(0).head(0),
        "effects": _effects(0).head(0),
        "motifs": _motifs(0).head(0),
    }
    paths = {}
    for name, table in header_only.items():
        paths[name] = [tmp_path / f"seed{s}_{name}.tsv" for s in SEEDS]
        for path in paths[name]:
            table.to_csv(path, sep="\t", index=False)
    outputs = {key: tmp_path / "out" / key for key in knowledge_summary.OUTPUT_KEYS}
    knowledge_summary.write_outputs(
        paths["neurons"], paths["effects"], paths["motifs"], SEEDS, outputs, {"dpi": 40}
    )
    first = outputs["summary"].read_text().split("\n\n")[1]
    assert first.startswith("**No class has knowledge neurons in any seed")
    assert pd.read_csv(outputs["specificity"], sep="\t").empty
    assert all(outputs[f"{f}_png"].stat().st_size > 1000 for f in ("effects", "placement"))
