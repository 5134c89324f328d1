"""Structure of the model builder: pure (data + spec in, pm.Model out), priors from the spec."""

from __future__ import annotations

import dataclasses

import numpy as np
import pymc as pm
import pytest

from forecaster.data import summarize, validate
from forecaster.errors import SpecError
from forecaster.model import build_model, choose_parametrization
from forecaster.simulate import TaskTruth, simulate
from forecaster.spec import load_spec


def test_demo_model_structure(demo_table):
    cells = summarize(demo_table)
    m = build_model(cells, load_spec())
    assert isinstance(m, pm.Model)
    names = {v.name for v in m.free_RVs}
    assert {"mu_a", "sigma_a", "mu_b", "sigma_b", "a", "b_c", "b_z", "a_family", "sigma_item", "sigma_cell",
            "spread_slope_free"} <= names  # the accuracy-only task's slope non-centered (b_z), the others not
    # the accuracy-only task's spread growth is not identified: fixed at 0, the others free
    slope = m["spread_slope"].eval({m["spread_slope_free"]: np.ones(3)})
    assert list(slope) == [1.0 if t != "logic-acc" else 0.0 for t in cells.tasks]
    assert "mu_cell" in m.named_vars
    obs = {v.name for v in m.observed_RVs}
    # per-item log-probs (balanced groups), aggregate CE and exact-match counts all enter
    assert {"obs_item_mean_bal", "obs_group_ss_res", "obs_group_ss_items", "obs_ce", "obs_em"} <= obs
    assert m.coords["task"] == tuple(cells.tasks) or list(m.coords["task"]) == cells.tasks
    assert list(m.coords["setting"]) == ["0-shot", "5-shot"]
    # the number of observations grows with cells, not items: 60 items per cell here
    n_obs = sum(int(np.prod(m.rvs_to_values[v].type.shape or (1,))) for v in m.observed_RVs)
    assert n_obs < 3 * cells.n_cells
    assert np.isfinite(m.compile_logp()(m.initial_point()))


def test_single_family_single_setting_drops_effects():
    sc = simulate([TaskTruth("t", a=0.0, b=-0.4, kind="aggregate")], n_items=50, seed=1)
    cells = summarize(validate(sc.data))
    m = build_model(cells, load_spec())
    names = {v.name for v in m.free_RVs}
    assert "a_family" not in names and "da_z" not in names


def test_priors_come_from_the_spec(tmp_path, demo_table):
    text = load_spec().text.replace('mu_b = { dist = "Normal", mu = -0.3, sigma = 0.3 }',
                                    'mu_b = { dist = "Normal", mu = -2.0, sigma = 0.01 }')
    p = tmp_path / "tight.toml"
    p.write_text(text)
    spec = load_spec(p)
    m = build_model(summarize(demo_table), spec)
    draws = pm.draw(m["mu_b"], draws=200, random_seed=1)
    assert abs(draws.mean() + 2.0) < 0.01


def test_parametrization_by_data(demo_table):
    cells = summarize(demo_table)
    spec = load_spec()
    tasks_c, cells_c = choose_parametrization(cells, spec)
    assert tasks_c.all() and not cells_c.any()  # demo: >= 4 compute levels, 60 items a cell
    few = dataclasses.replace(spec, structure={**spec.structure, "auto_centered_min_levels": 50})
    tasks_c, _ = choose_parametrization(cells, few)
    assert not tasks_c.any()
    m = build_model(cells, few)
    assert "a_z" in {v.name for v in m.free_RVs}


def _slope_scenario(n_items: int, slopes=(-0.3, -0.4, -0.5, -0.35), sigma_cell: float = 0.1):
    tasks = [TaskTruth(f"t{i}", a=0.2 * i, b=b, kind="item") for i, b in enumerate(slopes)]
    return summarize(validate(simulate(tasks, n_items=n_items, seed=1, sigma_cell=sigma_cell).data))


def test_slope_estimates_recover_the_simulated_slopes():
    from forecaster.model import task_slope_estimates

    cells = _slope_scenario(5000)
    slope, se = task_slope_estimates(cells)
    assert np.all(np.abs(slope - np.array([-0.3, -0.4, -0.5, -0.35])) < 4 * se + 0.05)
    # fewer items per cell: noisier cell means, larger standard errors
    assert np.median(task_slope_estimates(_slope_scenario(50))[1]) > np.median(se)


