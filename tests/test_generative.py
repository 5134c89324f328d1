"""One generative model: resolved structure saved with the fit, likelihoods that draw, log-likelihood kept
(LOO on a saved fit), posterior predictive checks."""

from __future__ import annotations

import dataclasses

import arviz as az
import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

import forecaster as fc
from forecaster.cli import app
from forecaster.data import summarize
from forecaster.model import _betabinomial_random, _binomial_random, build_model
from forecaster.spec import STRUCTURE_DEFAULTS, load_spec, spec_from_text
from forecaster.structure import REPARAMETRIZATIONS, Structure, resolve_structure


def test_structure_resolves_every_auto_and_round_trips(demo_table):
    cells, spec = summarize(demo_table), load_spec()
    sr = resolve_structure(cells, spec)
    assert "auto" not in [v for v in sr.model_choices().values() if isinstance(v, str)]
    assert len(sr.floor) == len(cells.tasks) and len(sr.centered_cell) == cells.n_cells
    # the demo's accuracy-only task gets the floor, the others (with CE or log-probs) none
    assert [t for t, on in zip(cells.tasks, sr.floor) if on] == ["logic-acc"]
    assert Structure.from_json(sr.to_json()) == sr
    gen = sr.generative()
    assert gen.model_choices() == sr.model_choices() and not gen.deviation_split
    assert set(REPARAMETRIZATIONS) <= {f.name for f in dataclasses.fields(Structure)}


def test_one_set_of_defaults_a_spec_from_scratch_is_the_default_model(demo_table):
    default = load_spec()
    priors_only = "[priors]\n" + default.text.split("[priors]", 1)[1]
    scratch = spec_from_text(priors_only)
    assert scratch.structure == default.structure == STRUCTURE_DEFAULTS
    cells = summarize(demo_table)
    assert resolve_structure(cells, scratch) == resolve_structure(cells, default)


def test_fit_saves_structure_observed_data_and_log_likelihood(tiny_fit, tiny_fit_file):
    loaded = fc.load_fit(tiny_fit_file)
    assert loaded.structure == tiny_fit.structure == resolve_structure(tiny_fit.cells, tiny_fit.spec)
    for group in ("observed_data", "log_likelihood"):
        assert group in loaded.tree.children
    ll = loaded.tree["log_likelihood"]["obs"]
    assert ll.dims == ("chain", "draw", "cell") and ll.sizes["cell"] == loaded.cells.n_cells
    assert np.isfinite(ll.values).all()
    # every observation counted once: the per-cell sums add up to PyMC's pointwise log-likelihood
    import pymc as pm

    model = build_model(tiny_fit.cells, tiny_fit.spec, tiny_fit.structure)
    parts = pm.compute_log_likelihood(tiny_fit.tree, model=model, extend_inferencedata=False, progressbar=False)
    total = sum(parts[v].sum(dim=[d for d in parts[v].dims if d not in ("chain", "draw")]) for v in parts.data_vars)
    np.testing.assert_allclose(ll.sum("cell").values, total.values, rtol=1e-9)
    # the observed counts are the data's
    obs = loaded.tree["observed_data"]["obs_em"]
    np.testing.assert_array_equal(obs.values, loaded.cells.em_correct[obs["cell_em"].values])


def test_loo_runs_on_a_saved_fit_alone(tiny_fit_file):
    import xarray as xr

    tree = xr.open_datatree(tiny_fit_file, engine="h5netcdf").load()
    res = az.loo(tree)
    assert np.isfinite(res.elpd) and res.n_data_points == tree["log_likelihood"]["obs"].sizes["cell"]


def test_count_likelihoods_draw_what_they_score():
    rng = np.random.default_rng(0)
    n, p = np.array([50, 200]), np.array([0.1, 0.7])
    draws = np.array([_binomial_random(p, n, None, rng=rng, size=(20000, 2))]).reshape(20000, 2)
    np.testing.assert_allclose(draws.mean(axis=0), n * p, rtol=0.02)
    np.testing.assert_allclose(draws.var(axis=0), n * p * (1 - p), rtol=0.05)
    a, b = p * 10.0, (1 - p) * 10.0
    bb = _betabinomial_random(a, b, n, None, rng=rng, size=(20000, 2))
    np.testing.assert_allclose(bb.var(axis=0), stats.betabinom(n, a, b).var(), rtol=0.05)


def test_prior_predictive_of_the_generative_model(demo_table):
    import pymc as pm

    cells, spec = summarize(demo_table), load_spec()
    model = build_model(cells, spec, resolve_structure(cells, spec).generative())
    with model:
        pp = pm.sample_prior_predictive(draws=20, random_seed=1)
    em = pp["prior_predictive"]["obs_em"]
    n = cells.em_n[em["cell_em"].values]
    assert ((em.values >= 0) & (em.values <= n)).all()
    assert {rv.name for rv in model.observed_RVs} == set(pp["prior_predictive"].data_vars)


def test_posterior_predictive_check(tiny_fit):
    res = fc.check(tiny_fit, draws=40, seed=2)
    n_obs = sum(int(v.size) for v in tiny_fit.tree["observed_data"].to_dataset().data_vars.values())
    assert len(res.points) == n_obs
    assert res.points["pit"].between(0, 1).all()
    assert set(res.tasks["task"]) == set(tiny_fit.cells.tasks)
    assert (res.worst(3)["pit"] - 0.5).abs().is_monotonic_decreasing
    again = fc.check(tiny_fit, draws=40, seed=2)
    np.testing.assert_array_equal(res.points["pit"], again.points["pit"])  # same fit and seed, same check
    fig = fc.plot_check(res)
    assert len([ax for ax in fig.axes if ax.get_visible()]) >= len(tiny_fit.cells.tasks) + 1


