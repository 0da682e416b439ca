"""The download step: the labelled, filtered sequences of the configured source.

Each source is one module with `load(settings, input) -> tables.Loaded` (`SOURCES`); the rule hashes
only the active source's module, so editing the UniProt client leaves a synthetic run alone.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter

from kneurons import io
from kneurons.data import tables
from kneurons.settings import DownloadSettings

log = logging.getLogger(__name__)

# data.source -> the module (below kneurons) whose `load` reads it
SOURCES = {
    "synthetic": "data.synthetic",
    "uniprot": "data.uniprot",
    "table": "data.readers",
}


def download(input, output, settings: DownloadSettings, wildcards) -> None:
    """Write the labelled, filtered sequences of the configured source and what was dropped."""
    source = importlib.import_module(f"kneurons.{SOURCES[settings.source]}")
    loaded = source.load(settings, input)
    dropped = Counter(loaded.dropped)
    info = {"source": settings.source, **loaded.info}
    table, dropped_prepare = tables.prepare_table(
        loaded.table,
        settings.classes,
        settings.min_length,
        settings.max_length,
        nonstandard=settings.nonstandard,
        source=loaded.name,
        labelled=settings.source == "synthetic",
    )
    dropped.update(dropped_prepare)
    if settings.table is not None:
        table, dropped_cap = tables.cap_per_class(
            table, settings.table.per_class, settings.table.seed
        )
        dropped.update(dropped_cap)
        info["per_class"], info["seed"] = settings.table.per_class, settings.table.seed
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
