"""Simulation-based calibration of the generative model on a small design (slow; run in CI).

Parameters are drawn from the model's prior, data from its likelihoods (prior predictive), and the model is
fitted to each simulated dataset; the rank of each true parameter among its posterior draws is then uniform
when the model, its sampler and its parametrization are right (Talts et al. 2018)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from forecaster.data import summarize, validate
from forecaster.model import _binomln, build_model
from forecaster.spec import load_spec
from forecaster.structure import resolve_structure

N_SIM = 30
N_RANK = 99  # thinned posterior draws per simulation: ranks 0..99
PARAMS = ("mu_a", "mu_b", "a", "b", "sigma_item", "sigma_cell")


def uniformity_pvalue(ranks: np.ndarray, n_rank: int, bins: int = 5) -> float:
    """Chi-square test that ranks in 0..n_rank are uniform, over ``bins`` equal bins."""
    counts = np.bincount(np.minimum(ranks * bins // (n_rank + 1), bins - 1), minlength=bins)
    return float(stats.chisquare(counts).pvalue)


def test_uniformity_statistic_can_fail():
    rng = np.random.default_rng(0)
    assert uniformity_pvalue(rng.integers(0, N_RANK + 1, 200), N_RANK) > 0.001
    assert uniformity_pvalue(rng.integers(60, N_RANK + 1, 200), N_RANK) < 1e-6  # a biased posterior


def _design() -> pd.DataFrame:
    rows = []
    for task in ("t0", "t1"):
        for x in (18.0, 18.5, 19.0, 19.5, 20.0, 20.5):
            rows.append(dict(family="f", model=f"m{x}", task=task, compute=10**x, n_items=100, n_tokens=3,
                             ce=1.0, n_correct=10))  # values replaced by simulated data
    return validate(pd.DataFrame(rows))


@pytest.mark.slow
def test_simulation_based_calibration():
    import nutpie
    import pymc as pm

    cells, spec = summarize(_design()), load_spec()
    structure = resolve_structure(cells, spec)
    model = build_model(cells, spec, structure)
    assert {rv.name for rv in model.observed_RVs} == {"obs_ce", "obs_em"}
    with build_model(cells, spec, structure.generative()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prior = pm.sample_prior_predictive(draws=N_SIM, random_seed=11)
    truth = prior["prior"].to_dataset().isel(chain=0)
    sims = prior["prior_predictive"].to_dataset().isel(chain=0)
    compiled = nutpie.compile_pymc_model(model)
    ranks = {p: [] for p in PARAMS}
    for s in range(N_SIM):
        k = sims["obs_em"].isel(draw=s).values.astype(np.int64)
        n = cells.em_n.astype(np.int64)
        data = compiled.with_data(data_log_ce=sims["obs_ce"].isel(draw=s).values, data_em_correct=k,
                                  data_em_binomln=_binomln(n, k))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace = nutpie.sample(data, draws=600, tune=600, chains=2, seed=100 + s, progress_bar=False,
                                  target_accept=0.95)
        post = trace.posterior
        for p in PARAMS:
            draws = post[p].values.reshape(post.sizes["chain"] * post.sizes["draw"], -1)
            thin = draws[np.linspace(0, len(draws) - 1, N_RANK).round().astype(int)]
            true = np.atleast_1d(truth[p].isel(draw=s).values)
            ranks[p].append(int((thin[:, 0] < true[0]).sum()))
    pvals = {p: uniformity_pvalue(np.array(r), N_RANK) for p, r in ranks.items()}
    assert min(pvals.values()) > 0.001, pvals
