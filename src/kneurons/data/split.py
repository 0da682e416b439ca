"""The split step: train / validation / test, and a report of how close test is to train."""

from __future__ import annotations

import logging

from kneurons import io
from kneurons.data import clusters, tables
from kneurons.settings import SplitSettings

log = logging.getLogger(__name__)


def split(input, output, settings: SplitSettings, wildcards) -> None:
    """Write the train/validation/test split (`split.method`: random, stratified by class; or
    cluster, whole MMseqs2 clusters per split) and its report: counts per split and class, the
    clusters, and how close each test sequence is to the training set."""
    table = tables.read_labelled(input.table)
    fractions = {k: getattr(settings, k) for k in ("train", "validation", "test")}
    method = settings.method
    report: dict = {"method": method, "seed": settings.seed, "fractions": fractions}
    hint = "add sequences or remove the class from data.classes"
    try:
        if method == "cluster":
            report.update(identity=settings.identity, coverage=settings.coverage)
            cluster_ids = clusters.cluster_sequences(
                table, settings.identity, settings.coverage, threads=1
            )
            report["clusters"] = clusters.cluster_summary(cluster_ids)
            log.info(
                "%d clusters at identity %g, coverage %g: %d singletons, largest %d",
                report["clusters"]["n_clusters"],
                settings.identity,
                settings.coverage,
                report["clusters"]["singletons"],
                report["clusters"]["largest"],
            )
            hint = f"raise split.identity, {hint}, or use split.method random"
            result = clusters.cluster_split(table, fractions, settings.seed, cluster_ids)
        else:
            report["clusters"] = None  # a random split does not cluster
            result = tables.stratified_split(table, fractions, seed=settings.seed)
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
    if not settings.identity_report:
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
