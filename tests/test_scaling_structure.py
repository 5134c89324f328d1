"""Params/tokens effect and model-level (checkpoint) deviations: when they switch on, and what they do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecaster.data import summarize, validate
from forecaster.forecast import forecast, trend
from forecaster.model import build_model, model_deviation_index, model_deviation_split, use_allocation
from forecaster.spec import load_spec


def _checkpoint_table(seed: int = 0) -> pd.DataFrame:
    """Two model sizes x 4 checkpoints; log CE falls with params (-0.6/decade) and barely with tokens."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, params in (("m1", 7e7), ("m2", 1.6e8), ("m3", 4e8)):
        for step in (10, 20, 40, 80):
            tokens = step * 2e9
            mu = 0.5 - 0.6 * (np.log10(params) - 8) - 0.05 * (np.log10(tokens) - 11)
            ce = np.exp(mu + rng.normal(0, 0.02) + 0.5)
            rows.append(dict(family="f", model=f"{name}@step{step}", task="t", params=params, tokens=tokens,
                             n_items=2000, n_tokens=1, ce=ce, n_correct=int(2000 * np.exp(-ce) * 1.5)))
    return pd.DataFrame(rows)


def test_params_tokens_and_checkpoints_switch_on_by_data():
    spec = load_spec()
    cells = summarize(validate(_checkpoint_table()))
    assert use_allocation(cells, spec)
    idx = model_deviation_index(cells, spec)
    assert idx is not None and len(np.unique(idx)) == 3  # one deviation per (model, task)
    m = build_model(cells, spec)
    names = {v.name for v in m.free_RVs}
    # sampled split (model_deviation_split): the moved slopes and the deviations' two parts
    assert {"alloc_eff", "b_eff", "a_eff", "model_dev_v", "model_dev_w", "sigma_model"} <= names
    assert {"alloc", "b", "a"} <= set(m.named_vars) - names
    # compute only, one cell per model: neither
    df = _checkpoint_table().drop(columns=["params", "tokens"]).assign(compute=lambda d: d.index * 1e19 + 1e20)
    df["model"] = df["model"].str.replace("@", "-")
    plain = summarize(validate(df))
    assert not use_allocation(plain, spec) and model_deviation_index(plain, spec) is None
    assert not {"alloc", "alloc_eff", "model_dev_z", "model_dev_v"} & {v.name for v in build_model(plain, spec).free_RVs}


def test_allocation_stays_off_where_the_ratio_moves_with_compute_alone():
    """Final models with one token count (the ratio falls with params exactly as compute rises), or one model's
    checkpoints (it falls as tokens rise): alloc would be a copy of the slope. Both vary: on."""
    spec, table = load_spec(), _checkpoint_table()
    finals = table[table["model"].str.endswith("@step80")].assign(model=lambda d: d["model"].str[:2])
    one_size = table[table["model"].str.startswith("m2")]
    for t in (finals, one_size):
        cells = summarize(validate(t))
        assert np.ptp(cells.cell_u) >= 0.3  # the ratio varies, but only with compute
        assert not use_allocation(cells, spec)
    assert use_allocation(summarize(validate(table)), spec)


def _two_task_checkpoints() -> pd.DataFrame:
    """Task t: sizes m1-m3; task u: m2, m3 and m4 (1e9 params); four checkpoints each."""
    a = _checkpoint_table(0)
    b = _checkpoint_table(1).assign(task="u")
    b = b[~b["model"].str.startswith("m1")]
    extra = _checkpoint_table(2).assign(task="u")
    extra = extra[extra["model"].str.startswith("m3")].assign(model=lambda d: d["model"].str.replace("m3", "m4"),
                                                               params=1e9)
    return pd.concat([a, b, extra], ignore_index=True)


