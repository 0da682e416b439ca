"""The unit browser's page: one HTML file with its data, script and style inline.

A Python string rather than a file beside the module, so that the page travels with the code
(and its code hash) without package data. Nothing in it fetches anything: no external script,
style, font or image, so the page opens from disk on a machine without network. The data
(`reporting.browser`) sits in `<script type="application/json" id="data">`; the script draws
from it:
- a seed selector, a text filter and a table of units sortable by any column (click the
  header; again for the reverse order);
- for the chosen unit: its scores, its class set's effects, and its example sequences drawn
  residue by residue, each residue shaded by the unit's activation (white at 0 or below, the
  kind's colour at the unit's maximum over the shown sequences), with the annotated motifs
  as outlined boxes on the same track;
- the URL fragment names the unit (#seed0/L2/k_proj/17, #seed0/L2/sae/123): opening the page
  with one selects it, selecting a unit sets it.
"""

from __future__ import annotations

import json

# the colour of full activation, per kind of unit; the motif outlines per motif kind
NEURON_COLOUR = (217, 72, 1)
FEATURE_COLOUR = (33, 102, 172)
MOTIF_COLOURS = {"true": "#1a9850", "mutated": "#fdae61", "decoy": "#7b3294", "feature": "#555"}


def render_page(data: dict) -> str:
    """The page with `data` embedded as JSON (`</` escaped, so no string in it can end the
    script element)."""
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    colours = {
        "neuron": list(NEURON_COLOUR),
        "sae": list(FEATURE_COLOUR),
        "motif": MOTIF_COLOURS,
    }
    return (
        PAGE.replace("__STYLE__", STYLE)
        .replace("__COLOURS__", json.dumps(colours))
        .replace("__SCRIPT__", SCRIPT)
        .replace("__DATA__", payload)
    )


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Knowledge neurons and SAE features: unit browser</title>
<style>__STYLE__</style>
</head>
<body>
<header>
  <h1>Unit browser</h1>
  <label>Seed <select id="seed"></select></label>
  <label>Filter <input id="filter" type="search" placeholder="e.g. k_proj, L1/sae, rossmann"
    autocomplete="off"></label>
  <span id="count"></span>
</header>
<main>
  <section id="list">
    <table id="units"><thead></thead><tbody></tbody></table>
    <p id="notes"></p>
  </section>
  <section id="detail"><p class="hint">Choose a unit in the table.</p></section>
