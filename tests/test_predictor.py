"""One predictor: the trend of new models is the PyMC model's own (same graph), and the forecast's trend is
the same per draw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import forecaster as fc
from forecaster.data import summarize, validate
from forecaster.errors import QueryError
from forecaster.forecast import latent, trend
from forecaster.metrics import warp
from forecaster.model import NewCells, build_model, family_task_pairs, family_task_pivots
from forecaster.spec import load_spec


def _with_params_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """The demo with params and tokens whose ratio varies by model (allocation and additive trends apply)."""
    df = table.drop(columns=["kind", "_line"], errors="ignore").copy()
    ratio = {m: 10.0 ** (0.6 * (i % 3)) for i, m in enumerate(sorted(df["model"].unique()))}  # tokens / params
    tpp = df["model"].map(ratio)
    df["params"] = np.sqrt(df["compute"] / (6.0 * tpp))
    df["tokens"] = df["params"] * tpp
    return validate(df.drop(columns=["compute"]))


def _variant(spec, **structure):
    return dataclasses.replace(spec, structure={**spec.structure, "cell_deviation": False, "model_deviation": False,
                                                **structure})


@pytest.mark.parametrize("variant", ["default", "no-settings-families", "allocation", "additive", "betabinomial",
                                     "family-task"])
def test_new_cells_get_the_models_own_trend(demo_table, variant):
    """At random parameter values, the trend of 'new' cells placed where the observed cells are equals the
    model's mean of those cells (deviations off), for each structure variant."""
    table = _with_params_tokens(demo_table) if variant in ("allocation", "additive") else demo_table
    spec = load_spec()
    extra = {"default": {}, "no-settings-families": {"setting_effects": False, "family_effects": False},
             "allocation": {"allocation_effect": True}, "additive": {"trend": "additive"},
             "betabinomial": {"em_likelihood": "betabinomial"}, "family-task": {"family_task_effects": True}}[variant]
    if variant == "additive":
        spec = load_spec("additive")
    spec = _variant(spec, **extra)
    cells = summarize(table)
    new = NewCells(task=cells.cell_task, family=cells.cell_family, setting=cells.cell_setting, x=cells.cell_x,
                   u=np.where(np.isfinite(cells.cell_u), cells.cell_u, 0.0), k=cells.cell_k,
                   n_items=np.full(cells.n_cells, 10))
    model = build_model(cells, spec, new=new)
    if variant == "allocation":
        assert "alloc" in model.named_vars
    if variant == "family-task":
        assert {"family_task_a", "family_task_b"} <= set(model.named_vars)
    fn = model.compile_fn([model["mu_cell"], model["mu_trend_new"], model["mu_new"]], inputs=model.value_vars,
                          on_unused_input="ignore")
    rng = np.random.default_rng(5)
    for _ in range(3):
        point = {k: v + rng.normal(0.0, 0.3, np.shape(v)) for k, v in model.initial_point().items()}
        mu_cell, mu_trend, mu_new = fn(point)
        np.testing.assert_allclose(mu_trend, mu_cell, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mu_new, mu_cell, rtol=1e-12, atol=1e-12)  # no deviations in this variant


