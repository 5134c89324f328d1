"""Unexpected errors: one line that says how to get the traceback; --debug / FORECASTER_DEBUG=1 print it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from forecaster import cli
from forecaster.cli import _hoist_debug, app

runner = CliRunner()


@pytest.fixture
def broken_loader(monkeypatch):
    import forecaster.io

    def boom(path):
        raise RuntimeError("simulated internal failure\nsecond line")

    monkeypatch.setattr(forecaster.io, "load_fit", boom)
    monkeypatch.setenv("FORECASTER_DEBUG", "0")  # restored after the test, also when --debug sets it


def test_unexpected_error_is_one_line_that_names_debug(broken_loader, tmp_path):
    res = runner.invoke(app, ["summary", str(tmp_path / "x.nc")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: unexpected RuntimeError: simulated internal failure")
    assert "--debug" in lines[0] and "Traceback" not in res.output


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_prints_the_traceback(broken_loader, monkeypatch, tmp_path, how):
    args = ["summary", str(tmp_path / "x.nc")]
    if how == "option":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("FORECASTER_DEBUG", "1")
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "Traceback" in res.output and "RuntimeError: simulated internal failure" in res.output
    assert res.output.rstrip().splitlines()[-1].startswith("error: unexpected RuntimeError")


def test_debug_is_accepted_anywhere_before_double_dash():
    assert _hoist_debug(["fit", "x.csv", "--debug", "-o", "f.nc"]) == ["--debug", "fit", "x.csv", "-o", "f.nc"]
    assert _hoist_debug(["fit", "x.csv"]) == ["fit", "x.csv"]
    assert _hoist_debug(["fit", "--", "--debug"]) == ["fit", "--", "--debug"]


def test_expected_errors_never_print_a_traceback_even_in_debug(monkeypatch, tmp_path):
    monkeypatch.setenv("FORECASTER_DEBUG", "1")
    res = runner.invoke(app, ["summary", str(tmp_path / "missing.nc")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert cli._debug()