</main>
<script type="application/json" id="data">__DATA__</script>
<script id="colours" type="application/json">__COLOURS__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 0; color: #222; }
header { position: sticky; top: 0; background: #f4f4f4; padding: 6px 12px;
  border-bottom: 1px solid #ccc; display: flex; gap: 16px; align-items: center; z-index: 2; }
header h1 { font-size: 16px; margin: 0; }
main { display: flex; gap: 12px; padding: 8px 12px; align-items: flex-start; }
#list { flex: 0 0 46%; max-height: calc(100vh - 60px); overflow: auto; }
#detail { flex: 1 1 auto; min-width: 0; }
table { border-collapse: collapse; }
#units th { cursor: pointer; position: sticky; top: 0; background: #fff; text-align: left;
  border-bottom: 2px solid #999; padding: 2px 5px; max-width: 96px; vertical-align: bottom; }
#units th.asc::after { content: " \\25B2"; } #units th.desc::after { content: " \\25BC"; }
#units td { padding: 1px 5px; border-bottom: 1px solid #eee; white-space: nowrap; }
#units tbody tr { cursor: pointer; } #units tbody tr:hover { background: #fff5d6; }
#units tbody tr.selected { background: #ffe08a; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.small { color: #666; font-size: 11px; }
.kv td, .kv th, .effects td, .effects th { padding: 1px 6px; border: 1px solid #ddd; }
.example { margin: 8px 0; }
.example .meta { font-size: 12px; margin-bottom: 2px; }
.example .meta .wrong { color: #b2182b; font-weight: bold; }
.scroll { overflow-x: auto; padding: 3px 0 6px 0; }
.track { position: relative; white-space: nowrap; display: inline-block; height: 20px; }
.res { display: inline-block; width: 14px; height: 18px; line-height: 18px; margin: 1px 0;
  text-align: center; font-family: monospace; font-size: 12px; }
.motif { position: absolute; top: 0; height: 18px; border: 2px solid; box-sizing: content-box;
  margin-left: -2px; pointer-events: none; border-radius: 3px; }
.legend span { display: inline-block; margin-right: 12px; }
.legend i { display: inline-block; width: 18px; height: 10px; border: 2px solid;
  vertical-align: middle; margin-right: 3px; }
"""

# The script. Plain ES2017, no library; the unit table and the detail are redrawn from the
# data on every change (a few hundred rows: fast enough, and nothing to keep in sync).
SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const COLOURS = JSON.parse(document.getElementById("colours").textContent);
const CELL = 14;  // px per residue: the motif boxes are placed by it
const state = { seed: 0, sort: null, desc: false, selected: null };

const COLUMNS = [
  ["kind", "kind", u => u.kind],
  ["layer", "layer", u => u.layer],
  ["module", "module", u => u.module],
  ["unit", "unit", u => u.unit],
  ["what", "class / concept", u => u.kind === "neuron" ? u.classes.join(", ") : u.concept],
  ["share", "share", u => u.share],
  ["suppress", "suppress: Δp own class", u => u.suppress],
  ["suppress_null", "null 2.5–97.5% (matched sets)", u => u.suppress_null],
  ["amplify", "amplify: Δp own class", u => u.amplify],
  ["amplify_null", "null 2.5–97.5% (matched sets)", u => u.amplify_null],
  ["f1", "test F1", u => u.f1],
];
const NUMERIC = new Set(["layer", "unit", "share", "suppress", "amplify", "f1"]);

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (Array.isArray(x)) return "[" + x.map(v => fmt(v, digits)).join(", ") + "]";
  return typeof x === "number" ? x.toFixed(digits) : String(x);
}

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function seedData() { return DATA.seeds[state.seed]; }

function sortValue(unit, key) {
  const v = COLUMNS.find(c => c[0] === key)[2](unit);
  if (Array.isArray(v)) return v[0];
  return v;
}

function visibleUnits() {
  const query = document.getElementById("filter").value.trim().toLowerCase();
  let units = seedData().units.filter(u => !query || searchText(u).includes(query));
  if (state.sort) {
    const key = state.sort, sign = state.desc ? -1 : 1;
    units = units.slice().sort((a, b) => {
      const x = sortValue(a, key), y = sortValue(b, key);
      if (x === null || x === undefined) return 1;  // missing values last, either way
      if (y === null || y === undefined) return -1;
      if (NUMERIC.has(key)) return sign * (x - y);
      return sign * String(x).localeCompare(String(y), undefined, { numeric: true });
    });
  }
  return units;
}

function searchText(u) {
  const what = u.kind === "neuron" ? "class " + u.classes.join(" class ") : u.concept;
  return (u.id + " " + u.kind + " " + what).toLowerCase();
}

function drawList() {
  const head = document.querySelector("#units thead");
  head.replaceChildren();
  const row = el("tr");
  for (const [key, label] of COLUMNS) {
    const th = el("th", { "data-key": key }, label);
    if (state.sort === key) th.className = state.desc ? "desc" : "asc";
    th.addEventListener("click", () => {
      state.desc = state.sort === key ? !state.desc : false;
      state.sort = key;
      drawList();
    });
    row.appendChild(th);
  }
  head.appendChild(row);
  const body = document.querySelector("#units tbody");
  body.replaceChildren();
  const units = visibleUnits();
  for (const u of units) {
    const tr = el("tr", { "data-id": u.id });
    if (u.id === state.selected) tr.className = "selected";
    for (const [key, , get] of COLUMNS) {
      const v = get(u);
      const text = key === "layer" || key === "unit" ? String(v) : fmt(v);
      tr.appendChild(el("td", { class: NUMERIC.has(key) ? "num" : "" }, text));
    }
    tr.addEventListener("click", () => select(u.id));
    body.appendChild(tr);
  }
  const all = seedData().units;
  document.getElementById("count").textContent = units.length + " of " + all.length + " units";
  const n = all.filter(u => u.kind === "neuron").length, f = all.length - n;
  document.getElementById("notes").textContent =
    n + " knowledge neurons, " + f + " SAE features in seed " + seedData().seed + "." +
    (n ? "" : " No knowledge neurons: the knowledge step did not run or found none.") +
    (f ? "" : " No SAE features: the SAE steps did not run or chose none.") +
    " Δp: the change in p(true class) when the unit's whole class set is scaled " +
    "(suppress ×0, amplify ×2); null: the same for random unit sets of matched " +
    "per-(layer, module) counts.";
}

function shade(q, rgb) {
  // q in [-255, 255]; white at q <= 0, `rgb` at 255; rounded so that any q > 0 is not white
  if (q <= 0) return "rgb(255, 255, 255)";
  const c = rgb.map(v => 255 - Math.ceil((255 - v) * q / 255));
  return "rgb(" + c.join(", ") + ")";
}

function drawExample(unit, seed, [index, kind, values]) {
  const seqs = seed.sequences;
  const seq = seqs.seq[index];
  const box = el("div", { class: "example", "data-seq-index": String(index), "data-kind": kind });
  const meta = el("div", { class: "meta" });
  meta.appendChild(el("b", {}, seqs.id[index]));
  meta.appendChild(document.createTextNode(
    " (" + kind + ") · true class " + seqs.true[index] + " · predicted "));
  meta.appendChild(el("span", { class: seqs.pred[index] === seqs.true[index] ? "" : "wrong" },
    String(seqs.pred[index])));
  meta.appendChild(document.createTextNode(" · " + seq.length + " residues"));
  box.appendChild(meta);
  const scroll = el("div", { class: "scroll" });
  const track = el("div", { class: "track" });
  const rgb = COLOURS[unit.kind];
  const motifs = seqs.motifs[index];
  for (let i = 0; i < seq.length; i++) {
    const q = values[i];
    const res = el("span", { class: "res", "data-q": String(q) }, seq[i]);
    res.style.backgroundColor = shade(q, rgb);
    if (q > 170) res.style.color = "#fff";
    const value = unit.peak === null ? 0 : q / 255 * unit.peak;
    let tip = seq[i] + (i + 1) + ": activation " + (q < 0 ? "negative, ≈ " : "≈ ") +
      value.toPrecision(3) + (q <= -255 ? " or below" : "");
    for (const [name, start, end, mkind] of motifs) {
      if (i >= start && i < end) tip += "\n" + name + " (" + mkind + ")";
    }
    res.title = tip;
    track.appendChild(res);
  }
  for (const [name, start, end, mkind] of motifs) {
    const m = el("div", {
      class: "motif", "data-start": String(start), "data-end": String(end),
      "data-kind": mkind, title: name + " (" + mkind + ") " + (start + 1) + "–" + end,
    });
    m.style.left = (start * CELL) + "px";
    m.style.width = ((end - start) * CELL) + "px";
    m.style.borderColor = COLOURS.motif[mkind] || "#000";
    track.appendChild(m);
  }
  scroll.appendChild(track);
  box.appendChild(scroll);
  return box;
}

function drawEffects(unit, seed, detail) {
  if (unit.kind !== "neuron") return;
  const table = el("table", { class: "effects" });
  const head = el("tr");
  head.appendChild(el("th", {}, "class set, intervention"));
  for (const c of seed.classes) head.appendChild(el("th", {}, "class " + c + " sequences"));
  head.appendChild(el("th", {}, "own-class null 2.5–97.5% (matched sets)"));
  table.appendChild(head);
  let rows = 0;
  for (const c of unit.classes) {
    const effects = seed.class_effects[String(c)];
    if (!effects) continue;
    for (const intervention of ["suppress", "amplify"]) {
      const tr = el("tr", { "data-class": String(c), "data-intervention": intervention });
      tr.appendChild(el("th", {}, "class " + c + ", " + intervention));
      effects[intervention].forEach((v, j) => {
        const td = el("td", { class: "num" }, fmt(v));
        if (seed.classes[j] === c) td.style.fontWeight = "bold";
        tr.appendChild(td);
      });
      tr.appendChild(el("td", { class: "num" }, fmt(effects[intervention + "_null"])));
      table.appendChild(tr);
      rows++;
    }
  }
  detail.appendChild(el("h3", {}, "Class effects: Δp(true class) by sequence class, of " +
    "scaling the whole class set (suppress ×0, amplify ×2)"));
  if (rows) detail.appendChild(table);
  else detail.appendChild(el("p", { class: "small" }, "No effects table for this seed."));
}

function drawDetail() {
  const detail = document.getElementById("detail");
  detail.replaceChildren();
  const seed = seedData();
  const unit = seed.units.find(u => u.id === state.selected);
  if (!unit) {
    detail.appendChild(el("p", { class: "hint" }, state.selected
      ? "No unit " + state.selected + " on this page." : "Choose a unit in the table."));
    return;
  }
  detail.appendChild(el("h2", { id: "unit-title" }, unit.id));
  const kv = el("table", { class: "kv" });
  const add = (k, v) => {
    const tr = el("tr"); tr.appendChild(el("th", {}, k)); tr.appendChild(el("td", {}, v));
    kv.appendChild(tr);
  };
  if (unit.kind === "neuron") {
    add("knowledge neuron of class", unit.classes.join(", "));
    add("share of the class's sequences", fmt(unit.share, 2));
    for (const m of seed.methods) {
      const s = unit.scores[m];
      add(m + " score (rank)", s ? fmt(s[0], 4) + " (" + s[1] + ")" : "–");
    }
  } else {
    add("SAE feature", "layer " + unit.layer + ", feature " + unit.unit);
    for (const [concept, f1] of unit.concepts) add("best for " + concept, "test F1 " + fmt(f1));
  }
  add("peak activation (shown sequences)", fmt(unit.peak, 4));
  detail.appendChild(kv);
  drawEffects(unit, seed, detail);
  detail.appendChild(el("h3", {}, "Top-activating and random validation sequences"));
  const legend = el("p", { class: "legend small" });
  for (const [kind, colour] of Object.entries(COLOURS.motif)) {
    const s = el("span"); const i = el("i"); i.style.borderColor = colour;
    s.appendChild(i); s.appendChild(document.createTextNode(kind + " motif"));
    legend.appendChild(s);
  }
  legend.appendChild(document.createTextNode("Shading: 0 or below white, the unit's maximum " +
    "over these sequences full colour (hover a residue for its value)."));
  detail.appendChild(legend);
  const list = el("div", { id: "examples" });
  for (const example of unit.examples) list.appendChild(drawExample(unit, seed, example));
  detail.appendChild(list);
}

function select(id) {
  state.selected = id;
  if (location.hash.slice(1) !== id) history.replaceState(null, "", "#" + id);
  for (const tr of document.querySelectorAll("#units tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  drawDetail();
}

function fromHash() {
  const id = decodeURIComponent(location.hash.slice(1));
  if (!id) return;
  const seed = Number(id.split("/")[0].replace("seed", ""));
  const index = DATA.seeds.findIndex(s => s.seed === seed);
  if (index >= 0 && index !== state.seed) {
    state.seed = index;
    document.getElementById("seed").value = String(index);
    drawList();
  }
  select(id);
}

function init() {
  const picker = document.getElementById("seed");
  DATA.seeds.forEach((s, i) => picker.appendChild(el("option", { value: String(i) },
    "seed " + s.seed)));
  picker.addEventListener("change", () => {
    state.seed = Number(picker.value);
    state.selected = null;
    history.replaceState(null, "", location.pathname + location.search);
    drawList();
    drawDetail();
  });
  document.getElementById("filter").addEventListener("input", drawList);
  window.addEventListener("hashchange", fromHash);
  if (!DATA.seeds.length) {
    document.getElementById("notes").textContent = "No seeds in this page.";
    return;
  }
  drawList();
  fromHash();
}

init();
"""
