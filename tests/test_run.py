"""workflow.run: what a failing step leaves in the log and on the console."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from snakemake.iocontainers import Namedlist

from kneurons.data.http import DownloadError
from kneurons.data.tables import DataError
from kneurons.workflow import run


def job(tmp_path, settings=None):
    params = Namedlist(fromdict={"settings": settings} if settings is not None else {})
    return SimpleNamespace(
        log=[str(tmp_path / "step.log")],
        input=Namedlist(),
        output=Namedlist(),
        params=params,
        wildcards=Namedlist(),
        threads=1,
    )


@pytest.mark.parametrize(
    "error",
    [
        DataError("mine.tsv: row 3 (id P3): malformed EC number '1.x'"),
        DownloadError("GET http://127.0.0.1:9/x failed after 6 attempts; last error: HTTP 503"),
    ],
)
def test_user_error_is_one_line_without_traceback(tmp_path, capsys, error):
    def split(input, output, params, wildcards):
        raise error

    with pytest.raises(SystemExit) as exit_:
        run(job(tmp_path), split)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error in split: {error}\n"
    log = (tmp_path / "step.log").read_text()
    assert log.count("\n") == 1 and log.rstrip().endswith(str(error)) and "Traceback" not in log


def test_unexpected_error_keeps_its_traceback_in_the_log(tmp_path, capsys):
    def split(input, output, params, wildcards):
        return {}["missing"]

    with pytest.raises(SystemExit):
        run(job(tmp_path), split)
    assert capsys.readouterr().err == "error in split: KeyError: 'missing'\n"
    log = (tmp_path / "step.log").read_text()
    assert "Traceback" in log and 'return {}["missing"]' in log


def test_step_gets_the_rules_settings(tmp_path):
    seen = []
    run(job(tmp_path, {"a": 1, "b": {"c": 2}}), lambda i, o, params, w: seen.append(params))
    assert seen == [{"a": 1, "b": {"c": 2}}]
