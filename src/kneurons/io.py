"""Atomic writes (a reader never sees a half-written file, a failed write leaves nothing), and
reading back JSON and torch checkpoints (a bad checkpoint is a one-line CheckpointError)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from kneurons.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read (cut short, not torch's format) or is not what it
    should be (a fair-esm checkpoint, a saved classifier); one line naming the file."""


def describe(err: BaseException, limit: int = 300) -> str:
    """`err` as one line: its type and message, whitespace collapsed, at most `limit` chars."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}"[:limit] if message else type(err).__name__


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates the file 0600: give it the mode a plain open() would (shared folders)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`; rename it into place if it succeeds."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_tsv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write `df` as a tab-separated table without the index, atomically."""
    write_atomic(path, lambda tmp: df.to_csv(tmp, sep="\t", index=False))


def write_json(obj, path: str | os.PathLike) -> None:
    """Write `obj` as indented JSON with sorted keys, atomically."""

    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

    write_atomic(path, dump)


def read_json(path: str | os.PathLike):
    """The JSON document in `path`."""
    return json.loads(Path(path).read_text())


def load_checkpoint(path: str | os.PathLike, what: str = "checkpoint"):
    """torch.load with weights_only (no code runs from the file), on the CPU; fair-esm
    checkpoints also hold an argparse.Namespace, which is allowed. A file torch cannot read
    raises CheckpointError "{path}: not a readable {what} (...)"."""
    import argparse

    import torch  # lazy: the data steps should not pay for importing torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file (even KeyError, EOFError)
        raise CheckpointError(f"{path}: not a readable {what} ({describe(err)})") from None