def test_split_model_deviations_are_the_same_model():
    """The split sampling (model_deviation_split) is a change of variables with unit Jacobian: at matching
    points both models have the same log density."""
    from forecaster.spec import spec_from_text

    trend = "loglinear"
    text = load_spec().text
    spec = spec_from_text(text)
    plain = spec_from_text(text.replace("model_deviation_split = true", "model_deviation_split = false"))
    cells = summarize(validate(_two_task_checkpoints()))
    idx = model_deviation_index(cells, spec)
    additive = spec_from_text(text.replace('trend = "loglinear"', 'trend = "additive"'))
    assert model_deviation_split(cells, additive, idx, np.ones(2, bool)) is None  # not exact there: off
    split = model_deviation_split(cells, spec, idx, np.ones(len(cells.tasks), bool))
    assert split is not None and model_deviation_split(cells, plain, idx, np.ones(2, bool)) is None
    basis, c0, c1 = split
    n_dev = int(idx.max()) + 1
    k = 2 if trend == "loglinear" else 1  # directions per task: a constant (and log10 params)
    assert basis.shape == (n_dev, n_dev - 2 * k) and c0.shape == c1.shape == (2, 2 * k)
    assert (c1 != 0).any() == (trend == "loglinear")
    new, old = build_model(cells, spec), build_model(cells, plain)
    assert {"a_eff", "model_dev_v"} <= {v.name for v in new.free_RVs}
    assert "model_dev_z" in {v.name for v in old.free_RVs} and "a_eff" not in {v.name for v in old.free_RVs}
    rng = np.random.default_rng(3)
    task = np.zeros(n_dev, int)
    task[idx] = cells.cell_task
    cell_l = (cells.cell_x + cells.cell_u - cells.c0 - cells.u0) / 2
    lvl = np.bincount(idx, cell_l) / np.bincount(idx)
    logp_new, logp_old = new.compile_logp(), old.compile_logp()
    for _ in range(5):
        pt_new = {k_: v + rng.normal(0, 0.5, np.shape(v)) for k_, v in new.initial_point().items()}
        sigma = np.exp(pt_new["sigma_model_log__"])
        v = pt_new["model_dev_v"]
        pt_old = {k_: val for k_, val in pt_new.items() if k_ in old.initial_point()}
        pt_old["a"] = pt_new["a_eff"] - sigma * c0 @ v
        if trend == "loglinear":
            pt_old["b"] = pt_new["b_eff"] - sigma * c1 @ v / 2
            pt_old["alloc"] = pt_new["alloc_eff"] - sigma * c1 @ v / 2
        # iid deviations: the rest (basis @ w) plus the part the trend absorbed, c0 + c1 * L per model
        pt_old["model_dev_z"] = basis @ pt_new["model_dev_w"] + (c0 @ v)[task] + (c1 @ v)[task] * lvl
        assert set(pt_old) == set(old.initial_point())
        np.testing.assert_allclose(logp_new(pt_new), logp_old(pt_old), rtol=1e-9)


def test_split_needs_params_and_centered_tasks():
    spec = load_spec()
    cells = summarize(validate(_two_task_checkpoints()))
    idx = model_deviation_index(cells, spec)
    assert model_deviation_split(cells, spec, idx, np.array([True, False])) is None
    df = _checkpoint_table().drop(columns=["params", "tokens"])
    df["compute"] = 6e19 * np.arange(1, len(df) + 1)
    plain = summarize(validate(df))
    assert model_deviation_split(plain, spec, model_deviation_index(plain, spec), np.ones(1, bool)) is None


def test_allocation_forced_without_params_is_an_error():
    from forecaster.errors import SpecError
    from forecaster.spec import spec_from_text

    spec = spec_from_text(load_spec().text.replace('allocation_effect = "auto"', "allocation_effect = true"))
    df = _checkpoint_table().drop(columns=["tokens"]).assign(compute=1e20)
    df["compute"] = 6 * df["params"] * np.arange(1, len(df) + 1) * 1e9
    with pytest.raises(SpecError, match="params and tokens"):
        build_model(summarize(validate(df)), spec)


@pytest.mark.slow
def test_tokens_per_param_moves_the_crossing_in_closed_form():
    from forecaster.fit import fit
    from forecaster.metrics import warp

    res = fit(_checkpoint_table(), seed=2, draws=100, tune=150, chains=2)
    assert "alloc" in res.posterior
    # recovered: more parameters at fixed compute is better here (truth -0.275 per decade of params/tokens)
    assert float(res.posterior["alloc"].mean()) < 0
    f20 = forecast(res, threshold=0.5, tokens_per_param=20).draws["log10_compute"].values.ravel()
    f200 = forecast(res, threshold=0.5, tokens_per_param=200).draws["log10_compute"].values.ravel()
    tr = trend(res)
    alloc = tr["alloc"].values.ravel()
    slope = tr["slope"].values.ravel()
    # tau(log10 C* - c0) = (mu* - intercept)/slope, tau the task's warped compute (the bend); the intercept moves
    # by alloc * (u_20 - u_200), u = -log10(tokens/param)
    expect = -alloc * (-np.log10(20) + np.log10(200)) / slope
    c = tr["bend_c"].isel(task=0).transpose("chain", "draw", "bend_knot").values.reshape(len(alloc), -1)
    c0 = res.cells.c0
    ok = np.isfinite(f20) & np.isfinite(f200)  # draws whose crossing is reached at both ratios
    got = warp(f20[ok] - c0, c[ok], res.structure.bend_spacing) - warp(f200[ok] - c0, c[ok], res.structure.bend_spacing)
    np.testing.assert_allclose(got, expect[ok], atol=1e-6)


