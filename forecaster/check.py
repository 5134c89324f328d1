"""Posterior predictive checks: does the fitted model reproduce the data it was fitted to?

:func:`check` draws replicated data from the fitted model itself (the PyMC model's likelihoods, per
posterior draw), and compares them with the observed sufficient statistics of every cell: a cell's mean
log CE over items, its aggregate log CE, its exact-match accuracy, and the item-variance sums of squares.
For each observation it reports the replicated 5/50/95% quantiles and the PIT (the share of replicates
below the observed value; randomized between ties for counts). Under a calibrated model PITs are uniform
and about 90% of observations fall inside their replicated 90% interval; cells with PIT near 0 or 1 are
the ones the model fits worst.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .fit import FitResult
from .model import build_model
from .predict import draw_given_posterior

__all__ = ["Check", "check", "posterior_predictive"]

#: Observed variable -> (what it is, how to show it)
QUANTITIES = {
    "obs_em": "accuracy",
    "obs_item_mean_bal": "mean log CE",
    "obs_item_mean": "mean log CE",
    "obs_ce": "log mean CE",
    "obs_item_ss": "item sum of squares",
    "obs_group_ss_res": "item x model sum of squares",
    "obs_group_ss_items": "item sum of squares",
}


@dataclass
class Check:
    """Result of :func:`check`.

    Attributes
    ----------
    points : DataFrame
        One row per observation: ``quantity``, ``task``, ``family``, ``setting``, ``model``, ``log10_compute``,
        ``observed``, ``rep_q05``, ``rep_q25``, ``rep_q50``, ``rep_q75``, ``rep_q95``, ``pit``.
    tasks : DataFrame
        Per task and quantity: observations, share inside the replicated 50% and 90% intervals, and the
        worst-fitting cell (PIT farthest from 0.5).
    predictive : xarray.Dataset
        The replicated data (chain, draw, observation).
    """

    points: pd.DataFrame
    tasks: pd.DataFrame
    predictive: xr.Dataset

    def worst(self, n: int = 5) -> pd.DataFrame:
        """The ``n`` observations with PIT farthest from 0.5."""
        p = self.points.assign(extremity=(self.points["pit"] - 0.5).abs())
        return p.sort_values("extremity", ascending=False).head(n).drop(columns="extremity")


def posterior_predictive(fit: FitResult, draws: int | None = 500, seed: int = 0) -> xr.Dataset:
    """Replicated observations from the fitted model, ``draws`` posterior draws (all when None)."""
    post = fit.tree["posterior"].to_dataset()
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    if draws is not None and n_chain * n_draw > draws:
        keep = np.linspace(0, n_draw - 1, max(1, draws // n_chain)).round().astype(int)
        post = post.isel(draw=np.unique(keep))
    model = build_model(fit.cells, fit.spec, fit.structure)
    return draw_given_posterior(post, model, [rv.name for rv in model.observed_RVs], seed)


def check(fit: FitResult, draws: int | None = 500, seed: int = 0) -> Check:
    """Posterior predictive check of a fit (see the module docstring).

    Parameters
    ----------
    fit : FitResult
        A fit (:func:`forecaster.fit` or :func:`forecaster.load_fit`).
    draws : int, optional
        Posterior draws to replicate from (spread evenly over each chain); None for all.
    seed : int
        Seed of the replicates and of the PIT's tie-breaking: the same fit and seed give the same check.
    """
    rep = posterior_predictive(fit, draws=draws, seed=seed)
    obs = fit.tree["observed_data"].to_dataset() if "observed_data" in fit.tree.children else None
    if obs is None:  # fits saved before observed data were kept
        from .fit import observed_data

        obs = observed_data(build_model(fit.cells, fit.spec, fit.structure))
    rng = np.random.default_rng([int(seed), 0xC4EC])
    c = fit.cells
    rows = []
    for name in rep.data_vars:
        da = rep[name]
        (dim,) = [d for d in da.dims if d not in ("chain", "draw")]
        r = da.transpose("chain", "draw", dim).values.reshape(-1, da.sizes[dim]).astype(float)
        y = np.asarray(obs[name].values, float)
        idx = np.asarray(da[dim].values, int) if dim in da.coords else np.arange(da.sizes[dim])
        if name == "obs_em":  # counts as accuracy
            n = c.em_n[idx]
            r, y = r / n, y / n
            pit = (r < y).mean(axis=0) + rng.uniform(size=len(y)) * (r == y).mean(axis=0)
        else:
            pit = (r < y).mean(axis=0)
        q = np.quantile(r, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        for j, cell_or_group in enumerate(idx):
            if dim == "item_group":
                task, family, setting, model, x = c.tasks[c.group_task[cell_or_group]], "", "", "(all models)", np.nan
                members = np.flatnonzero(c.cell_group == cell_or_group)
                if len(members):
                    setting = c.settings[c.cell_setting[members[0]]]
            else:
                k = int(cell_or_group)
                task, family = c.tasks[c.cell_task[k]], c.families[c.cell_family[k]]
                setting, model, x = c.settings[c.cell_setting[k]], c.models[c.cell_model[k]], float(c.cell_x[k])
            rows.append(dict(quantity=QUANTITIES.get(name, name), variable=name, task=task, family=family,
                             setting=setting, model=model, log10_compute=x, observed=float(y[j]),
                             rep_q05=q[0, j], rep_q25=q[1, j], rep_q50=q[2, j], rep_q75=q[3, j], rep_q95=q[4, j],
                             pit=float(pit[j])))
    points = pd.DataFrame(rows)
    return Check(points=points, tasks=_per_task(points), predictive=rep)


def _per_task(points: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (task, quantity), g in points.groupby(["task", "quantity"], sort=True):
        inside50 = ((g["observed"] >= g["rep_q25"]) & (g["observed"] <= g["rep_q75"])).mean()
        inside90 = ((g["observed"] >= g["rep_q05"]) & (g["observed"] <= g["rep_q95"])).mean()
        w = g.iloc[int(np.argmax((g["pit"] - 0.5).abs().to_numpy()))]
        out.append(dict(task=task, quantity=quantity, n=len(g), inside50=float(inside50), inside90=float(inside90),
                        worst_model=w["model"], worst_setting=w["setting"], worst_pit=float(w["pit"])))
    return pd.DataFrame(out)
