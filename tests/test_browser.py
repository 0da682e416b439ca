"""The unit browser: the data it gathers for a seed built by hand on a tiny model, the page's
self-containment, and the page itself in headless Chromium (residues, shading, motif boxes, the
URL fragment)."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_features import split_table

from kneurons.analysis.knowledge import token_activations
from kneurons.model.sae import SaeConfig, SparseAutoencoder, save_sae
from kneurons.reporting import browser
from kneurons.reporting.browser_page import render_page
from kneurons.settings import BrowserSettings

SHOTS = Path("/work/browser_shots")  # screenshots for a reviewer, beside the test's tmp dir
CLASSES = [1, 2, 3, 4, 5, 6]
SETTINGS = BrowserSettings(
    examples=4, random_examples=2, max_units=0, device="cpu", seeds=(0,), methods=("ig", "gradxact")
)
# class 1 and class 3 knowledge neurons; (0, fc1, 3) belongs to both
NEURONS = pd.DataFrame(
    {
        "class": [1, 1, 3, 3],
        "layer": [0, 1, 2, 0],
        "module": ["fc1", "q_proj", "k_proj", "fc1"],
        "unit": [3, 0, 4, 3],
        "share": [1.0, 0.6, 0.9, 0.8],
        "mean_attribution": [0.5, 0.2, 0.4, 0.3],
    }
)


def effects_table(rng) -> pd.DataFrame:
    """The knowledge step's effects: both classes' knowledge sets and 5 matched draws."""
    rows = []
    for intervention in ("suppress", "amplify"):
        for set_name, draws in (("knowledge", [0]), ("matched", range(5))):
            for draw in draws:
                for quantity in ("p_true", "accuracy"):
                    for c in (1, 3):
                        for s in CLASSES:
                            effect = round(float(rng.normal()), 4)
                            rows.append((intervention, set_name, draw, quantity, c, s, effect))
    columns = ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]
    return pd.DataFrame(rows, columns=[*columns, "effect"])


def concepts_table() -> pd.DataFrame:
    """Feature 5 of layer 1 is best for two concepts, feature 7 of layer 2 for one (unscored
    F1); a neuron row and a residual row, which the page does not list."""
    rows = [
        ("sae", 1, "rossmann_nad_binding/true", "sae", 5, 0.8),
        ("sae", 1, "aa/G", "sae", 5, 0.9),
        ("sae", 2, "zincin_hexxh/true", "sae", 7, np.nan),
        ("neuron", 1, "aa/G", "fc1", 2, 0.7),
        ("residual", 1, "aa/G", "residual", 1, 0.6),
    ]
    table = pd.DataFrame(rows, columns=["kind", "layer", "concept", "module", "unit", "f1"])
    return table.assign(seed=0, group="true", threshold=0.5, val_f1=table["f1"])


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """One seed's inputs, written as the workflow writes them: split (with a decoy and a
    mutated motif), model, scores, knowledge neurons and effects, concepts, SAEs."""
    from kneurons.model.esm import save_classifier

    from conftest import make_tiny_classifier

    path = tmp_path_factory.mktemp("browser_seed")
    model = make_tiny_classifier().float()
    save_classifier(model, CLASSES, 1022, path / "model.pt")
    table = split_table()
    validation = table.index[table["split"] == "validation"]
    table.loc[validation[0], "motifs"] += ";zincin_hexxh:30:35:decoy"
    table.loc[validation[1], "motifs"] = "p_loop_walker_a:2:10:mutated"
    table.to_csv(path / "split.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    units = pd.DataFrame(
        [
            (layer, module, unit)
            for layer in range(3)
            for module in ("q_proj", "k_proj", "fc1")
            for unit in range(8)
        ],
        columns=["layer", "module", "unit"],
    )
    for method in SETTINGS.methods:
        units.assign(score=rng.normal(size=len(units))).to_csv(
            path / f"{method}.tsv", sep="\t", index=False
        )
    NEURONS.to_csv(path / "neurons.tsv", sep="\t", index=False)
    effects_table(rng).to_csv(path / "effects.tsv", sep="\t", index=False)
    concepts_table().to_csv(path / "concepts.tsv", sep="\t", index=False)
    torch.manual_seed(1)
    saes = []
    for layer in range(3):
        sae = SparseAutoencoder(SaeConfig(d_in=32, n_features=16, k=4))
        with torch.no_grad():
            sae.W_enc.normal_()
            sae.W_dec.normal_()
        save_sae(sae, path / f"layer{layer}.safetensors", {"seed": 0, "layer": layer})
        saes.append(path / f"layer{layer}.safetensors")
    return SimpleNamespace(
        path=path,
        model=model,
        table=table,
        input=SimpleNamespace(
            splits=[path / "split.tsv"],
            models=[path / "model.pt"],
            scores=[path / f"{m}.tsv" for m in SETTINGS.methods],
            neurons=[path / "neurons.tsv"],
            effects=[path / "effects.tsv"],
            concepts=[path / "concepts.tsv"],
            saes=saes,
        ),
    )


@pytest.fixture(scope="module")
def page(seed_files):
    """The browser step on the hand-built seed: (page text, its data, the page's path)."""
    out = SimpleNamespace(page=seed_files.path / "browser" / "index.html")
    browser.browser(seed_files.input, out, SETTINGS, {})
    text = out.page.read_text()
    return text, browser.page_data(text), out.page


def unit(data, unit_id):
    return next(u for u in data["seeds"][0]["units"] if u["id"] == unit_id)


def test_the_page_lists_every_knowledge_neuron_once_and_every_best_feature(page):
    _, data, _ = page
    ids = [u["id"] for u in data["seeds"][0]["units"]]
    # neurons by share, then features by test F1 (unscored last)
    assert ids == [
        "seed0/L0/fc1/3",
        "seed0/L2/k_proj/4",
        "seed0/L1/q_proj/0",
        "seed0/L1/sae/5",
        "seed0/L2/sae/7",
    ]
    both = unit(data, "seed0/L0/fc1/3")
    assert both["classes"] == [1, 3] and both["share"] == 1.0
    feature = unit(data, "seed0/L1/sae/5")
    assert feature["concept"] == "aa/G" and feature["f1"] == 0.9
    assert feature["concepts"] == [["aa/G", 0.9], ["rossmann_nad_binding/true", 0.8]]
    assert unit(data, "seed0/L2/sae/7")["f1"] is None


def test_a_neurons_effects_are_its_class_sets_with_the_matched_null_interval(page, seed_files):
    _, data, _ = page
    effects = pd.read_csv(seed_files.path / "effects.tsv", sep="\t")
    p_true = effects[(effects["quantity"] == "p_true") & (effects["neuron_class"] == 3)]
    neuron = unit(data, "seed0/L2/k_proj/4")  # class 3
    for intervention in ("suppress", "amplify"):
        rows = p_true[p_true["intervention"] == intervention]
        own = rows[(rows["set"] == "knowledge") & (rows["sequence_class"] == 3)]["effect"]
        assert neuron[intervention] == pytest.approx(float(own.iloc[0]))
        matched = rows[(rows["set"] == "matched") & (rows["sequence_class"] == 3)]["effect"]
        assert neuron[f"{intervention}_null"] == pytest.approx(
            list(np.quantile(matched, [0.025, 0.975])), abs=1e-9
        )
        row = data["seeds"][0]["class_effects"]["3"][intervention]
        knowledge = rows[rows["set"] == "knowledge"].set_index("sequence_class")["effect"]
        assert row == pytest.approx([knowledge[c] for c in CLASSES])
    # scores and ranks under each method, from the score tables
    ig = pd.read_csv(seed_files.path / "ig.tsv", sep="\t")
    rank = int(
        ig["score"]
        .rank(ascending=False, method="min")[
            (ig["layer"] == 2) & (ig["module"] == "k_proj") & (ig["unit"] == 4)
        ]
        .iloc[0]
    )
    assert neuron["scores"]["ig"][1] == rank and set(neuron["scores"]) == {"ig", "gradxact"}


def test_examples_are_the_top_activating_then_random_validation_sequences(page, seed_files):
    _, data, _ = page
    seqs = data["seeds"][0]["sequences"]
    validation = seed_files.table[seed_files.table["split"] == "validation"]
    assert seqs["seq"] == list(validation["sequence"]) and seqs["id"] == list(validation["id"])
    assert seqs["true"] == [int(c) for c in validation["ec_class"]]
    neuron = unit(data, "seed0/L2/k_proj/4")
    units = pd.DataFrame({"layer": [2], "module": ["k_proj"], "unit": [4]})
    acts = [a[1:-1, 0] for a in token_activations(seed_files.model, seqs["seq"], units)]
    maxima = np.array([a.max() for a in acts])
    kinds = [kind for _, kind, _ in neuron["examples"]]
    assert kinds == ["top"] * 4 + ["random"] * 2
    shown = [i for i, _, _ in neuron["examples"]]
    assert shown[:4] == list(np.argsort(-maxima, kind="stable")[:4])
    assert len(set(shown)) == 6
    peak = maxima[shown].max()
    assert neuron["peak"] == pytest.approx(peak, abs=1e-4)
    for i, _, values in neuron["examples"]:
        assert values == browser.quantised(acts[i], peak)
        assert len(values) == len(seqs["seq"][i])
        assert (np.array(values) > 0).tolist() == (acts[i] > 0).tolist()
    assert max(max(v) for _, _, v in neuron["examples"]) == 255


def test_quantised_rounds_away_from_zero_and_keeps_the_sign():
    values = np.array([0.0, 1e-6, 0.5, 1.0, -0.3, -5.0])
    assert browser.quantised(values, 1.0) == [0, 1, 128, 255, -77, -255]
    assert browser.quantised(values, 0.0) == [0] * 6


def test_the_page_is_one_self_contained_file(page):
    text, data, _ = page

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

    parser = Tags()
    parser.feed(text)
    names = {tag for tag, _ in parser.tags}
    assert not names & {"link", "img", "iframe", "object", "embed", "audio", "video"}
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all("src" not in attrs for attrs in scripts)
    assert not [a for _, attrs in parser.tags for k, a in attrs.items() if k in ("src", "href")]
    assert not re.search(r"https?://", text)
    assert not re.search(r"@import|url\(", text)  # no style fetches either
    assert data["motif_kinds"][:3] == ["true", "mutated", "decoy"]


def test_a_string_in_the_data_cannot_end_the_script():
    data = {"seeds": [], "note": "</script><script>alert(1)</script>"}
    text = render_page(data)
    assert browser.page_data(text) == data
    assert text.count("</script>") == 3  # data, colours, script


def test_without_knowledge_or_sae_tables_the_page_shows_what_exists(seed_files, tmp_path):
    """Knowledge off and SAE off: no such inputs; a header-only neurons table: no neurons."""
    files = seed_files.input
    bare = SimpleNamespace(splits=files.splits, models=files.models, scores=files.scores)
    out = SimpleNamespace(page=tmp_path / "bare.html")
    browser.browser(bare, out, SETTINGS, {})
    data = browser.page_data(out.page.read_text())
    assert data["seeds"][0]["units"] == [] and len(data["seeds"][0]["sequences"]["id"]) == 12
    (tmp_path / "neurons.tsv").write_text("class\tlayer\tmodule\tunit\tshare\tmean_attribution\n")
    (tmp_path / "empty.tsv").write_text("")
    only_sae = SimpleNamespace(
        **vars(bare),
        neurons=[tmp_path / "neurons.tsv"],
        effects=[tmp_path / "empty.tsv"],
        concepts=files.concepts,
        saes=files.saes,
    )
    browser.browser(only_sae, out, SETTINGS, {})
    data = browser.page_data(out.page.read_text())
    assert [u["kind"] for u in data["seeds"][0]["units"]] == ["sae", "sae"]
    assert data["seeds"][0]["class_effects"] == {}


def test_max_units_keeps_neurons_first():
    neurons, features = [{"id": "n1"}, {"id": "n2"}], [{"id": "f1"}]
    assert [u["id"] for u in browser.capped(neurons, features, 2)] == ["n1", "n2"]
    assert len(browser.capped(neurons, features, 0)) == 3


# --- in a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

RESIDUES_JS = """
return Array.from(document.querySelectorAll('#examples .example')).map(ex => ({
  index: Number(ex.dataset.seqIndex),
  residues: Array.from(ex.querySelectorAll('.res')).map(r => {
    const box = r.getBoundingClientRect();
    return [r.textContent, getComputedStyle(r).backgroundColor, box.left, box.right];
  }),
  motifs: Array.from(ex.querySelectorAll('.motif')).map(m => {
    const box = m.getBoundingClientRect();
    return [Number(m.dataset.start), Number(m.dataset.end), m.dataset.kind, m.title,
            box.left, box.right, getComputedStyle(m).borderTopColor];
  }),
}));
"""


def rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


@pytest.fixture(scope="module")
def driver():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "no chromium or chromedriver binary on PATH (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield chrome
    chrome.quit()


def save_shot(chrome, tmp_path: Path, name: str) -> None:
    chrome.save_screenshot(str(tmp_path / name))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SHOTS / name)


