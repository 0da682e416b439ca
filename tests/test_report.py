"""Tests for kneurons.report and kneurons.plots on synthetic per-job JSON outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kneurons import plots, report

SEEDS = (0, 1, 2)
METHODS = ("ig", "activation", "random")
RETENTIONS = (0.5, 0.25, 0.1, 0.01)
N_LAYERS = 3
MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
UNITS = 16
# Planted in the fixture: each method's scores get a bonus in one module type. What the report
# says about k_proj here only echoes this table; the tests check arithmetic and formatting.
PREFERRED = {"ig": "k_proj", "activation": "fc1", "random": None}


def _kept_cells(rng: np.random.Generator, method: str, r: float) -> tuple[list[dict], int]:
    """Global top-r over noisy scores; the method's preferred module gets a score bonus."""
    cells = [(layer, mod) for layer in range(N_LAYERS) for mod in MODULES]
    scores = []
    for _, mod in cells:
        bonus = 1.0 if mod == PREFERRED[method] else 0.0
        scores.append(rng.random(UNITS) + bonus)
    flat = np.concatenate(scores)
    n_total = flat.size
    n_kept = max(1, int(round(r * n_total)))
    keep = np.zeros(n_total, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:n_kept]] = True
    out = []
    for i, (layer, mod) in enumerate(cells):
        k = int(keep[i * UNITS : (i + 1) * UNITS].sum())
        out.append({"layer": layer, "module": mod, "n_neurons": UNITS, "n_kept": k})
    return out, n_kept


def _make_inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    rng = np.random.default_rng(123)
    finetune, evaluations = [], []
    for seed in SEEDS:
        full_acc = 0.93 + 0.01 * seed
        m = {
            "seed": seed,
            "classes": [1, 2, 3, 4, 5, 6],
            "chance": 1 / 6,
            "majority_baseline": 0.18,
            "best_epoch": 7,
            "history": [
                {
                    "epoch": e,
                    "train_loss": 1.0 / e,
                    "train_accuracy": 0.5 + 0.05 * e,
                    "val_loss": 1.1 / e,
                    "val_accuracy": 0.5 + 0.04 * e,
                }
                for e in range(1, 9)
            ],
            "test": {
                "accuracy": full_acc,
                "macro_f1": full_acc - 0.01,
                "per_class_accuracy": {str(c): full_acc for c in range(1, 7)},
                "n": 180,
            },
        }
        p = tmp_path / "finetune" / f"seed{seed}" / "metrics.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(m))
        finetune.append(p)
        for method in METHODS:
            for r in RETENTIONS:
                kept, n_kept = _kept_cells(rng, method, r)
                drop = {"ig": 0.3, "activation": 0.5, "random": 0.75}[method]
                acc = full_acc - drop * (1 - r) ** 2 + 0.02 * rng.standard_normal()
                acc = float(np.clip(acc, 0, 1))
                e = {
                    "seed": seed,
                    "method": method,
                    "retention": r,
                    "normalize": "none",
                    "n_neurons_total": N_LAYERS * len(MODULES) * UNITS,
                    "n_kept": n_kept,
                    "test": {
                        "accuracy": acc,
                        "macro_f1": acc - 0.02,
                        "per_class_accuracy": {str(c): acc for c in range(1, 7)},
                        "n": 180,
                    },
                    "kept": kept,
                }
                p = tmp_path / "eval" / f"seed{seed}" / method / f"r{r}.json"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps(e))
                evaluations.append(p)
    return finetune, evaluations


@pytest.fixture()
def inputs(tmp_path):
    return _make_inputs(tmp_path)


