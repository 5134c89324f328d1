"""The pipeline with tiny draws and fixed seeds: fit -> save -> load -> forecast/plot, through library and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import forecaster as fc
from forecaster.cli import app

runner = CliRunner()
JSON_KEYS = ["task", "family", "setting", "metric", "k", "threshold", "log10_compute_q05", "log10_compute_q25",
             "log10_compute_q50", "log10_compute_q75", "log10_compute_q95", "prob_reached_by_budget",
             "prob_unreached", "rests_on_prior"]


def test_fit_result_and_diagnostics(tiny_fit):
    d = tiny_fit.diagnostics
    assert d.n_samples == 120
    assert np.isfinite(d.max_rhat) and d.divergences >= 0
    # 60 draws cannot give ESS >= 400: the fit must say it is not trustworthy
    assert not d.trusted and any("effective sample size" in w for w in d.warnings)
    post = tiny_fit.posterior
    assert set(post["a"].dims) == {"chain", "draw", "task"}


def test_save_load_roundtrip(tiny_fit, tiny_fit_file):
    loaded = fc.load_fit(tiny_fit_file)
    np.testing.assert_array_equal(loaded.posterior["b"].values, tiny_fit.posterior["b"].values)
    assert loaded.cells.tasks == tiny_fit.cells.tasks and loaded.cells.c0 == tiny_fit.cells.c0
    assert loaded.spec.priors == tiny_fit.spec.priors
    a = fc.forecast(tiny_fit, threshold=0.5).table
    b = fc.forecast(loaded, threshold=0.5).table
    pd.testing.assert_frame_equal(a, b)


def test_same_seed_same_forecast(demo_table):
    t = [fc.forecast(fc.fit(demo_table, seed=11, draws=30, tune=30, chains=2), budget=1e22).table for _ in range(2)]
    pd.testing.assert_frame_equal(t[0], t[1])


def test_forecast_table_and_draws(tiny_fit):
    f = fc.forecast(tiny_fit, metric="exact_match", threshold=0.5, budget=1e23, at=[1e21, 1e24],
                    quantiles=(0.1, 0.5, 0.9))
    assert list(f.table.columns[:6]) == ["task", "family", "setting", "metric", "k", "threshold"]
    assert {"log10_compute_q10", "log10_compute_q50", "log10_compute_q90"} <= set(f.table.columns)
    assert len(f.table) == 4 * 2 * 2
    q = f.table[["log10_compute_q10", "log10_compute_q50", "log10_compute_q90"]].to_numpy()
    ok = np.isfinite(q).all(axis=1)
    assert np.all(np.diff(q[ok], axis=1) >= 0)
    assert f.table.prob_reached_by_budget.between(0, 1).all()
    assert f.draws["log10_compute"].sizes["draw"] == 60
    # a new model's metric grows with compute
    at = f.at_table.pivot_table(index=["task", "family", "setting"], columns="compute", values="q50")
    assert (at[1e24] >= at[1e21]).all()


def test_unreached_is_null_not_a_number(tiny_fit):
    # a threshold so strict that nothing reaches it below 1e35 FLOPs
    f = fc.forecast(tiny_fit, metric="exact_match", threshold=0.999999, k=50, tasks="qa-flat")
    assert (f.table.prob_unreached > 0.5).all()
    rec = f.records()[0]
    assert rec["log10_compute_q95"] is None


def test_cli_forecast_json_keys_and_atomic_output(tiny_fit_file, tmp_path):
    out = tmp_path / "f.json"
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--metric", "exact_match", "--k", "5",
                              "--threshold", "0.5", "--task", "arith-steep", "--budget", "1e24", "--format", "json",
                              "-o", str(out)])
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert recs and all(list(r) == JSON_KEYS for r in recs)
    assert all(r["task"] == "arith-steep" and r["k"] == 5 for r in recs)
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_cli_table_csv_summary_plot(tiny_fit_file, tmp_path):
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--family", "alpha", "--at", "1e22"])
    assert res.exit_code == 0 and "arith-steep" in res.stdout
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--format", "csv", "--metric", "token_accuracy",
                              "--threshold", "0.6"])
    assert res.exit_code == 0 and res.stdout.startswith("task,family,setting,metric")
    res = runner.invoke(app, ["summary", str(tiny_fit_file)])
    assert res.exit_code == 0 and "sigma_item" in res.stdout and "R-hat" in res.stderr
    for ext in ("png", "svg", "pdf"):
        out = tmp_path / f"p.{ext}"
        res = runner.invoke(app, ["plot", str(tiny_fit_file), "--task", "arith-steep", "--metric", "exact_match",
                                  "--threshold", "0.5", "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 1000
    res = runner.invoke(app, ["plot", str(tiny_fit_file), "--task", "all", "-o", str(tmp_path / "p.gif")])
    assert res.exit_code == 2 and "must end in" in res.stderr


def test_cli_fit_strict_exit_code(tmp_path):
    src = tmp_path / "demo.csv"
    fc.demo_data().to_csv(src, index=False)
    out = tmp_path / "fit.nc"
    res = runner.invoke(app, ["fit", str(src), "-o", str(out), "--draws", "20", "--tune", "20", "--chains", "2",
                              "--strict"])
    assert res.exit_code == 1, res.output  # 20 draws cannot be trusted
    assert "WARNING" in res.stderr and "R-hat" in res.stderr
    assert out.exists()  # the fit is still written; --strict only sets the exit code
    assert " s -> " in res.stderr  # the fit's wall time


def test_cli_fit_announces_a_compile(tmp_path, monkeypatch):
    """Before a compile (a cache miss) `fit` says why the first fit of a design takes long."""
    import forecaster.compile_cache as cc
    from forecaster.fit import COMPILE_NOTICE

    def fake_compile(pm_model, *, on_compile=None, **kwargs):
        on_compile()
        raise fc.ForecasterError("stop after the notice")

    monkeypatch.setattr(cc, "compile_nutpie", fake_compile)
    src = tmp_path / "demo.csv"
    fc.demo_data().to_csv(src, index=False)
    out = tmp_path / "fit.nc"
    res = runner.invoke(app, ["fit", str(src), "-o", str(out)])
    assert res.exit_code == 2 and COMPILE_NOTICE in res.stderr and "stop after the notice" in res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_demo_command(tmp_path):
    res = runner.invoke(app, ["demo", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in ("demo-fit.nc", "demo-forecast.csv", "demo-forecast.png", "demo-data.csv"):
        assert (tmp_path / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "demo-forecast.csv")
    assert {"log10_compute_q50", "prob_reached_by_budget"} <= set(table.columns)
    # every fit reports its convergence, and a newcomer's first screen does not say its own posterior is not
    # to be trusted
    assert "convergence: max R-hat" in res.stderr and "divergences" in res.stderr, res.stderr
    assert "cannot be trusted" not in res.stderr, res.stderr


def test_fit_without_floor_still_forecasts(tiny_fit):
    """A fit saved before the exact-match floor existed (no ``guess_rate``) forecasts as with a zero floor."""
    import dataclasses

    import xarray as xr

    post = tiny_fit.posterior
    assert "guess_rate" in post  # the demo's accuracy-only task has one
    old = dataclasses.replace(tiny_fit, tree=xr.DataTree(children={
        "posterior": xr.DataTree(post.drop_vars([v for v in post.data_vars if v.startswith("guess_rate")])),
        "sample_stats": tiny_fit.tree["sample_stats"]}))
    zero = dataclasses.replace(tiny_fit, tree=xr.DataTree(children={
        "posterior": xr.DataTree(post.assign(guess_rate=post["guess_rate"] * 0.0)),
        "sample_stats": tiny_fit.tree["sample_stats"]}))
    a = fc.forecast(old, threshold=0.5, at=[1e22]).table
    b = fc.forecast(zero, threshold=0.5, at=[1e22]).table
    pd.testing.assert_frame_equal(a, b)
    curve = fc.metric_curve(old, "logic-acc", old.cells.families[0], old.cells.settings[0], "exact_match",
                            np.linspace(18, 24, 5))
    assert np.isfinite(curve.values).all()
    # with the floor, a threshold below the floor of every draw is reached already
    g = float(post["guess_rate"].sel(task="logic-acc").min())
    low = fc.forecast(tiny_fit, threshold=g / 2, tasks="logic-acc").table
    assert low["log10_compute_q95"].isna().all() and (low["prob_unreached"] == 0).all()


def test_stuck_chain_is_dropped_and_reported():
    import xarray as xr

    from forecaster.fit import _drop_stuck, diagnose, stuck_chains

    rng = np.random.default_rng(0)
    lp = rng.normal(-35.0, 3.0, size=(4, 200))
    assert stuck_chains(lp) == []
    lp[2] -= 1400.0  # one chain in a basin of negligible mass
    assert stuck_chains(lp) == [2]
    assert stuck_chains(lp[:2]) == []  # two chains: no majority to go by
    two = lp.copy()
    two[3] -= 1400.0
    assert stuck_chains(two) == []  # half the chains: keep all, let R-hat speak
    x = rng.normal(size=(4, 200))
    x[2] += 5.0
    tree = xr.DataTree(children={
        "posterior": xr.DataTree(xr.Dataset({"theta": (("chain", "draw"), x)}, coords={"chain": np.arange(4)})),
        "sample_stats": xr.DataTree(xr.Dataset({"logp": (("chain", "draw"), lp),
                                                "diverging": (("chain", "draw"), np.zeros((4, 200), bool))})),
    })
    assert diagnose(tree).max_rhat > 1.5
    kept = _drop_stuck(tree)
    assert list(kept["posterior"].to_dataset()["chain"].values) == [0, 1, 3]
    d = diagnose(kept)
    assert d.max_rhat < 1.05 and d.notes and "chain(s) 2 stuck" in d.notes[0]


def test_saved_fit_keeps_its_diagnostics(tiny_fit, tmp_path):
    """Diagnostics travel in the file (loading does not recompute them) and equal a recomputation;
    a file without them (older versions) gets them computed."""
    from forecaster.fit import diagnose
    from forecaster.io import _DIAG_ATTR

    res = tiny_fit
    fc.save_fit(res, tmp_path / "a.nc")
    assert _DIAG_ATTR not in res.tree["posterior"].attrs  # the caller's tree is not modified
    back = fc.load_fit(tmp_path / "a.nc")
    assert back.diagnostics == res.diagnostics == diagnose(back.tree)
    # what loading reports is the stored record, not a recomputation
    record = json.loads(back.tree["posterior"].attrs[_DIAG_ATTR])
    back.tree["posterior"].attrs[_DIAG_ATTR] = json.dumps({**record, "divergences": res.diagnostics.divergences + 7})
    back.tree.to_netcdf(tmp_path / "marked.nc", engine="h5netcdf")
    assert fc.load_fit(tmp_path / "marked.nc").diagnostics.divergences == res.diagnostics.divergences + 7
    del back.tree["posterior"].attrs[_DIAG_ATTR]
    back.tree.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    assert fc.load_fit(tmp_path / "old.nc").diagnostics == res.diagnostics


def test_table_marks_unreached_crossings_but_not_a_missing_budget(capsys):
    """NaN is "not reached" in a crossing quantile, but only "–" where no --budget was given."""
    from forecaster.cli import _write_table

    df = pd.DataFrame([{"task": "t", "log10_compute_q95": float("nan"), "prob_reached_by_budget": float("nan"),
                        "prob_unreached": 0.25}])
    _write_table(df, "table", None, "title")
    out = capsys.readouterr().out
    assert out.count("not reached") == 1 and "–" in out and "0.25" in out


def test_table_shows_counts_as_integers_and_names_pass_at_n(tiny_fit_file, capsys):
    from forecaster.cli import _write_table

    _write_table(pd.DataFrame([{"task": "t", "k": 5.0, "threshold": 0.5}, {"task": "u", "k": 2.5, "threshold": 0.5}]),
                 "table", None, "title")
    row5, row25 = [line for line in capsys.readouterr().out.splitlines() if " t " in line or " u " in line]
    assert " 5 " in row5 and "5.00" not in row5 and "2.50" in row25
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--metric", "pass_at_n", "--n", "4", "--k", "3",
                              "--threshold", "0.5", "--task", "qa-flat"])
    assert res.exit_code == 0 and "pass@4 (n = 4 samples)" in res.stdout


@pytest.mark.parametrize("sampler", ["pymc", "numpyro"])
def test_other_samplers_start_where_nutpie_starts(demo_table, sampler, monkeypatch):
    """PyMC's and NumPyro's own start points jitter the item spread into its spurious large-spread mode (numpyro
    on the demo: R-hat 1.53); fit hands them per-chain start points with the spread at its moderate start."""
    import importlib

    import pymc as pm

    fit_mod = importlib.import_module("forecaster.fit")  # the module: fc.fit is the function

    seen = {}

    def fake_sample(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(pm, "sample", fake_sample)
    monkeypatch.setattr(fit_mod, "_check_sampler", lambda s: None)  # numpyro need not be installed
    with pytest.raises(RuntimeError, match="stop here"):
        fc.fit(demo_table, seed=5, sampler=sampler, chains=3, draws=10, tune=10)
    starts = seen["initvals"]
    assert len(starts) == 3
    n_tasks = demo_table["task"].nunique()
    for p in starts:
        np.testing.assert_array_equal(p["sigma_item"], np.ones(n_tasks))
    # every other variable is jittered: the chains start apart
    assert not np.allclose(starts[0]["mu_a"], starts[1]["mu_a"])
    assert not np.allclose(starts[1]["b_c"], starts[2]["b_c"])  # the slopes sampled centered
    # and not jittered again by the sampler
    if sampler == "pymc":
        assert seen["init"] == "adapt_diag"
    else:
        assert seen["nuts"] == {"jitter": False}
    # the same seed gives the same start points
    again = fit_mod._start_points(*_start_args(demo_table), seed=5, chains=3)
    for p, q in zip(starts, again):
        assert p.keys() == q.keys()
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])


def _start_args(table):
    from forecaster.data import summarize
    from forecaster.fit import _spread_start
    from forecaster.model import build_model
    from forecaster.spec import load_spec

    cells = summarize(table)
    m = build_model(cells, load_spec())
    return (m, *_spread_start(m, len(cells.tasks)))
