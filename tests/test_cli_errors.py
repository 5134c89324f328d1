"""Bad queries, options, specs and fit files: one line, exit code 2, nothing written (found by a QA pass)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from forecaster.cli import app
from forecaster.errors import FitFileError, ForecasterError, QueryError, SpecError
from forecaster.forecast import forecast
from forecaster.io import load_fit
from forecaster.spec import load_spec, spec_from_text

runner = CliRunner()


def _main(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The installed entry point (``forecaster.cli:main``), not the test runner's standalone typer app."""
    return subprocess.run([sys.executable, "-c", "from forecaster.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args,expect", [
    (["forecast", "fit.nc", "--budget", "abc"], "Invalid value for '--budget'"),
    (["fit", "x.csv", "-o", "x.nc", "--draws", "abc"], "Invalid value for '--draws'"),
    (["forecast"], "Missing argument"),
    (["nosuch"], "No such command"),
])
def test_usage_errors_are_one_line(args, expect, tmp_path):
    res = _main(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.stderr
    assert "Traceback" not in res.stderr and list(tmp_path.iterdir()) == []


def test_output_path_that_is_a_folder(tiny_fit_file, tmp_path):
    (tmp_path / "out.json").mkdir()
    (tmp_path / "fig.png").mkdir()
    for args in (["forecast", str(tiny_fit_file), "--format", "json", "-o", str(tmp_path / "out.json")],
                 ["plot", str(tiny_fit_file), "--task", "all", "-o", str(tmp_path / "fig.png")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "is a folder" in res.output, res.output
    res = runner.invoke(app, ["demo", "-o", str(tiny_fit_file)])
    assert res.exit_code == 2 and "not a folder" in res.output


@pytest.mark.parametrize("query,expect", [
    (dict(at=[float("inf")]), "finite"),
    (dict(budget=float("inf")), "finite"),
    (dict(tokens_per_param=20.0), "params and tokens"),  # the demo fit has compute only
])
def test_non_finite_and_inapplicable_queries(tiny_fit, query, expect):
    with pytest.raises(QueryError, match=expect):
        forecast(tiny_fit, metric="exact_match", threshold=0.5, **query)


def test_cli_at_inf(tiny_fit_file):
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--at", "inf"])
    assert res.exit_code == 2 and "finite" in res.output


@pytest.mark.parametrize("edit,expect", [
    ('mu_a = { dist = "Normal", mu = 0.0, sigma = -2.0 }', "must be > 0"),
    ('sigma_a = { dist = "HalfNormal", sigma = 0.0 }', "must be > 0"),
    ('mu_a = { dist = "Normal", mu = "zero", sigma = 1.0 }', "finite number"),
])
def test_prior_parameter_values_are_checked(edit, expect):
    name = edit.split(" = ", 1)[0]
    text = "\n".join(edit if line.startswith(f"{name} = ") else line for line in load_spec().text.splitlines())
    with pytest.raises(SpecError, match=expect):
        spec_from_text(text)


@pytest.mark.parametrize("line,expect", [("family_effects = \"yes\"", "true or false"),
                                         ("quadrature_nodes = 0", "whole number"),
                                         ("model_deviation = 1", "choose one of")])
def test_structure_value_types_are_checked(line, expect):
    key = line.split(" = ", 1)[0]
    text = "\n".join(line if ln.startswith(f"{key} = ") else ln for ln in load_spec().text.splitlines())
    with pytest.raises(SpecError, match=expect):
        spec_from_text(text)


def test_binary_spec_file(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(p)


def test_target_accept_range(demo_table):
    from forecaster.fit import fit

    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ForecasterError, match="target-accept"):
            fit(demo_table, target_accept=bad)


def test_incomplete_fit_files(tiny_fit_file, tmp_path):
    tree = xr.open_datatree(tiny_fit_file, engine="h5netcdf").load()
    no_b = tree.copy()
    no_b["posterior"] = xr.DataTree(tree["posterior"].to_dataset().drop_vars("b"))
    no_b.to_netcdf(tmp_path / "no_b.nc", engine="h5netcdf")
    no_spec = tree.copy()
    meta = tree["forecaster"].to_dataset()
    del meta.attrs["spec_text"]
    no_spec["forecaster"] = xr.DataTree(meta)
    no_spec.to_netcdf(tmp_path / "no_spec.nc", engine="h5netcdf")
    for name, expect in (("no_b.nc", "lacks b"), ("no_spec.nc", "no spec_text")):
        with pytest.raises(FitFileError, match=expect):
            load_fit(tmp_path / name)
        res = runner.invoke(app, ["summary", str(tmp_path / name)])
        assert res.exit_code == 2 and "not a complete forecaster fit" in res.output
    assert np.isfinite(load_fit(tiny_fit_file).posterior["a"]).all()  # a complete fit still loads


def test_import_options_reach_the_reader(tmp_path):
    from pathlib import Path

    import pandas as pd

    bb = Path(__file__).resolve().parents[1] / "fixtures" / "importers" / "bigbench"
    out = tmp_path / "bb.csv"
    res = runner.invoke(app, ["import", "bigbench", str(bb), "-o", str(out)])
    assert res.exit_code == 2 and "--n-items" in res.output and not out.exists()  # the scores lack item counts
    res = runner.invoke(app, ["import", "bigbench", str(bb), "-o", str(out), "--n-items", "50",
                              "--n-tokens", "toy_arithmetic:1_digit=2"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert (df["n_items"] == 50).all() and set(df.loc[df.task == "toy_arithmetic:1_digit", "n_tokens"]) == {2.0}
    for args, expect in ((["--n-items", "5"], "--n-items is for"), (["--n-tokens", "abc"], "--n-tokens takes"),
                         (["--n-tokens", "0.5"], "--n-tokens takes")):
        fmt = "lm-eval" if args[0] == "--n-items" else "bigbench"
        res = runner.invoke(app, ["import", fmt, str(bb), "-o", str(tmp_path / "x.csv"), *args])
        assert res.exit_code == 2 and expect in res.output and not (tmp_path / "x.csv").exists(), res.output