def test_slopes_centered_only_where_the_data_pin_them(demo_table):
    """Slopes the data barely resolve against their spread across tasks are non-centered (a funnel at small
    sigma_b otherwise); the demo's, pinned ~6x tighter than they spread, stay centered, except the slope of its
    accuracy-only task (accuracy pins a slope only through the item spread)."""
    from forecaster.model import slope_centering

    spec = load_spec()
    demo = summarize(demo_table)
    assert list(slope_centering(demo, spec)) == [t != "logic-acc" for t in demo.tasks]
    acc_only = summarize(demo_table[demo_table["task"] == "logic-acc"])
    assert not slope_centering(acc_only, spec).any()
    assert slope_centering(_slope_scenario(5000), spec).all()
    few_items = _slope_scenario(50)
    assert not slope_centering(few_items, spec).any()
    assert not slope_centering(_slope_scenario(500, slopes=(-0.4,) * 4, sigma_cell=0.0), spec).any()  # no spread
    m = build_model(few_items, spec)
    names = {v.name for v in m.free_RVs}
    assert "b_z" in names and "a" in names and "b" not in names  # intercepts stay centered
    # off: the slopes follow the intercepts (older specs), and an explicit choice applies to both
    off = dataclasses.replace(spec, structure={**spec.structure, "auto_slope_se_ratio": False})
    assert slope_centering(few_items, off).all()
    fixed = dataclasses.replace(spec, structure={**spec.structure, "parametrization": "centered"})
    assert slope_centering(few_items, fixed).all()


def test_cells_centered_where_their_items_pin_them(demo_table):
    """A per-item cell is centered when its mean's standard error is below half the cells' spread around the
    trend (estimated from the data), not by a fixed item count."""
    from forecaster.model import cell_noise_and_spread

    spec = load_spec()
    se50, spread50 = cell_noise_and_spread(_slope_scenario(50))
    se500, spread500 = cell_noise_and_spread(_slope_scenario(500))
    assert 0.05 < spread500 < 0.2 and 0.05 < spread50 < 0.2  # the simulated sigma_cell is 0.1
    assert np.median(se50) / np.median(se500) == pytest.approx(np.sqrt(10), rel=0.25)
    assert not choose_parametrization(_slope_scenario(50), spec)[1].any()
    assert choose_parametrization(_slope_scenario(500), spec)[1].all()  # though 500 < auto_centered_min_items
    assert not choose_parametrization(summarize(demo_table), spec)[1].any()  # 60 items, a cell spread ~0.03
    one_item = _slope_scenario(1)  # one item a cell: its noise is unknown, not zero
    assert np.isnan(cell_noise_and_spread(one_item)[0]).all() and not choose_parametrization(one_item, spec)[1].any()
    no_spread = _slope_scenario(500, slopes=(-0.4,) * 4, sigma_cell=0.0)
    assert not choose_parametrization(no_spread, spec)[1].any()
    off = dataclasses.replace(spec, structure={**spec.structure, "auto_cell_se_ratio": False})
    assert not choose_parametrization(_slope_scenario(500), off)[1].any()  # by item count: 500 < 1000