def _families(sizes_g: tuple[float, ...], slope_g: float = -0.6, with_h: bool = True) -> pd.DataFrame:
    """Families f and h (three sizes each, slope -0.3 per decade of params) and g (``sizes_g``, slope
    ``slope_g``) on task t, final models only (one token count per model), aggregate CE with counts; each cell
    off its line by ~0.05. ``with_h=False``: f and g only."""
    rows, rng = [], np.random.default_rng(4)
    fams = [("f", (1e8, 4e8, 1.6e9), -0.3), ("g", sizes_g, slope_g)] + ([("h", (1.5e8, 6e8, 2e9), -0.3)]
                                                                       if with_h else [])
    for fam, sizes, slope in fams:
        for params in sizes:
            mu = 0.3 + slope * (np.log10(params) - 8.6) + rng.normal(0.0, 0.05)
            ce = float(np.exp(mu + 0.5))
            rows.append(dict(family=fam, model=f"{fam}{params:.0e}", task="t", params=params, tokens=20 * params,
                             n_items=2000, n_tokens=2, ce=ce, n_correct=int(2000 * np.exp(-2 * ce))))
    return pd.DataFrame(rows)


def test_family_task_effects_switch_on_where_a_familys_own_slope_can_be_told():
    """auto: on when three or more families each see a task at two or more computes; off with one family, with
    two, or with a single model in the third; with one task or with model deviations (checkpoints) only the
    slope."""
    from forecaster.model import use_family_task
    from forecaster.structure import resolve_structure

    spec = load_spec()
    one_task = _families((1e8, 1e9))
    both = summarize(validate(pd.concat([one_task, one_task.assign(task="u")], ignore_index=True)))
    assert use_family_task(both, spec)
    sr = resolve_structure(both, spec)
    assert sr.family_task_slopes and sr.family_task_intercepts and not sr.model_deviation
    assert {"family_task_a", "family_task_b"} <= set(build_model(both, spec, sr).named_vars)
    sr = resolve_structure(summarize(validate(one_task)), spec)
    assert sr.family_task_slopes and not sr.family_task_intercepts
    assert not use_family_task(summarize(validate(_families((1e9,)))), spec)  # g: one model
    assert not use_family_task(summarize(validate(_families((1e8, 1e9), with_h=False))), spec)  # two families
    assert not use_family_task(summarize(validate(_checkpoint_table())), spec)  # one family
    runs = []
    for i, fam in enumerate("fgh"):
        t = _checkpoint_table(i).assign(family=fam)
        runs.append(t.assign(model=fam + t["model"]))
    sr = resolve_structure(summarize(validate(pd.concat(runs, ignore_index=True))), spec)
    assert sr.model_deviation and sr.family_task_slopes and not sr.family_task_intercepts


def test_a_familys_own_slope_is_forecast():
    """Family g falls twice as fast as f on the same task: with the pair slopes its forecast follows its own
    line (the trend at 1e10 params differs between the families by the slopes' difference), without them not."""
    import dataclasses

    from forecaster.fit import fit
    from forecaster.forecast import latent

    table = _families((1e8, 3e8, 1e9), slope_g=-0.6)
    spec = load_spec()
    res = fit(table, model=spec, seed=2, draws=300, tune=400, chains=2, remedies=False, log_likelihood=False)
    assert res.structure.family_task_slopes
    tr = trend(res)
    x_far = np.log10(6 * 1e10 * 2e11) - res.cells.c0
    lc = latent(tr.sel(task="t", setting=tr.setting.values[0]), x_far)
    gap = (lc.sel(family="f") - lc.sel(family="g")).values.ravel()
    # truth: at 1e10 params the lines differ by 0.3 * 1.4 decades = 0.42 more than at the pivot 10**8.6
    assert np.median(gap) > 0.25, np.quantile(gap, [0.05, 0.5, 0.95])
    off = dataclasses.replace(spec, structure={**spec.structure, "family_task_effects": False})
    res0 = fit(table, model=off, seed=2, draws=300, tune=400, chains=2, remedies=False, log_likelihood=False)
    tr0 = trend(res0)
    lc0 = latent(tr0.sel(task="t", setting=tr0.setting.values[0]), x_far)
    gap0 = (lc0.sel(family="f") - lc0.sel(family="g")).values.ravel()
    assert np.median(gap0) < np.median(gap)