def test_summary_has_one_full_row_per_seed(inputs):
    finetune, evaluations = inputs
    s = report.summary_table(finetune, evaluations)
    assert list(s.columns) == ["seed", "method", "retention", "accuracy", "macro_f1"]
    full = s[s["method"] == "full"]
    assert sorted(full["seed"]) == list(SEEDS)
    assert (full["retention"] == 1.0).all()
    assert len(s) == len(SEEDS) * (1 + len(METHODS) * len(RETENTIONS))
    assert not s.duplicated(["seed", "method", "retention"]).any()
    assert list(dict.fromkeys(s["method"])) == ["full", "ig", "activation", "random"]


def test_summary_rejects_duplicates(inputs):
    finetune, evaluations = inputs
    with pytest.raises(ValueError, match="duplicate"):
        report.summary_table(finetune, evaluations + evaluations[:1])


def test_density_table_sums_and_ratios(inputs):
    _, evaluations = inputs
    d = report.density_table(evaluations)
    assert list(d.columns) == report.DENSITY_COLUMNS
    assert len(d) == len(evaluations) * N_LAYERS * len(MODULES)
    for p in evaluations:
        e = json.loads(Path(p).read_text())
        sub = d[
            (d["seed"] == e["seed"])
            & (d["method"] == e["method"])
            & np.isclose(d["retention"], e["retention"])
        ]
        assert int(sub["n_kept"].sum()) == e["n_kept"]
    assert d["density"].between(0, 1).all()
    np.testing.assert_allclose(d["enrichment"], d["density"] / d["retention"])
    first = d[(d["seed"] == 0) & (d["method"] == "ig") & (d["retention"] == 0.5)]
    assert list(first["module"].iloc[: len(MODULES)]) == list(MODULES)


def test_density_table_warns_on_inconsistent_counts(inputs):
    _, evaluations = inputs
    e = json.loads(Path(evaluations[0]).read_text())
    e["n_kept"] += 1
    with pytest.warns(UserWarning, match="n_kept"):
        report.density_table([e])


def test_enrichment_arithmetic_on_a_planted_table(inputs):
    _, evaluations = inputs
    enr = report.module_enrichment(report.density_table(evaluations))
    assert set(enr.columns) >= {"method", "retention", "module", "enrichment_mean", "enrichment_sd"}
    assert (enr["n_seeds"] == len(SEEDS)).all()
    assert len(enr) == len(METHODS) * len(RETENTIONS) * len(MODULES)
    # by hand from the JSON files: per seed, kept / neurons pooled over layers / retention;
    # then mean, sd (ddof=1), min and max over seeds
    per_seed: dict[tuple[str, float, str], list[float]] = {}
    for p in evaluations:
        e = json.loads(Path(p).read_text())
        for mod in MODULES:
            cells = [c for c in e["kept"] if c["module"] == mod]
            kept = sum(c["n_kept"] for c in cells)
            total = sum(c["n_neurons"] for c in cells)
            key = (e["method"], e["retention"], mod)
            per_seed.setdefault(key, []).append(kept / total / e["retention"])
    for row in enr.itertuples():
        values = per_seed[(row.method, row.retention, row.module)]
        assert row.enrichment_mean == pytest.approx(np.mean(values), rel=1e-12)
        assert row.enrichment_sd == pytest.approx(np.std(values, ddof=1), rel=1e-9, abs=1e-12)
        assert row.enrichment_min == pytest.approx(min(values), rel=1e-12)
        assert row.enrichment_max == pytest.approx(max(values), rel=1e-12)
    # pooled enrichment, weighted by neuron count, averages to 1 over modules of equal size
    for (_, _), g in enr.groupby(["method", "retention"]):
        seeds_mean = g["enrichment_mean"].mean()
        r = g["retention"].iloc[0]
        n_total = N_LAYERS * len(MODULES) * UNITS
        expected = max(1, round(r * n_total)) / n_total / r
        assert math.isclose(seeds_mean, expected, rel_tol=1e-9)


