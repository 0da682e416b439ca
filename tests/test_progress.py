"""Progress: a bar on a terminal only; in a log file, a few lines with rates and ETA."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import torch

from kneurons import progress as progress_module
from kneurons.model.esm import frozen
from kneurons.progress import format_seconds, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_lines_not_a_bar(caplog):
    stream = io.StringIO()
    batches = [list(range(4))] * 5
    with caplog.at_level(logging.INFO, logger="kneurons"):
        assert list(progress(batches, "IG layer 2", interval=0, stream=stream)) == batches
    assert stream.getvalue() == ""  # no carriage-return bar in a log file
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("IG layer 2: 4/20 sequences, ") and "sequences/s, ETA" in lines[0]
    assert len(lines) == 5  # 4 progress lines (not after the last batch) + the summary
    assert lines[-1].startswith("IG layer 2: 20 sequences in ") and "sequences/s" in lines[-1]


def test_long_interval_gives_only_the_summary(caplog):
    with caplog.at_level(logging.INFO, logger="kneurons"):
        list(progress([[1, 2]] * 50, "activation", stream=io.StringIO()))
        list(progress([[1, 2]] * 50, "epoch 1", summary=False, stream=io.StringIO()))
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        "activation: 100 sequences"
    ]


def test_terminal_gets_a_live_bar(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="kneurons"):
        list(progress([[1, 2]] * 3, "epoch 1", interval=0, summary=False, stream=terminal))
    assert "epoch 1" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert caplog.records == []


def test_format_seconds():
    assert [format_seconds(s) for s in (3.14, 65, 7325)] == ["3.1 s", "1 min 05 s", "2 h 02 min"]
    assert progress_module.log.name == "kneurons"


def test_frozen_restores_requires_grad(tiny_classifier):
    tiny_classifier.head.weight.requires_grad_(False)  # a caller's own choice survives too
    before = [p.requires_grad for p in tiny_classifier.parameters()]
    with frozen(tiny_classifier):
        assert not any(p.requires_grad for p in tiny_classifier.parameters())
    assert [p.requires_grad for p in tiny_classifier.parameters()] == before
    try:
        with frozen(tiny_classifier):
            raise RuntimeError("a failing step")
    except RuntimeError:
        pass
    assert [p.requires_grad for p in tiny_classifier.parameters()] == before


def test_cuda_determinism_is_requested():
    code = (
        "import os, torch; from kneurons.model.esm import request_determinism; "
        "request_determinism(); "
        "print(torch.are_deterministic_algorithms_enabled(), "
        "torch.is_deterministic_algorithms_warn_only_enabled(), "
        "torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, "
        "os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "False", ":4096:8"]
    assert torch.are_deterministic_algorithms_enabled() is False  # this process untouched