def test_in_chromium_a_unit_found_by_the_filter_draws_its_residues_shading_and_motifs(
    page, driver, tmp_path
):
    from selenium.webdriver.common.by import By

    _, data, path = page
    seed = data["seeds"][0]
    driver.get(path.as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == [u["id"] for u in seed["units"]]
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    # sorting by layer, then reversed
    driver.find_element(By.CSS_SELECTOR, "#units th[data-key=layer]").click()
    layers = [
        int(r.get_attribute("data-id").split("/")[1][1:])
        for r in driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")
    ]
    assert layers == sorted(layers)
    driver.find_element(By.CSS_SELECTOR, "#units th[data-key=layer]").click()
    layers = [
        int(r.get_attribute("data-id").split("/")[1][1:])
        for r in driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")
    ]
    assert layers == sorted(layers, reverse=True)
    save_shot(driver, tmp_path, "browser_list.png")

    # the unit with a decoy and a mutated motif among its examples, if any; else the first
    target = next(
        (u for u in seed["units"] if {i for i, _, _ in u["examples"]} & {0, 1}), seed["units"][0]
    )
    driver.find_element(By.ID, "filter").send_keys(target["id"].removeprefix("seed0/"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == [target["id"]]
    rows[0].click()
    assert driver.execute_script("return location.hash") == "#" + target["id"]
    assert driver.find_element(By.ID, "unit-title").text == target["id"]

    drawn = driver.execute_script(RESIDUES_JS)
    assert [d["index"] for d in drawn] == [i for i, _, _ in target["examples"]]
    darkest = []
    for example, (index, _, values) in zip(drawn, target["examples"], strict=True):
        letters = "".join(r[0] for r in example["residues"])
        assert letters == seed["sequences"]["seq"][index]
        colours = [rgb(r[1]) for r in example["residues"]]
        shaded = [c != (255, 255, 255) for c in colours]
        assert shaded == [q > 0 for q in values], example["index"]
        brightness = [sum(c) for c in colours]
        darkest += [(b, q) for b, q in zip(brightness, values, strict=True)]
        # darker where more active, within the example
        order = np.argsort(values)
        assert all(np.diff(np.array(brightness)[order]) <= 0)
        expected = sorted(
            (start, end, kind) for _, start, end, kind in seed["sequences"]["motifs"][index]
        )
        boxes = sorted(tuple(m[:3]) for m in example["motifs"])
        assert boxes == expected
        for start, end, kind, title, left, right, _ in example["motifs"]:
            residues = example["residues"]
            assert abs(left + 2 - residues[start][2]) < 1.5  # 2 px border outside the residues
            assert abs(right - 2 - residues[end - 1][3]) < 1.5
            names = [
                m[0] for m in seed["sequences"]["motifs"][index] if m[1:] == [start, end, kind]
            ]
            assert any(title.startswith(name) for name in names)
    # the most active residue (q = 255) is the darkest of all shown (q = 254 may tie)
    assert max(q for _, q in darkest) == 255
    assert {b for b, q in darkest if q == 255} == {min(b for b, _ in darkest)}
    # true, mutated and decoy motifs in distinct outline colours
    outlines = {m[2]: m[6] for example in drawn for m in example["motifs"]}
    assert len(set(outlines.values())) == len(outlines)
    save_shot(driver, tmp_path, "browser_unit.png")


def test_in_chromium_opening_the_page_with_a_fragment_selects_that_unit(page, driver):
    from selenium.webdriver.common.by import By

    _, data, path = page
    for target in ("seed0/L0/fc1/3", "seed0/L1/sae/5"):
        driver.get("about:blank")
        driver.get(f"{path.as_uri()}#{target}")
        assert driver.find_element(By.ID, "unit-title").text == target
        selected = driver.find_elements(By.CSS_SELECTOR, "#units tbody tr.selected")
        assert [r.get_attribute("data-id") for r in selected] == [target]
        shown = driver.find_elements(By.CSS_SELECTOR, "#examples .example")
        assert len(shown) == len(unit(data, target)["examples"])
