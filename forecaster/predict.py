"""Forecasts for models not yet trained, from the fitted model itself (its posterior predictive).

:func:`predict` takes a table of future models (family, task, setting, compute or params and tokens, and
optionally an answer length and a test-set size) and returns, per row, the posterior of

* the trend's latent log CE of the typical item (``log_ce_trend``: where the family's models of that compute
  lie on average),
* a new model's latent log CE (``log_ce``: the trend plus a fresh deviation of the model and of its cell),
* that model's exact match (``accuracy``: the expectation over items above the task's floor), and
* with ``n_items``, the accuracy observed on a test set of that size (``observed``: the count likelihood).

It builds the PyMC model of the fit with these rows added (:class:`forecaster.model.NewCells`) and draws
them given the posterior, so every prediction goes through the same trend, deviations, metric and
likelihood as the fit: there is no second copy of the model to drift out of step.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .errors import QueryError
from .fit import FitResult
from .model import NewCells, build_model

__all__ = ["Prediction", "predict", "QUANTILES"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class Prediction:
    """Result of :func:`predict`: ``table`` (the input rows with quantiles of each predicted quantity) and
    ``draws`` (per draw: ``log_ce_trend``, ``log_ce``, ``accuracy`` and, with test-set sizes, ``observed``)."""

    table: pd.DataFrame
    draws: xr.Dataset


def _new_cells(fit: FitResult, new: pd.DataFrame) -> tuple[NewCells, pd.DataFrame]:
    if not isinstance(new, pd.DataFrame) or new.empty:
        raise QueryError("predict needs a table of future models (family, task, compute or params and tokens)")
    c = fit.cells
    df = new.reset_index(drop=True).copy()
    if "setting" not in df.columns:
        df["setting"] = c.settings[0]
    idx = {}
    for col, known in (("task", c.tasks), ("family", c.families), ("setting", c.settings)):
        if col not in df.columns:
            raise QueryError(f"predict: missing column '{col}'; the fit knows {col}s {', '.join(known)}")
        lookup = {v: i for i, v in enumerate(known)}
        vals = df[col].astype(str)
        bad = ~vals.isin(list(lookup))
        if bad.any():
            raise QueryError(f"predict: unknown {col} {vals[bad].iloc[0]!r}; the fit knows: {', '.join(known)}")
        idx[col] = vals.map(lookup).to_numpy(int)
    has_pt = {"params", "tokens"} <= set(df.columns)
    if "compute" in df.columns:
        compute = pd.to_numeric(df["compute"], errors="coerce").to_numpy(float)
    elif has_pt:
        compute = 6.0 * pd.to_numeric(df["params"], errors="coerce").to_numpy(float) * pd.to_numeric(
            df["tokens"], errors="coerce").to_numpy(float)
    else:
        raise QueryError("predict: give each future model's 'compute' (FLOPs), or its 'params' and 'tokens'")
    if not (np.isfinite(compute) & (compute > 0)).all():
        raise QueryError("predict: compute must be a finite number > 0 FLOPs for every row")
    u = np.full(len(df), float(c.u0))
    if has_pt:
        with np.errstate(divide="ignore", invalid="ignore"):
            given = np.log10(pd.to_numeric(df["params"], errors="coerce").to_numpy(float)) - np.log10(
                pd.to_numeric(df["tokens"], errors="coerce").to_numpy(float))
        u = np.where(np.isfinite(given), given, u)
    if fit.structure.allocation or fit.structure.trend == "additive":
        if not np.isfinite(u).all():
            raise QueryError("predict: this fit's trend depends on params and tokens; give both for every row")
    else:
        u = np.where(np.isfinite(u), u, 0.0)  # not used by the model
    k = pd.to_numeric(df["n_tokens"], errors="coerce").to_numpy(float) if "n_tokens" in df.columns else \
        np.full(len(df), np.nan)
    k = np.where(np.isfinite(k), k, c.task_k[idx["task"]])
    if (k < 1).any():
        raise QueryError("predict: n_tokens (answer length) must be >= 1")
    n_items = np.zeros(len(df), np.int64)
    if "n_items" in df.columns:
        n = pd.to_numeric(df["n_items"], errors="coerce").to_numpy(float)
        if not (np.isfinite(n) & (n >= 1) & (n == np.round(n))).all():
            raise QueryError("predict: n_items must be a whole number >= 1 for every row (or leave the column out)")
        n_items = n.astype(np.int64)
    df["log10_compute"] = np.log10(compute)
    df["n_tokens"] = k
    base = np.full(len(df), -1, int)
    if "model" in df.columns:  # a later checkpoint ("name@step") of a fitted model keeps that model's deviation
        lookup = {b: i for i, b in enumerate(c.bases)}
        base = df["model"].astype(str).str.split("@", n=1).str[0].map(lookup).fillna(-1).to_numpy(int)
    cells = NewCells(task=idx["task"], family=idx["family"], setting=idx["setting"], x=np.log10(compute), u=u,
                     k=k, n_items=n_items, base=base)
    return cells, df


def draw_given_posterior(post: xr.Dataset, model, names: list[str], seed: int) -> xr.Dataset:
    """``names`` of ``model`` drawn given each posterior draw in ``post`` (PyMC's posterior predictive, quietly)."""
    import pymc as pm

    log = logging.getLogger("pymc")
    level = log.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.setLevel(logging.WARNING)  # not PyMC's "Sampling: [...]" line
        try:
            out = pm.sample_posterior_predictive(xr.DataTree(children={"posterior": xr.DataTree(post)}), model=model,
                                                 var_names=names, random_seed=int(seed), progressbar=False)
        finally:
            log.setLevel(level)
    pp = out["posterior_predictive"]
    return pp.to_dataset() if isinstance(pp, xr.DataTree) else pp


def predict(fit: FitResult, new: pd.DataFrame, *, seed: int = 0, draws: int | None = None,
            replicates: int = 1) -> Prediction:
    """Posterior predictive forecasts for future models (see the module docstring).

    Parameters
    ----------
    fit : FitResult
        A fit (:func:`forecaster.fit` or :func:`forecaster.load_fit`).
    new : DataFrame
        One row per future model and task: ``family``, ``task``, optional ``setting`` (default: the reference),
        ``compute`` or ``params`` and ``tokens``, optional ``n_tokens`` (default: the task's mean answer length),
        ``n_items`` (a test set's size: adds the observed accuracy on it) and ``model`` (a later checkpoint
        ``name@step...`` of a fitted model keeps that model's deviation; other names are new models).
    seed : int
        The same fit, rows and seed give the same draws.
    draws : int, optional
        Posterior draws to use, spread evenly over each chain (default: all).
    replicates : int
        Fresh deviations and test sets per posterior draw.

    Returns
    -------
    Prediction
    """
    cells, table = _new_cells(fit, new)
    post = fit.tree["posterior"].to_dataset()
    if draws is not None and post.sizes["chain"] * post.sizes["draw"] > draws:
        keep = np.linspace(0, post.sizes["draw"] - 1, max(1, draws // post.sizes["chain"])).round().astype(int)
        post = post.isel(draw=np.unique(keep))
    if replicates > 1:  # each posterior draw repeated: more fresh deviations and test sets per draw
        post = xr.concat([post] * int(replicates), dim="draw")
        post = post.assign_coords(draw=np.arange(post.sizes["draw"]))
    model = build_model(fit.cells, fit.spec, fit.structure, new=cells)
    names = ["mu_trend_new", "mu_new", "p_new"] + (["obs_new"] if (cells.n_items > 0).all() else [])
    pp = draw_given_posterior(post, model, names, seed)
    ds = xr.Dataset({"log_ce_trend": pp["mu_trend_new"], "log_ce": pp["mu_new"], "accuracy": pp["p_new"]})
    if "obs_new" in pp:
        ds["observed"] = pp["obs_new"] / xr.DataArray(cells.n_items, dims="new")
    flat = {v: ds[v].transpose("chain", "draw", "new").values.reshape(-1, len(table)) for v in ds.data_vars}
    for v, arr in flat.items():
        for q, val in zip(QUANTILES, np.quantile(arr, QUANTILES, axis=0)):
            table[f"{v}_q{int(round(q * 100)):02d}"] = val
    return Prediction(table=table, draws=ds)