def test_summary_markdown_numbers_and_verdicts_on_a_planted_table(inputs):
    finetune, evaluations = inputs
    s = report.summary_table(finetune, evaluations)
    d = report.density_table(evaluations)
    md = report.summary_markdown(s, d, finetune)
    full = s[s["method"] == "full"]["accuracy"]
    assert f"{full.mean():.3f} ± {full.std():.3f}" in md
    assert "0.167" in md  # chance
    assert "Seeds: 3" in md
    assert "| method | 100% | 50% | 25% | 10% | 1% |" in md
    # the verdicts restate the enrichment table at the smallest retention; the planted
    # preferences make ig's a "yes" and activation's a "no", so both wordings are checked
    enr = report.module_enrichment(d)
    at = enr[np.isclose(enr["retention"], min(RETENTIONS))]
    for method, verdict in (("ig", "yes"), ("activation", "no")):
        means = at[at["method"] == method].set_index("module")["enrichment_mean"]  # module order
        k = means["k_proj"]
        rank = 1 + int((means > k + 1e-12).sum())
        if verdict == "yes":
            assert rank == 1 and int(np.isclose(means, k).sum()) == 1
            others = means.drop("k_proj")
            nxt = f"next {others.idxmax()} {others.max():.2f}"
            expected = f"{method}: yes (k_proj {k:.2f}, {nxt})"
        else:
            assert rank > 1
            top = ", ".join(means[np.isclose(means, means.max())].index)
            expected = f"{method}: no ({top} {means.max():.2f}, k_proj {k:.2f}, rank {rank} of 6"
        assert expected in md
    assert "by construction" in md
    ig_acc = s[(s["method"] == "ig") & (s["retention"] == 0.1)]["accuracy"]
    assert f"{ig_acc.mean():.3f} ± {ig_acc.std():.3f}" in md


def test_write_outputs(inputs, tmp_path):
    finetune, evaluations = inputs
    out = tmp_path / "out"
    report.write_outputs(
        finetune, evaluations, out / "summary.tsv", out / "density.tsv", out / "summary.md"
    )
    s = pd.read_csv(out / "summary.tsv", sep="\t")
    d = pd.read_csv(out / "density.tsv", sep="\t")
    assert (s["method"] == "full").sum() == len(SEEDS)
    assert len(d) == len(evaluations) * N_LAYERS * len(MODULES)
    md = report.summary_markdown(
        report.summary_table(finetune, evaluations), report.density_table(evaluations), finetune
    )
    assert (out / "summary.md").read_text() == md + "\n"
    assert not list(out.glob(".*.tmp"))


def test_plots_write_png_and_pdf(inputs, tmp_path):
    finetune, evaluations = inputs
    out = tmp_path / "out"
    report.write_outputs(
        finetune, evaluations, out / "summary.tsv", out / "density.tsv", out / "summary.md"
    )
    paths = plots.make_all_plots(
        out / "summary.tsv", out / "density.tsv", finetune, out / "plots", {"dpi": 60}
    )
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in (
            "accuracy_vs_retention",
            "density_heatmaps",
            "enrichment_heatmaps",
            "module_enrichment",
        )
        for ext in ("png", "pdf")
    )
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000
        assert data[:4] == (b"\x89PNG" if p.suffix == ".png" else b"%PDF")
    assert not list((out / "plots").glob(".*.tmp"))


def test_plots_with_two_seeds_and_missing_style_keys(inputs, tmp_path):
    finetune, evaluations = inputs
    keep = [p for p in evaluations if "seed2" not in str(p)]
    s = report.summary_table(finetune[:2], keep)
    d = report.density_table(keep)
    out = tmp_path / "two"
    written = plots.plot_accuracy_vs_retention(s, None, out / "a.png", out / "a.pdf", {})
    written += plots.plot_module_enrichment(
        report.module_enrichment(d), out / "m.png", out / "m.pdf", None
    )
    assert all(p.stat().st_size > 0 for p in written)
    with pytest.raises(ValueError):
        plots.plot_layer_heatmaps(d, out / "h.png", out / "h.pdf", value="bogus")