def test_check_cli_writes_a_figure(tiny_fit_file, tmp_path):
    out = tmp_path / "ppc.png"
    res = CliRunner().invoke(app, ["check", str(tiny_fit_file), "-o", str(out), "--draws", "20"])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and "worst-fitting" in res.output
    bad = CliRunner().invoke(app, ["check", str(tiny_fit_file), "-o", str(tmp_path / "ppc.txt")])
    assert bad.exit_code == 2 and not (tmp_path / "ppc.txt").exists()


def test_summary_prints_the_resolved_structure(tiny_fit_file):
    res = CliRunner().invoke(app, ["summary", str(tiny_fit_file)])
    assert res.exit_code == 0, res.output
    assert "exact-match floor (guess rate): logic-acc" in res.output and "sampled with:" in res.output
    assert "bend (knots every 0.5 decades, 12 a side)" in res.output


def test_the_bend_is_on_for_the_loglinear_trend_only(demo_table):
    cells, spec = summarize(demo_table), load_spec()
    sr = resolve_structure(cells, spec)
    assert sr.bend and sr.bend_knots == 12 and sr.bend_spacing == 0.5
    off = resolve_structure(cells, dataclasses.replace(spec, structure={**spec.structure, "bend": False}))
    assert not off.bend and off.bend_knots == 0
    assert "bend_c" not in build_model(cells, dataclasses.replace(spec, structure={**spec.structure, "bend": False}),
                                       off).named_vars
    additive = load_spec("additive")
    assert additive.structure["bend"] and not resolve_structure(cells, additive).bend
    # a fit saved before the bend existed reads as a straight line
    old = {k: v for k, v in dataclasses.asdict(sr).items() if not k.startswith("bend")}
    assert not Structure(**old).bend


def test_the_bend_spreads_a_forecast_without_moving_its_expected_latent(demo_table):
    """Under the model's own prior the warped log compute has expectation dx at every distance (the slope's
    multiplier is a martingale), and its spread grows faster than linearly with the distance."""
    import pymc as pm

    from forecaster.metrics import warp

    cells, spec = summarize(demo_table), load_spec()
    sr = resolve_structure(cells, spec)
    model = build_model(cells, spec, sr.generative())
    c = pm.draw(model["bend_c"], draws=20000, random_seed=1)[:, 0, :]  # (draw, knot) of one task
    dx = np.array([-3.0, 0.4, 1.0, 3.0, 6.0, 9.0])
    tau = warp(dx[None, :], c[:, None, :], sr.bend_spacing)
    se = tau.std(0) / np.sqrt(len(tau))
    assert np.all(np.abs(tau.mean(0) - dx) < 4 * se + 1e-9), (tau.mean(0), dx)
    sd = tau.std(0)
    assert sd[1] < 1e-9 and 0.0 < sd[2] < sd[3] < sd[4] < sd[5]  # the identity near c0
    assert sd[5] / sd[3] > (9.0 - 0.5) / (3.0 - 0.5)  # faster than linear in the distance past the first knot


def _counts_table(rising: bool, with_ce: bool = False):
    import pandas as pd

    from forecaster.data import validate

    rows = []
    for i, x in enumerate((18.0, 18.5, 19.0, 19.5, 20.0)):
        k = 20 + 25 * i if rising else (20, 26, 19, 24, 21)[i]
        row = dict(family="f", model=f"m{i}", task="t", compute=10**x, n_items=200, n_tokens=2, n_correct=k)
        if with_ce:
            row["ce"] = 2.0 - 0.2 * i
        rows.append(row)
    return validate(pd.DataFrame(rows))


@pytest.mark.parametrize("rising,with_ce,expect", [(False, False, True), (True, False, False), (False, True, False)])
def test_tasks_whose_data_show_no_rise_are_flagged(rising, with_ce, expect):
    from forecaster.model import accuracy_shows_no_rise

    assert accuracy_shows_no_rise(summarize(_counts_table(rising, with_ce))).tolist() == [expect]


def test_forecast_table_carries_the_flag(tiny_fit):
    import json

    f = fc.forecast(tiny_fit, metric="exact_match", threshold=0.5)
    assert f.table["rests_on_prior"].map(type).eq(bool).all() or f.table["rests_on_prior"].dtype == bool
    json.dumps(f.records())  # JSON-ready


def test_a_fit_saved_before_the_bend_loads_as_a_straight_line(tiny_fit_file, tmp_path):
    """A file without a saved structure or bend draws (written before the bend existed) is read with the bend
    off, so prediction does not invent one from its prior."""
    import xarray as xr

    from forecaster.io import load_fit

    tree = xr.open_datatree(tiny_fit_file, engine="h5netcdf").load()
    old = tree.copy()
    old["posterior"] = xr.DataTree(tree["posterior"].to_dataset().drop_vars(["bend_c", "bend_z"]))
    meta = tree["forecaster"].to_dataset()
    del meta.attrs["structure"]
    old["forecaster"] = xr.DataTree(meta)
    old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    loaded = load_fit(tmp_path / "old.nc")
    assert not loaded.structure.bend
    assert load_fit(tiny_fit_file).structure.bend
    from forecaster.forecast import trend

    assert "bend_c" not in trend(loaded)
