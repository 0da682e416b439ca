"""One function per workflow step; Snakemake scripts call `run(snakemake, step)`.

Each step takes plain paths and a params dict, so it runs (and is tested) without Snakemake.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

# torch and the modules that need it are imported inside the steps that use them, so the data
# steps (and their failures) start in about a second.
from kneurons import io
from kneurons.data import readers, synthetic, tables
from kneurons.errors import UserError

TORCH_FREE_STEPS = {"download", "split", "baselines", "aggregate", "plots", "knowledge_summary"}

log = logging.getLogger("kneurons")


def run(smk, step) -> None:
    """Run `step` with the job's input/output/params; log to the job's log file.

    Progress bars and messages go to the log; a failure prints one line to the terminal.
    """
    log_path = smk.log[0] if smk.log else None
    stderr = sys.stderr
    handle = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed below
    if handle:
        sys.stderr = handle
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if step.__name__ not in TORCH_FREE_STEPS:
        from kneurons.model import esm as model

        model.set_threads(smk.threads)
    try:
        settings = dict(smk.params.settings) if "settings" in smk.params.keys() else {}
        step(smk.input, smk.output, settings, dict(smk.wildcards.items()))
    except UserError as err:
        # The user's to fix: one line in the log and on the console, no traceback.
        log.error("%s", err)
        print(f"error in {step.__name__}: {err}", file=stderr)
        sys.exit(1)
    except Exception as err:
        traceback.print_exc()  # ours to fix: keep the traceback in the log
        print(f"error in {step.__name__}: {type(err).__name__}: {err}", file=stderr)
        sys.exit(1)
    finally:
        if handle:
            sys.stderr = stderr
            handle.close()


# --- data -------------------------------------------------------------------------------


def download(input, output, params, wildcards) -> None:
    """Write the labelled, filtered sequences of the configured source and what was dropped."""
    source = params["source"]
    dropped: Counter = Counter()
    info: dict = {"source": source}
    if source == "synthetic":
        s = params["synthetic"]
        table = synthetic.generate_synthetic(
            n_per_class=s["n_per_class"],
            min_length=s["min_length"],
            max_length=s["max_length"],
            seed=s["seed"],
            classes=tuple(params["classes"]),
            mutation_rate=s["mutation_rate"],
            decoy_rate=s["decoy_rate"],
            motifs_per_sequence=tuple(s["motifs_per_sequence"]),
            balance_composition=s["balance_composition"],
        )
        name = "synthetic"
    elif source == "uniprot":
        from kneurons.data import uniprot

        u = params["uniprot"]
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "uniprot.tsv"
            info["uniprot"] = uniprot.download_uniprot(
                raw,
                base_url=u["url"],
                classes=tuple(params["classes"]),
                per_class=u["per_class"],
                min_length=params["min_length"],
                max_length=params["max_length"],
                seed=u["seed"],
                retries=u["retries"],
                timeout=u["timeout"],
                features=u.get("features", False),
            )
            table, dropped_read = readers.read_table(
                raw, motif_column=uniprot.MOTIFS_COLUMN if u.get("features") else ""
            )
        info["release"] = info["uniprot"]["release"]
        info["release_date"] = info["uniprot"]["release_date"]
        dropped.update(dropped_read)
        # features that could not be placed: counted like dropped rows, the entries are kept
        dropped.update(info["uniprot"]["features_dropped"])
        name = u["url"]
    else:
        t = params["table"]
        path = input.table
        table, dropped_read = readers.read_input(
            path,
            id_column=t["id_column"],
            ec_column=t["ec_column"],
            sequence_column=t["sequence_column"],
            motif_column=t.get("motif_column", ""),
        )
        dropped.update(dropped_read)
        info["table"] = str(Path(path).resolve())
        name = path
    table, dropped_prepare = tables.prepare_table(
        table,
        params["classes"],
        params["min_length"],
        params["max_length"],
        nonstandard=params["nonstandard"],
        source=name,
        labelled=source == "synthetic",
    )
    dropped.update(dropped_prepare)
    if source == "table":
        t = params["table"]
        table, dropped_cap = tables.cap_per_class(table, t["per_class"], t["seed"])
        dropped.update(dropped_cap)
        info["per_class"], info["seed"] = t["per_class"], t["seed"]
    info["dropped"] = dict(dropped)
    info["class_counts"] = {
        str(k): int(v) for k, v in table["ec_class"].value_counts().sort_index().items()
    }
    info["n_sequences"] = len(table)
    for line in tables.summarize_dropped(dropped).splitlines():
        log.info("dropped: %s", line)
    log.info("kept %d sequences; per class %s", len(table), info["class_counts"])
    io.write_json(info, output.info)
    io.write_tsv(table, output.table)


def split(input, output, params, wildcards) -> None:
    """Write the train/validation/test split (`split.method`: random, stratified by class; or
    cluster, whole MMseqs2 clusters per split) and its report: counts per split and class, the
    clusters, and how close each test sequence is to the training set."""
    from kneurons.data import clusters

    table = tables.read_labelled(input.table)
    fractions = {k: params[k] for k in ("train", "validation", "test")}
    method = params["method"]
    report: dict = {"method": method, "seed": params["seed"], "fractions": fractions}
    hint = "add sequences or remove the class from data.classes"
    try:
        if method == "cluster":
            report.update(identity=params["identity"], coverage=params["coverage"])
            cluster_ids = clusters.cluster_sequences(
                table, params["identity"], params["coverage"], threads=1
            )
            report["clusters"] = clusters.cluster_summary(cluster_ids)
            log.info(
                "%d clusters at identity %g, coverage %g: %d singletons, largest %d",
                report["clusters"]["n_clusters"],
                params["identity"],
                params["coverage"],
                report["clusters"]["singletons"],
                report["clusters"]["largest"],
            )
            hint = f"raise split.identity, {hint}, or use split.method random"
            result = clusters.cluster_split(table, fractions, params["seed"], cluster_ids)
        else:
            report["clusters"] = None  # a random split does not cluster
            result = tables.stratified_split(table, fractions, seed=params["seed"])
    except tables.DataError as err:
        raise tables.DataError(f"{input.table}: {err}; {hint}") from None
    counts = result.groupby(["split", "ec_class"]).size().unstack(fill_value=0)
    log.info("split sizes per class:\n%s", counts.to_string())
    report["counts"] = {
        s: {str(c): int(n) for c, n in counts.loc[s].items()} if s in counts.index else {}
        for s in tables.SPLITS
    }
    report["mmseqs_version"] = clusters.mmseqs_version()
    report["test_max_identity_to_train"] = None
    if not params.get("identity_report", True):
        log.info("test-to-train identity not measured: synthetic sequences share no homology")
    else:
        try:
            identity = clusters.max_identity_to_train(result, threads=1)
        except clusters.MMseqsMissing as err:
            if method == "cluster":
                raise
            # a random split needs no MMseqs2: report what cannot be measured, do not fail
            log.warning("%s; the report has no identity of test to train", err)
        else:
            report["test_max_identity_to_train"] = clusters.identity_summary(identity)
            log.info(
                "test max identity to train: %s",
                clusters.format_identity_summary(report["test_max_identity_to_train"]),
            )
    io.write_tsv(result, output.split)
    io.write_json(report, output.report)


# --- model ------------------------------------------------------------------------------


def prepare_model(input, output, params, wildcards) -> None:
    """Build the tiny ESM-2 or fetch a release checkpoint, and check that it loads."""
    from kneurons.model import esm as model

    name = params["name"]
    if name == "tiny":
        t = params["tiny"]
        # each seed gets its own backbone initialisation
        esm2 = model.build_tiny_esm2(
            t["num_layers"], t["embed_dim"], t["attention_heads"], int(wildcards["seed"])
        )
        log.info("built a tiny ESM-2: %s", model.esm_config(esm2))
        model.save_esm_checkpoint(esm2, output.checkpoint)
    else:
        from kneurons.model.release import fetch_esm_checkpoint

        fetch_esm_checkpoint(name, Path(output.checkpoint).parent, base_url=params["url"])
    esm2 = model.load_esm_checkpoint(output.checkpoint)
    log.info(
        "%s loads: %d parameters", output.checkpoint, sum(p.numel() for p in esm2.parameters())
    )


def convert_hf_model(input, output, params, wildcards) -> None:
    """Write a Hugging Face ESM-2 directory as a fair-esm checkpoint, and check that it loads."""
    from kneurons.model import esm as model
    from kneurons.model import hf_checkpoint

    report = hf_checkpoint.convert_hf_esm2(Path(input.config).parent, output.checkpoint)
    log.info("dropped on purpose (checked): %s", ", ".join(report["dropped"]) or "nothing")
    esm2 = model.load_esm_checkpoint(output.checkpoint)
    log.info(
        "%s loads: %d parameters", output.checkpoint, sum(p.numel() for p in esm2.parameters())
    )


def finetune(input, output, params, wildcards) -> None:
    """Fine-tune ESM-2 plus a head for one seed; write the model and its metrics."""
    from kneurons.model import esm as model
    from kneurons.model import train

    device = model.pick_device(params["device"])
    classifier, classes, metrics = train.finetune(
        input.checkpoint,
        tables.read_labelled(input.split),
        seed=int(wildcards["seed"]),
        epochs=params["epochs"],
        lr=params["lr"],
        head_lr=params["head_lr"],
        weight_decay=params["weight_decay"],
        batch_size=params["batch_size"],
        max_length=params["max_length"],
        device=device,
        class_weights_mode=params["class_weights"],
        max_tokens=params["max_tokens"],
        precision=params["precision"],
        train_layers=params["train_layers"],
    )
    model.save_classifier(classifier, classes, params["max_length"], output.model)
    io.write_json(metrics, output.metrics)


# --- neurons ----------------------------------------------------------------------------


def score(input, output, params, wildcards) -> None:
    """Scores of one method (`kneurons.methods`): one layer (per-layer methods) or all."""
    from kneurons.attribution import engine, methods
    from kneurons.model import esm as model

    method = methods.get(wildcards["method"])
    seed = int(wildcards["seed"])
    classifier, meta = model.load_classifier(
        input.model, model.pick_device(params.get("device", "cpu"))
    )
    sequences, labels = [], []
    if method.needs_model_pass:
        sequences, labels = engine.scoring_subset(
            tables.read_labelled(input.split), meta["classes"], params["max_sequences"], seed
        )
    if "layer" in wildcards:
        layers = [int(wildcards["layer"])]
    else:
        layers = list(range(classifier.num_layers))
    log.info(
        "%s scores of layer(s) %s on %d validation sequences",
        method.name,
        ", ".join(map(str, layers)),
        len(sequences),
    )
    # per-sequence values (for the per-class knowledge neurons) come from the same passes;
    # the scores are their mean
    per_sequence = method.per_sequence and params.get("granularity", "unit") == "unit"
    per_sequence = per_sequence and "per_sequence" in output.keys()
    inputs = methods.ScoringInputs(
        sequences,
        labels,
        layers,
        params["modules"],
        seed,
        meta["max_length"],
        {**params, "per_sequence": per_sequence},
    )
    # bf16 is opt-in (default fp32): on the tiny model it moved IG scores by 0.4-0.5% (relative
    # L2) and 1% of the top-10% kept set; on large models and long sequences it is untested.
    precision = params.get("precision", "fp32")
    if precision != "fp32":
        log.info("scoring in %s autocast", precision)
    device = next(classifier.parameters()).device
    with model.autocast(device, precision):
        scores = method.score(classifier, inputs)
    if "per_sequence" in output.keys():
        rows = np.zeros((len(sequences), 0), dtype=np.float32)
        if per_sequence:
            rows = np.concatenate([v.float().numpy() for v in scores.values()], axis=1)
            scores = {key: values.mean(0) for key, values in scores.items()}
        with io.atomic_path(output.per_sequence) as tmp, open(tmp, "wb") as handle:
            np.save(handle, rows)
    io.write_tsv(engine.scores_frame(scores), output.scores)


def merge_scores(input, output, params, wildcards) -> None:
    """Concatenate per-layer score tables (and their per-sequence arrays) in layer order."""
    rows = np.concatenate([np.load(path) for path in input.per_sequence], axis=1)
    with io.atomic_path(output.per_sequence) as tmp, open(tmp, "wb") as handle:
        np.save(handle, rows)
    io.write_tsv(
        pd.concat([pd.read_csv(p, sep="\t") for p in input.layers], ignore_index=True),
        output.scores,
    )


def evaluate(input, output, params, wildcards) -> None:
    """Every pruned model of one seed (methods, random and matched-random controls,
    within-module pruning) on the test split, in one process: `kneurons.evaluation`."""
    from kneurons.analysis import evaluation
    from kneurons.model import esm as model

    seed = int(wildcards["seed"])
    device = model.pick_device(params["device"])
    classifier, meta = model.load_classifier(input.model, device)
    scores = {
        method: pd.read_csv(path, sep="\t")
        for method, path in zip(params["methods"], input.scores, strict=True)
    }
    settings = evaluation.SweepSettings(
        ratios=tuple(params["retention_ratios"]),
        random_draws=params["random_draws"],
        control_draws=params["control_draws"],
        module_ratios=tuple(params["module_ratios"]),
        normalize=params["normalize"],
        bootstrap=params["bootstrap"],
        batch_size=params["batch_size"],
    )
    test = tables.read_labelled(input.split).query("split == 'test'")
    log.info("evaluating on %d test sequences (%s)", len(test), device)
    results, kept = evaluation.evaluate_seed(
        classifier,
        test,
        meta["classes"],
        scores,
        settings,
        seed=seed,
        max_length=meta["max_length"],
    )
    granularity = "weight" if "input" in next(iter(scores.values())).columns else "unit"
    io.write_tsv(results.assign(granularity=granularity), output.results)
    io.write_tsv(kept, output.kept)


def baselines(input, output, params, wildcards) -> None:
    """Majority-class and composition baselines of one split, with bootstrap intervals."""
    from kneurons.analysis import baselines as baseline_models
    from kneurons.analysis import stats

    split_table = tables.read_labelled(input.split)
    test = split_table[split_table["split"] == "test"]
    result = {}
    for name, fit in (
        ("majority", baseline_models.majority_baseline),
        ("composition", baseline_models.composition_baseline),
    ):
        if name == "majority":
            metrics = fit(split_table)
        else:
            metrics = fit(split_table, sorted(split_table["ec_class"].unique()), seed=0)
        correct = np.asarray(metrics.pop("correct"), dtype=float)
        low, high = stats.bootstrap_ci(correct, n_boot=params["bootstrap"], seed=0)
        b_low, b_high = stats.bootstrap_balanced_ci(
            correct, test["ec_class"].to_numpy(), n_boot=params["bootstrap"], seed=0
        )
        result[name] = {
            **metrics,
            "ci_low": low,
            "ci_high": high,
            "balanced_ci_low": b_low,
            "balanced_ci_high": b_high,
        }
        log.info(
            "%s baseline: test accuracy %.3f [%.3f, %.3f]", name, metrics["accuracy"], low, high
        )
    result["n_test"] = len(test)
    result["class_counts"] = {
        str(c): int(n) for c, n in test["ec_class"].value_counts().sort_index().items()
    }
    result["n_classes"] = int(split_table["ec_class"].nunique())
    io.write_json(result, output.baselines)


def knowledge(input, output, params, wildcards) -> None:
    """One seed's knowledge neurons per class, their suppress/amplify effects against matched
    random units, and their motif AUROCs (`kneurons.knowledge`)."""
    from kneurons.analysis import knowledge
    from kneurons.attribution import engine
    from kneurons.model import esm as model

    seed = int(wildcards["seed"])
    classifier, meta = model.load_classifier(input.model, model.pick_device(params["device"]))
    classes, max_length = meta["classes"], meta["max_length"]
    split_table = tables.read_labelled(input.split)
    # the scoring subset the attributions were computed on (same seed, same rule)
    sequences, labels = engine.scoring_subset(split_table, classes, params["max_sequences"], seed)
    units = pd.read_csv(input.scores, sep="\t")[["layer", "module", "unit"]]
    attributions = np.load(input.per_sequence)
    neurons = knowledge.knowledge_neurons(
        attributions,
        [classes[label] for label in labels],
        classes,
        threshold=params["threshold"],
        share=params["share"],
        max_count=params["max_count"] or None,
        units=units,
    )
    counts = neurons.groupby("class").size().reindex(classes, fill_value=0)
    log.info("knowledge neurons per class: %s", counts.to_dict())
    test = knowledge.class_subset(
        split_table[split_table["split"] == "test"], params["test_sequences"], seed
    )
    effects = knowledge.effects_with_controls(
        classifier,
        test,
        classes,
        neurons,
        units,
        matched_sets=params["matched_sets"],
        seed=seed,
        max_length=max_length,
    )
    motifs = knowledge.motif_table(
        classifier,
        split_table[split_table["split"] == "validation"],
        neurons,
        units,
        seed=seed,
        max_length=max_length,
    )
    io.write_tsv(neurons, output.neurons)
    io.write_tsv(effects, output.effects)
    io.write_tsv(motifs, output.motifs)


def knowledge_summary(input, output, params, wildcards) -> None:
    """Across seeds: specificity with tests, motif detectors, the summary page and figures."""
    from kneurons.reporting import knowledge as knowledge_report

    knowledge_report.write_outputs(
        list(input.neurons),
        list(input.effects),
        list(input.motifs),
        params["seeds"],
        {key: output[key] for key in knowledge_report.OUTPUT_KEYS},
        params,
    )


# --- report -----------------------------------------------------------------------------


def aggregate(input, output, params, wildcards) -> None:
    """Tables with intervals and tests, and the markdown summary, over seeds (`report`)."""
    from kneurons.reporting import pruning

    pruning.write_outputs(
        list(input.finetune),
        list(input.results),
        list(input.kept),
        list(input.baselines),
        {key: output[key] for key in pruning.OUTPUT_KEYS},
    )


def plots(input, output, params, wildcards) -> None:
    """The figures, PNG and PDF."""
    from kneurons.reporting import plots

    plots.make_all_plots(input, Path(output[0]).parent, params)