def test_forecast_trend_is_the_models_trend_per_draw(tiny_fit):
    c = tiny_fit.cells
    rows = pd.DataFrame({"task": [c.tasks[0], c.tasks[-1]], "family": [c.families[-1], c.families[0]],
                         "setting": [c.settings[-1], c.settings[0]], "compute": [3e20, 2e22]})
    rows = pd.concat([rows, rows.assign(compute=[1e17, 1e26])], ignore_index=True)  # far out: the bend's knots
    pred = fc.predict(tiny_fit, rows, seed=1)
    tr = trend(tiny_fit)
    assert "bend_c" in tr and float(np.abs(tr["bend_c"]).max()) > 0
    for j, r in rows.iterrows():
        on = tr.sel(task=r.task, family=r.family, setting=r.setting)
        ref = latent(on, np.log10(r.compute) - c.c0).transpose("chain", "draw").values
        got = pred.draws["log_ce_trend"].isel(new=j).transpose("chain", "draw").values
        np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_predict_table_and_reproducibility(tiny_fit):
    rows = pd.DataFrame({"task": tiny_fit.cells.tasks, "family": tiny_fit.cells.families[0],
                         "compute": 1e21, "n_items": 100})
    a = fc.predict(tiny_fit, rows, seed=3)
    b = fc.predict(tiny_fit, rows, seed=3)
    pd.testing.assert_frame_equal(a.table, b.table)
    t = a.table
    for v in ("log_ce_trend", "log_ce", "accuracy", "observed"):
        qs = t[[f"{v}_q{q:02d}" for q in (5, 25, 50, 75, 95)]].to_numpy()
        assert (np.diff(qs, axis=1) >= 0).all()
    assert t["accuracy_q50"].between(0, 1).all() and t["observed_q95"].le(1).all()
    # a new model's latent is the trend plus fresh deviations: centred on it, and not identical to it
    dev = (a.draws["log_ce"] - a.draws["log_ce_trend"]).values
    assert (dev.std(axis=(0, 1)) > 0).all()
    assert (np.abs(dev.mean(axis=(0, 1))) < 4 * dev.std(axis=(0, 1)) / np.sqrt(dev.shape[0] * dev.shape[1]) + 0.05).all()


@pytest.mark.parametrize("rows,expect", [
    (dict(task="nosuch", family="alpha", compute=1e21), "unknown task"),
    (dict(task="qa-flat", family="alpha", compute=-1.0), "compute must be"),
    (dict(task="qa-flat", family="alpha"), "compute"),
    (dict(task="qa-flat", family="alpha", compute=1e21, n_items=0.5), "n_items"),
])
def test_predict_bad_rows_are_one_line_errors(tiny_fit, rows, expect):
    with pytest.raises(QueryError, match=expect) as err:
        fc.predict(tiny_fit, pd.DataFrame([rows]))
    assert "\n" not in str(err.value)


def test_new_models_get_the_trends_own_values_under_the_deviation_split(demo_table):
    """With the model-deviation split the observed cells sit on the moved ("effective") trend; a new model
    is on the trend's own values (the Deterministics ``a``, ``b``, ``alloc`` a forecast reads), not the moved."""
    table = _with_params_tokens(demo_table)
    spec = dataclasses.replace(load_spec(), structure={**load_spec().structure, "cell_deviation": False,
                                                       "allocation_effect": True, "family_task_effects": True})
    cells = summarize(table)
    from forecaster.structure import resolve_structure

    sr = resolve_structure(cells, spec)
    assert sr.deviation_split and sr.model_deviation and sr.allocation and sr.bend
    new = NewCells(task=cells.cell_task, family=cells.cell_family, setting=cells.cell_setting, x=cells.cell_x,
                   u=cells.cell_u, k=cells.cell_k, n_items=np.zeros(cells.n_cells, int))
    model = build_model(cells, spec, sr, new=new)
    names = ["a", "b", "alloc", "a_family", "da", "db", "family_task_b", "bend_c", "mu_trend_new"]
    assert sr.family_task_slopes and not sr.family_task_intercepts  # model deviations hold the pair intercepts
    pair = family_task_pairs(cells)[0]
    pivot = family_task_pivots(cells)[pair]
    outs = model.replace_rvs_by_values([model[n] for n in names])  # the values at the point, not fresh draws
    fn = model.compile_fn(outs, inputs=model.value_vars, on_unused_input="ignore")
    from pymc.initial_point import make_initial_point_fn

    start = make_initial_point_fn(model=model, jitter_rvs=set(), default_strategy="support_point")(0)
    rng = np.random.default_rng(2)
    t, f, s = cells.cell_task, cells.cell_family, cells.cell_setting
    for _ in range(3):
        point = {k: v + rng.normal(0.0, 0.3, np.shape(v)) for k, v in start.items()}
        a, b, alloc, fam, da, db, ftb, bend_c, mu_new = fn(point)
        a_eff = point["a_eff"]
        tau = warp(cells.cell_x - cells.c0, bend_c[t], sr.bend_spacing)  # each task's bent log compute
        want = (a[t] + fam[f] + da[t, s] + (b[t] + db[t, s]) * tau
                + ftb[pair] * (tau - warp(pivot - cells.c0, bend_c[t], sr.bend_spacing))
                + alloc[t] * (cells.cell_u - cells.u0))
        assert np.abs(bend_c).max() > 0.01  # the bend is on at this point: the test can tell it from a line
        np.testing.assert_allclose(mu_new, want, rtol=1e-10, atol=1e-10)
        assert not np.allclose(a, a_eff)  # the split moved the sampled intercept: the test can tell the two apart


