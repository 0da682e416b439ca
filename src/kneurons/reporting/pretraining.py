"""The pretraining report: did the masked language model learn the corpus, and the motif
grammar in particular? Masked-token accuracy and perplexity on the held-out corpus, by region
(residues inside planted true, mutated and decoy motifs, background, the first residue),
against two baselines that know no grammar: the unigram model (the train corpus's residue
frequencies) and the sequence's own composition (the frequencies of its unmasked residues),
with 95% percentile-bootstrap intervals over held-out sequences; the training curve.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kneurons.analysis.stats import percentile_interval
from kneurons.io import write_atomic, write_tsv
from kneurons.reporting.format import md_table
from kneurons.reporting.style import merged_style, rc_params, save_figure
from kneurons.settings import PretrainReportSettings

log = logging.getLogger(__name__)

REGIONS = ("all", "motif", "true", "mutated", "decoy", "background", "start")
TABLE_COLUMNS = ["region", "predictor", "n_positions", "n_sequences", "metric", "value"]
TABLE_COLUMNS += ["ci_low", "ci_high"]
INTERVAL = "95% percentile bootstrap over held-out sequences"


def unigram(train_sequences) -> pd.Series:
    """Residue frequencies of the train corpus (the unigram model), largest first."""
    counts = pd.Series(list("".join(train_sequences))).value_counts()
    return counts / counts.sum()


def _in_region(predictions: pd.DataFrame, region: str) -> pd.DataFrame:
    if region == "all":
        return predictions
    if region == "motif":
        return predictions[~predictions["region"].isin(["background", "start"])]
    return predictions[predictions["region"] == region]


PREDICTORS = {
    "model": ("correct", "nll"),
    "unigram": ("unigram_correct", "unigram_nll"),
    "composition": ("composition_correct", "composition_nll"),
}


def _composition_columns(predictions: pd.DataFrame, sequences, frequencies: pd.Series):
    """Per prediction: is the most frequent unmasked residue of its sequence the target, and
    -log p(target) under that sequence's unmasked composition (one pseudo-residue spread by
    the unigram frequencies, so no residue has probability 0)."""
    residues = list(frequencies.index)
    position = {r: j for j, r in enumerate(residues)}
    prior = frequencies.to_numpy()
    correct = np.zeros(len(predictions))
    nll = np.zeros(len(predictions))
    for i, rows in predictions.groupby("sequence").indices.items():
        counts = np.zeros(len(residues))
        for residue in sequences[i]:
            if residue in position:  # a residue the train corpus never had: no count
                counts[position[residue]] += 1
        for residue in predictions["target"].to_numpy()[rows]:  # the masked ones are unseen
            counts[position[residue]] -= 1
        p = (counts + prior) / (counts.sum() + 1)
        targets = [position[r] for r in predictions["target"].to_numpy()[rows]]
        correct[rows] = np.asarray(targets) == int(np.argmax(p))
        nll[rows] = -np.log(p[targets])
    return correct, nll


def region_metrics(
    predictions: pd.DataFrame,
    frequencies: pd.Series,
    sequences=None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Masked accuracy and perplexity (exp of the mean negative log-likelihood) per region, for
    the model, the unigram baseline (predicts the most frequent residue; log p of a residue is
    its log frequency) and, given the held-out `sequences` (indexed by the `sequence` column),
    the composition baseline (`_composition_columns`); each with a percentile-bootstrap
    interval over sequences (the held-out sequences resampled with replacement, every masked
    position of a drawn sequence counted)."""
    frequencies = frequencies.clip(lower=1e-12)
    predictions = predictions.reset_index(drop=True).assign(
        correct=(predictions["predicted"] == predictions["target"]).astype(float).to_numpy(),
        nll=-predictions["log_p"].to_numpy(),
        unigram_correct=(predictions["target"] == frequencies.index[0]).astype(float).to_numpy(),
        unigram_nll=-np.log(predictions["target"].map(frequencies).fillna(1e-12)).to_numpy(),
    )
    predictors = dict(PREDICTORS)
    if sequences is None:
        del predictors["composition"]
    else:
        composition = _composition_columns(predictions, sequences, frequencies)
        predictions["composition_correct"], predictions["composition_nll"] = composition
    values = [column for pair in predictors.values() for column in pair]
    ids = np.sort(predictions["sequence"].unique())
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    rows = []
    for region in REGIONS:
        part = _in_region(predictions, region)
        if part.empty:
            continue
        sums = part.groupby("sequence")[values].sum()
        sums["n"] = part.groupby("sequence").size()
        sums = sums.reindex(ids, fill_value=0.0)
        totals = sums.to_numpy()[draws].sum(axis=1)  # (n_boot, columns)
        n_resampled = np.maximum(totals[:, -1], 1)
        full = sums.sum()
        for predictor, (correct, nll) in predictors.items():
            j_correct, j_nll = sums.columns.get_loc(correct), sums.columns.get_loc(nll)
            for metric, value, samples in (
                ("accuracy", full[correct] / full["n"], totals[:, j_correct] / n_resampled),
                (
                    "perplexity",
                    float(np.exp(full[nll] / full["n"])),
                    np.exp(totals[:, j_nll] / n_resampled),
                ),
            ):
                low, high = percentile_interval(samples)
                rows.append(
                    {
                        "region": region,
                        "predictor": predictor,
                        "n_positions": int(full["n"]),
                        "n_sequences": int((sums["n"] > 0).sum()),
                        "metric": metric,
                        "value": float(value),
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def summary_markdown(table: pd.DataFrame, history: pd.DataFrame, corpus: Mapping) -> str:
    """The pretraining page: corpus, curve endpoints, and the region table."""

    def cell(region, predictor, metric):
        row = table[
            (table["region"] == region)
            & (table["predictor"] == predictor)
            & (table["metric"] == metric)
        ]
        if row.empty:
            return "n/a"
        r = row.iloc[0]
        return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    first, last = history.iloc[0], history.iloc[-1]
    lines = [
        "# Masked-language-model pretraining",
        "",
        f"Corpus: {corpus['train']} train and {corpus['heldout']} held-out sequences "
        f"({corpus['pool']} drawn; {corpus['dropped']['exact']} identical to and "
        f"{corpus['dropped']['window']} sharing a {corpus['overlap_window']}-residue window "
        "with a labelled sequence were dropped).",
        f"Training: masked loss {first['loss']:.3f} (step {int(first['step'])}) -> "
        f"{last['loss']:.3f} (step {int(last['step'])}); masked accuracy "
        f"{first['masked_accuracy']:.3f} -> {last['masked_accuracy']:.3f}.",
        "",
        f"Held-out masked tokens, value [{INTERVAL}]. Baselines without grammar: the unigram "
        "model predicts the train corpus's most frequent residue and scores each residue by its "
        "frequency; the composition model predicts the most frequent unmasked residue of the "
        "same sequence and scores residues by that sequence's unmasked composition.",
        "",
    ]
    rows = []
    for region in REGIONS:
        if table[table["region"] == region].empty:
            continue
        n = table[table["region"] == region]["n_positions"].iloc[0]
        predictors = [p for p in PREDICTORS if p in set(table["predictor"])]
        rows.append(
            [region, str(n)]
            + [cell(region, p, "accuracy") for p in predictors]
            + [cell(region, p, "perplexity") for p in predictors]
        )
    predictors = [p for p in PREDICTORS if p in set(table["predictor"])]
    header = ["region", "positions"] + [f"accuracy: {p}" for p in predictors]
    header += [f"perplexity: {p}" for p in predictors]
    lines += md_table(header, rows)
    lines += [
        "",
        "Regions: residues inside planted motifs (`true`, `mutated`, `decoy`; `motif` is any "
        "of them), the first residue (`start`, nearly always M) and the rest (`background`); "
        "every chosen position is masked (none left unchanged). A model that learnt the motif "
        "grammar gains more over the baselines inside motifs than in the background; a gain "
        "in the background alone is composition, not grammar.",
    ]
    return "\n".join(lines) + "\n"


def plot_pretraining(history: pd.DataFrame, table: pd.DataFrame, style, png, pdf) -> None:
    """Training curve (masked loss and accuracy by step) and held-out accuracy by region."""
    st = merged_style(style)
    import matplotlib

    with matplotlib.rc_context(rc_params(st)):
        fig = Figure(figsize=(st["figure_width"], st["figure_width"] * 0.38))
        curve, bars = fig.subplots(1, 2)
        curve.plot(history["step"], history["loss"], color="#1f77b4", label="masked loss")
        if len(history) > 2:  # the first window (warm-up) is far above the rest: off the axis
            rest = history["loss"].iloc[1:]
            curve.set_ylim(rest.min() - 0.05, rest.max() + 0.05)
            curve.set_title(
                f"training (steps 1-{int(history['step'].iloc[0])}: loss "
                f"{history['loss'].iloc[0]:.2f}, above the axis)"
            )
        else:
            curve.set_title("training")
        curve.set_xlabel("step")
        curve.set_ylabel("masked cross-entropy (train batches)", color="#1f77b4")
        twin = curve.twinx()
        twin.plot(history["step"], history["masked_accuracy"], color="#ff7f0e", label="accuracy")
        twin.set_ylabel("masked accuracy (train batches)", color="#ff7f0e")
        accuracy = table[table["metric"] == "accuracy"]
        # the first residue is almost always M: in the table, not worth the axis here
        regions = [r for r in REGIONS if r in set(accuracy["region"]) and r != "start"]
        x = np.arange(len(regions))
        colors = {"model": "#1f77b4", "unigram": "#7f7f7f", "composition": "#bcbd22"}
        predictors = [p for p in PREDICTORS if p in set(accuracy["predictor"])]
        width = 0.8 / len(predictors)
        for k, predictor in enumerate(predictors):
            offset = (k - (len(predictors) - 1) / 2) * width
            rows = accuracy[accuracy["predictor"] == predictor].set_index("region").loc[regions]
            bars.bar(x + offset, rows["value"], width, color=colors[predictor], label=predictor)
            bars.errorbar(
                x + offset,
                rows["value"],
                yerr=[rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]],
                fmt="none",
                color="black",
                capsize=2,
            )
        bars.set_xticks(x, regions, rotation=30, ha="right")
        bars.set_ylabel("held-out masked accuracy")
        bars.set_title("held-out, by region (95% bootstrap over sequences)")
        bars.legend()
        fig.tight_layout()
        save_figure(fig, png, pdf, st["dpi"])


def pretrain_report(input, output, settings: PretrainReportSettings, wildcards) -> None:
    """The pretrain_report step: region table, page and figure of one pretrained model."""
    predictions = pd.read_csv(input.predictions, sep="\t", keep_default_na=False)
    history = pd.read_csv(input.history, sep="\t")
    corpus = pd.read_csv(input.corpus, sep="\t", keep_default_na=False)
    report = json.loads(Path(input.corpus_report).read_text())
    frequencies = unigram(corpus.loc[corpus["part"] == "train", "sequence"])
    heldout = list(corpus.loc[corpus["part"] == "heldout", "sequence"])
    table = region_metrics(predictions, frequencies, heldout)
    write_tsv(table, output.table)
    write_atomic(
        output.summary, lambda tmp: tmp.write_text(summary_markdown(table, history, report))
    )
    style = {
        "dpi": settings.dpi,
        "font_size": settings.font_size,
        "figure_width": settings.figure_width,
    }
    plot_pretraining(history, table, style, output.png, output.pdf)