@pytest.mark.parametrize("edit,expect", [
    ("[structure]\nparametrization = \"sideways\"", "choose one of"),
    ("[structure]\nauto_cell_se_ratio = \"half\"", "give a number > 0"),
    ("[structure]\nauto_slope_se_ratio = -1", "give a number > 0"),
    ("[structure]\nbend_spacing = 0", "give decades of compute"),
    ("[structure]\nbend_knots = 0", "whole number >= 1"),
    ("[structure]\nbend = \"yes\"", "write true or false"),
    ("DEFAULT:mu_a = { dist = \"NoSuchDist\" }", "unknown distribution"),
    ("DEFAULT:mu_a = { dist = \"Normal\", mean = 0 }", "bad parameters"),
    ("[priors]\nmu_a = { dist = \"Normal\", mu = 0, sigma = 1 }", "lacks 'sigma_a'"),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_spec_files(tmp_path, edit, expect):
    p = tmp_path / "bad.toml"
    if edit.startswith("DEFAULT:"):
        default = load_spec().text
        line = next(x for x in default.splitlines() if x.startswith("mu_a ="))
        edit = default.replace(line, edit[len("DEFAULT:"):])
    p.write_text(edit)
    with pytest.raises(SpecError, match=expect):
        load_spec(p)


def test_unknown_spec_name():
    with pytest.raises(SpecError, match="unknown model"):
        load_spec("nonexistent-model")


def test_unpooled_spec_fixes_population_parameters(demo_table):
    spec = load_spec("unpooled")
    m = build_model(summarize(demo_table), spec)
    free = {rv.name for rv in m.free_RVs}
    assert {"sigma_a", "sigma_b", "mu_a", "mu_b", "setting_a", "sigma_setting_a"}.isdisjoint(free)
    assert {"a", "b_c", "b_z", "sigma_item", "sigma_cell"} <= free  # b_z: the accuracy-only task's slope
    # fixed values stay visible (as constants) for the forecast stage
    assert "sigma_a" in m.named_vars and float(m["sigma_b"].eval()) == 0.5


@pytest.mark.parametrize("value, expect", [("-1.0", "must be > 0"), ('"x"', "needs a number")])
def test_fixed_prior_values_are_checked(tmp_path, value, expect):
    text = load_spec("unpooled").text.replace("sigma_a = { value = 2.5 }", f"sigma_a = {{ value = {value} }}")
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(SpecError, match=expect):
        load_spec(p)


# --------------------------------------------------------------------------- exact-match floor


@pytest.mark.parametrize("switch", ["auto", True, False])
def test_floor_variable_per_switch(demo_table, switch):
    cells = summarize(demo_table)
    spec = load_spec()
    spec = dataclasses.replace(spec, structure={**spec.structure, "em_floor": switch})
    m = build_model(cells, spec)
    free = {v.name for v in m.free_RVs}
    if switch is False:
        assert "guess_rate" not in m.named_vars and not {"guess_rate", "guess_rate_free"} & free
        return
    assert "guess_rate" in m.named_vars
    if switch is True:  # every task, free
        assert "guess_rate" in free
        return
    # auto: only the accuracy-only task ("logic-acc") gets a free floor; the others are fixed at 0
    assert "guess_rate_free" in free and "guess_rate" not in free
    g = m["guess_rate"].eval({m["guess_rate_free"]: np.array([0.25])})
    assert list(g) == [0.25 if t == "logic-acc" else 0.0 for t in cells.tasks]
    assert np.isfinite(m.compile_logp()(m.initial_point()))


def test_floor_raises_the_exact_match_likelihood_floor():
    # accuracy-only counts at 10% where the latent accuracy is ~0: only a floor can explain them
    sc = simulate([TaskTruth("t", a=3.0, b=-0.01, sigma_item=0.3, k=5, kind="accuracy", guess_rate=0.1)],
                  n_items=2000, seed=2)
    cells = summarize(validate(sc.data, allow_single_compute=True))
    m = build_model(cells, load_spec())
    logp = m.compile_logp(vars=[m["obs_em"]])
    point = {**m.initial_point(), "a": np.array([5.0])}  # latent accuracy ~0
    lo = logp({**point, "guess_rate_logodds__": np.array([np.log(0.001 / 0.999)])})
    hi = logp({**point, "guess_rate_logodds__": np.array([np.log(0.1 / 0.9)])})
    assert hi > lo + 100


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_fixed_floor_must_be_a_probability(tmp_path, value):
    text = load_spec().text.replace('guess_rate = { dist = "Beta", alpha = 1.0, beta = 20.0 }',
                                    f"guess_rate = {{ value = {value} }}")
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(SpecError, match="probability"):
        load_spec(p)


def test_floor_switch_needs_its_prior(tmp_path):
    text = load_spec().text.replace('guess_rate = { dist = "Beta", alpha = 1.0, beta = 20.0 }', "")
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(SpecError, match="needs a prior 'guess_rate'"):
        load_spec(p)


def test_setting_mean_integrated_out_and_persistence_where_identified(demo_table):
    """Setting shifts: task mean + zero-sum offsets (the pooled mean not sampled); item_persistence sampled only
    for tasks with per-item data, fixed at its prior mean elsewhere."""
    cells = summarize(demo_table)
    m = build_model(cells, load_spec())
    free = {v.name for v in m.free_RVs}
    assert {"setting_m_a", "setting_m_b", "da_z", "db_z", "item_persistence_free"} <= free
    assert not {"setting_a", "setting_b", "item_persistence"} & free
    assert isinstance(m["da_z"].owner.op, type(pm.ZeroSumNormal.dist(sigma=1.0, shape=(1, 4)).owner.op))
    n_item_tasks = len(set(np.asarray(cells.group_task).tolist()))
    assert m.initial_point()["item_persistence_free_logodds__"].shape == (n_item_tasks,)
    rho = m["item_persistence"].eval({m["item_persistence_free"]: np.full(n_item_tasks, 0.9)})
    has_items = [t in {cells.tasks[g] for g in cells.group_task} for t in cells.tasks]
    np.testing.assert_allclose(rho, np.where(has_items, 0.9, 4.0 / 6.0))
    # a prior outside the Normal family: the pooled mean is sampled as before
    spec = load_spec()
    spec.priors["setting_a"] = {"dist": "StudentT", "nu": 4.0, "mu": 0.0, "sigma": 1.0}
    assert "setting_a" in {v.name for v in build_model(cells, spec).free_RVs}


def test_setting_population_draws_follow_the_conditional():
    import xarray as xr

    from forecaster.model import setting_population_draws

    n = 40_000
    post = xr.Dataset({
        "setting_m_a": (("chain", "draw", "setting_effect"), np.ones((2, n // 2, 1))),
        "sigma_setting_a": (("chain", "draw"), np.full((2, n // 2), 0.5)),
    })
    spec = load_spec()  # setting_a ~ Normal(0, 1)
    d = setting_population_draws(post, spec, n_task=4, seed=1)["setting_a"].values
    prec = 1.0 + 4 / 0.25
    assert d.shape == (2, n // 2, 1)
    assert abs(d.mean() - (4 / 0.25) / prec) < 0.01 and abs(d.std() - prec**-0.5) < 0.01
    spec.priors["setting_a"] = {"value": 0.3}
    np.testing.assert_array_equal(setting_population_draws(post, spec, 4, 1)["setting_a"].values, 0.3)


def test_setting_index_reads_the_shift_of_each_cell():
    from forecaster.model import _setting_index

    rng = np.random.default_rng(0)
    n_task, n_set = 5, 4
    t, s = rng.integers(0, n_task, 50), rng.integers(0, n_set, 50)
    shifts = rng.normal(size=(n_task, n_set - 1))
    idx, on = _setting_index(t, s, n_set)
    full = np.concatenate([np.zeros((n_task, 1)), shifts], axis=1)
    np.testing.assert_array_equal(shifts.ravel()[idx] * on, full[t, s])


def test_take_slices_contiguous_cells():
    import pytensor.tensor as pt

    from forecaster.model import _take

    x = pt.vector("x")
    assert type(_take(x, np.arange(3, 9)).owner.op).__name__ == "Subtensor"
    assert type(_take(x, np.array([0, 2, 3])).owner.op).__name__.startswith("AdvancedSubtensor")
    v = np.arange(10.0)
    for idx in (np.arange(3, 9), np.array([0, 2, 3])):
        np.testing.assert_array_equal(_take(x, idx).eval({x: v}), v[idx])


@pytest.mark.parametrize("likelihood", ["binomial", "betabinomial"])
def test_count_likelihood_equals_pymc(likelihood):
    """The exact-match counts' likelihood (binomial coefficient computed once from the data) equals PyMC's own
    Binomial / BetaBinomial log-probability."""
    import pymc as pm

    from forecaster.model import _betabinomial_logp, _binomial_logp, _binomln

    n = np.array([5, 60, 5153, 1])
    k = np.array([0, 17, 2000, 1])
    p = np.array([0.03, 0.3, 0.41, 0.9])
    c = _binomln(n.astype(float), k.astype(float))
    if likelihood == "binomial":
        got = _binomial_logp(k, p, n, c).eval()
        want = pm.logp(pm.Binomial.dist(n=n, p=p), k).eval()
    else:
        kappa = 40.0
        got = _betabinomial_logp(k, p * kappa, (1 - p) * kappa, n, c).eval()
        want = pm.logp(pm.BetaBinomial.dist(alpha=p * kappa, beta=(1 - p) * kappa, n=n), k).eval()
    np.testing.assert_allclose(got, want, rtol=1e-10)