@pytest.mark.parametrize("split", [True, False])
def test_a_later_checkpoint_keeps_its_models_deviation(demo_table, split):
    """A new cell of a fitted model (a later checkpoint, same task) sits where the model's observed cells do:
    at random parameter values its latent equals the model's mean of those cells (cell deviations off), with and
    without the deviation split; a new model (base -1) does not."""
    table = _with_params_tokens(demo_table)
    spec = dataclasses.replace(load_spec(), structure={**load_spec().structure, "cell_deviation": False,
                                                       "allocation_effect": True, "model_deviation_split": split})
    cells = summarize(table)
    base = cells.cell_base.copy()
    base[::2] = -1
    new = NewCells(task=cells.cell_task, family=cells.cell_family, setting=cells.cell_setting, x=cells.cell_x,
                   u=cells.cell_u, k=cells.cell_k, n_items=np.zeros(cells.n_cells, int), base=base)
    model = build_model(cells, spec, new=new)
    assert ("model_dev_w" in model.named_vars) == split and ("model_dev_z" in model.named_vars) != split
    outs = model.replace_rvs_by_values([model["mu_cell"], model["mu_new"]])  # at the point, not fresh draws
    fn = model.compile_fn(outs, inputs=model.value_vars, on_unused_input="ignore")
    from pymc.initial_point import make_initial_point_fn

    start = make_initial_point_fn(model=model, jitter_rvs=set(), default_strategy="support_point")(0)
    rng = np.random.default_rng(3)
    for _ in range(3):
        point = {k: v + rng.normal(0.0, 0.3, np.shape(v)) for k, v in start.items()}
        mu_cell, mu_new = fn(point)
        np.testing.assert_allclose(mu_new[1::2], mu_cell[1::2], rtol=1e-10, atol=1e-10)
        assert not np.allclose(mu_new[::2], mu_cell[::2])  # fresh deviations for new models


def test_predict_reads_the_model_column_for_checkpoints(tiny_fit):
    """A row named as a checkpoint of a fitted model ("name@step...") is that model; another name is new."""
    from forecaster.predict import _new_cells

    c = tiny_fit.cells
    rows = pd.DataFrame({"task": c.tasks[0], "family": c.families[0], "compute": 1e21,
                         "model": [c.bases[1] + "@step999999", "brand-new"]})
    cells, _ = _new_cells(tiny_fit, rows)
    assert cells.base.tolist() == [1, -1]
    assert (_new_cells(tiny_fit, rows.drop(columns="model"))[0].base == -1).all()


def test_the_crossing_is_where_the_trends_metric_reaches_the_threshold(tiny_fit):
    """Per draw, the metric of the (bent) trend at the forecast's crossing compute equals the threshold."""
    from forecaster.forecast import metric_curve

    c = tiny_fit.cells
    task, fam, sett = c.tasks[0], c.families[0], c.settings[-1]
    f = fc.forecast(tiny_fit, threshold=0.3, tasks=[task], families=[fam], settings=[sett])
    x = f.draws["log10_compute"].sel(task=task, family=fam, setting=sett).transpose("chain", "draw").values
    ok = np.isfinite(x)
    assert ok.mean() > 0.5
    tr = trend(tiny_fit, [task], [fam], [sett])
    assert float(np.abs(tr["bend_c"]).max()) > 0
    # metric_curve evaluates every draw on a grid: take each draw at its own crossing
    grid = np.where(ok, x, c.c0).reshape(-1)
    curve = metric_curve(tiny_fit, task, fam, sett, "exact_match", grid).values.reshape(x.size, -1)
    at_own = curve[np.arange(x.size), np.arange(x.size)].reshape(x.shape)
    np.testing.assert_allclose(at_own[ok], 0.3, atol=1e-6)
