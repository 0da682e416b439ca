"""Progress of long loops: a live bar on a terminal, a few summary lines in a log file."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized

from tqdm import tqdm

log = logging.getLogger("kneurons")


def format_seconds(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress(
    batches: Iterable[Sized],
    desc: str,
    *,
    interval: float = 30.0,
    summary: bool = True,
    stream=None,
) -> Iterator:
    """Yield `batches` (sized chunks of sequences), reporting progress in sequences.

    On a terminal: a live tqdm bar. Elsewhere (a job's log file): a line at most every
    `interval` seconds with sequences/s and the ETA, and, if `summary`, one line at the end;
    carriage-return bar updates would bloat the log and bury the summary lines.
    """
    batches = list(batches)
    total = sum(len(batch) for batch in batches)
    stream = sys.stderr if stream is None else stream
    bar = None
    if getattr(stream, "isatty", lambda: False)():
        bar = tqdm(total=total, desc=desc, unit="seq", leave=False, file=stream)
    start = last = time.monotonic()
    done = 0
    try:
        for batch in batches:
            yield batch
            done += len(batch)
            now = time.monotonic()
            if bar is not None:
                bar.update(len(batch))
            elif now - last >= interval and done < total:
                rate = done / (now - start)
                log.info(
                    "%s: %d/%d sequences, %.1f sequences/s, ETA %s",
                    desc,
                    done,
                    total,
                    rate,
                    format_seconds((total - done) / rate),
                )
                last = now
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - start
    if summary:
        log.info(
            "%s: %d sequences in %s (%.1f sequences/s)",
            desc,
            done,
            format_seconds(elapsed),
            done / elapsed if elapsed > 0 else float("inf"),
        )


def model_progress(total: int, desc: str, *, every: int = 25):
    """An `on_pass(done)` callback for `train.predict_proba_models`: a log line each time
    another `every` of the `total` pruned models are done (and at the end), with models/s and
    the ETA."""
    start = time.monotonic()
    reported = [0]

    def on_pass(done: int) -> None:
        if done - reported[0] < every and done < total:
            return
        reported[0] = done
        elapsed = max(time.monotonic() - start, 1e-9)
        log.info(
            "%s: %d/%d models, %.1f models/s, ETA %s",
            desc,
            done,
            total,
            done / elapsed,
            format_seconds(elapsed / done * (total - done)),
        )

    return on_pass
