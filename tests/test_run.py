"""workflow.run: what a failing step leaves in the log and on the console."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.iocontainers import Namedlist

from kneurons import workflow
from kneurons.data.http import DownloadError
from kneurons.data.tables import DataError
from kneurons.settings import NoSettings
from kneurons.workflow import run

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToySettings:
    a: int
    b: Mapping


@pytest.fixture
def step(monkeypatch):
    """Make `function` the step named "split"."""

    def install(function):
        monkeypatch.setattr(workflow, "step_function", lambda name: function)

    return install


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
def test_user_error_is_one_line_without_traceback(tmp_path, capsys, step, error):
    def split(input, output, settings: NoSettings, wildcards):
        raise error

    step(split)
    with pytest.raises(SystemExit) as exit_:
        run(job(tmp_path), "split")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error in split: {error}\n"
    log = (tmp_path / "step.log").read_text()
    assert log.count("\n") == 1 and log.rstrip().endswith(str(error)) and "Traceback" not in log


def test_unexpected_error_keeps_its_traceback_in_the_log(tmp_path, capsys, step):
    def split(input, output, settings: NoSettings, wildcards):
        return {}["missing"]

    step(split)
    with pytest.raises(SystemExit):
        run(job(tmp_path), "split")
    assert capsys.readouterr().err == "error in split: KeyError: 'missing'\n"
    log = (tmp_path / "step.log").read_text()
    assert "Traceback" in log and 'return {}["missing"]' in log


def test_step_gets_the_rules_settings_as_its_dataclass(tmp_path, step):
    seen = []

    def split(input, output, settings: ToySettings, wildcards):
        seen.append(settings)

    step(split)
    run(job(tmp_path, {"a": 1, "b": {"c": 2}, "code": "data.split:0123"}), "split")
    assert seen == [ToySettings(a=1, b={"c": 2})]  # the code hash is not a setting


def test_every_rule_script_names_a_step():
    scripts = sorted((workflow_dir := ROOT / "workflow" / "scripts").glob("*.py"))
    assert scripts, workflow_dir
    for script in scripts:
        assert script.read_text() == (
            "from kneurons.workflow import run\n\n"
            f'run(snakemake, "{script.stem}")  # noqa: F821 - injected by Snakemake\n'
        )
        assert script.stem in workflow.STEPS, script
