"""Fitting: sample the posterior, report convergence, keep everything in one DataTree.

A :class:`FitResult` holds the ArviZ ``DataTree`` (``posterior``,
``sample_stats``) plus a ``forecaster`` group with the validated input table
and the model spec, so a saved fit is self-contained.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from .convergence import rhat_ess
from .data import CellData, load_table, summarize, validate
from .errors import ForecasterError
from .model import build_model, model_digest, setting_population_draws
from .structure import Structure, resolve_structure
from .spec import ModelSpec, load_spec

__all__ = ["FitResult", "Diagnostics", "fit", "diagnose", "stuck_chains", "SAMPLERS", "STORED_COLUMNS"]

SAMPLERS = ("nutpie", "pymc", "numpyro")

#: What ``fit(status=...)`` hears before a compile (measured on 2 cores, demo: a first run ~95-120 s, a new
#: design of a machine's later runs 22-33 s; a cache hit 0.5 s).
COMPILE_NOTICE = ("compiling the model (the first fit of this design here: ~20-30 s, up to 2 min on a fresh install; "
                  "cached for later fits)")
#: Fits smaller than this many draws per chain are exploratory: no remedy is tried when they do not converge.
REMEDY_MIN_DRAWS = 200
#: Posterior attribute saying that a fit did not converge at first and what was done.
REMEDY_ATTR = "remedy"
#: Posterior attribute with the compile cache's problems during the fit (one line each: why it was not used, or
#: which entry was replaced); :func:`diagnose` turns them into notes.
COMPILE_CACHE_ATTR = "compile_cache"
#: Columns of the tidy table stored with a fit.
STORED_COLUMNS = (
    "family", "model", "task", "setting", "kind", "item", "compute", "params", "tokens", "n_tokens", "logprob", "correct",
    "n_items", "ce", "n_correct",
)
RHAT_MAX = 1.01
ESS_MIN = 400
#: Below this effective sample size a fit has not explored its posterior: not converged (``Diagnostics.converged``).
ESS_CONVERGED = 100
RHAT_CONVERGED = 1.05
#: A chain whose mean log density sits this many nats (and 10 within-chain sds) below the best chain's is
#: stuck in a local mode (see :func:`stuck_chains`).
STUCK_GAP = 50.0
# Sampler internals and per-cell bookkeeping are left out of the convergence summary.
_SKIP_DIAG = ("_z", "_c")


@dataclass(frozen=True)
class Diagnostics:
    """Convergence of a fit: worst R-hat, smallest bulk/tail ESS, divergent transitions."""

    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    n_samples: int
    worst_rhat_var: str = ""
    warnings: tuple[str, ...] = ()
    #: What was done to the chains (e.g. a stuck chain dropped): reported, not a reason to distrust the fit.
    notes: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        return not self.warnings

    @property
    def converged(self) -> bool:
        """The chains roughly agree and explore (R-hat <= 1.05, ESS >= 100, divergent transitions in at most 1%
        of draws): perhaps noisy, which ``trusted`` (R-hat <= 1.01, ESS >= 400, none) does not allow, but not
        wrong. A fit that is not converged is not scored (backtests) and is fitted again (``remedies``)."""
        return (self.max_rhat <= RHAT_CONVERGED and self.divergences <= 0.01 * self.n_samples
                and min(self.min_ess_bulk, self.min_ess_tail) >= ESS_CONVERGED)

    def lines(self) -> list[str]:
        return [
            f"max R-hat {self.max_rhat:.3f} ({self.worst_rhat_var})" if np.isfinite(self.max_rhat)
            else "R-hat n/a (one chain)",
            f"min ESS bulk {self.min_ess_bulk:.0f}, tail {self.min_ess_tail:.0f} of {self.n_samples} draws",
            f"divergences {self.divergences}",
        ]


def diagnose(tree: xr.DataTree) -> Diagnostics:
    """Convergence diagnostics of a posterior, with warnings when it cannot be trusted."""
    post = tree["posterior"].to_dataset()
    names = [v for v in post.data_vars if not v.endswith(_SKIP_DIAG)]
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    # all scalars as the columns of one (chain, draw, k) array: ArviZ's estimators, vectorized (convergence.py)
    cols, owner = [], []
    for v in names:
        arr = post[v].transpose("chain", "draw", ...).values.reshape(n_chains, n_draws, -1)
        # constant entries (the reference setting's zero effect) give 0/0 inside R-hat: skip them
        keep = np.isfinite(arr).all(axis=(0, 1)) & (arr.std(axis=(0, 1)) > 0)
        cols.append(arr[:, :, keep])
        owner += [v] * int(keep.sum())
    if owner:
        rhat, ess_b, ess_t = rhat_ess(np.concatenate(cols, axis=2))
    else:
        rhat = ess_b = ess_t = np.array([np.nan])
        owner = [""]

    def worst(vals: np.ndarray, largest: bool) -> tuple[float, str]:
        if not np.isfinite(vals).any():
            return float("nan"), ""
        i = int(np.nanargmax(vals) if largest else np.nanargmin(vals))
        return float(vals[i]), owner[i]

    max_rhat, worst_var = worst(rhat, True)
    min_b, _ = worst(ess_b, False)
    min_t, _ = worst(ess_t, False)
    div = int(tree["sample_stats"]["diverging"].sum()) if "diverging" in tree["sample_stats"] else 0
    msgs = []
    if n_chains < 2:
        msgs.append("only one chain: R-hat cannot detect non-convergence; run at least 2 chains")
    if n_chains >= 2 and not (max_rhat <= RHAT_MAX):
        msgs.append(f"R-hat {max_rhat:.3f} > {RHAT_MAX} for '{worst_var}': chains disagree; run longer (--tune, --draws)")
    if not (min_b >= ESS_MIN and min_t >= ESS_MIN):
        msgs.append(
            f"effective sample size {min(min_b, min_t):.0f} < {ESS_MIN}: quantiles are noisy; increase --draws"
        )
    if div:
        msgs.append(f"{div} divergent transitions: the posterior may be biased; treat the forecast with caution, "
                    "or refit with a smaller step size (--target-accept 0.99)")
    dropped = str(tree["posterior"].attrs.get("dropped_chains", ""))
    notes = (f"chain(s) {dropped} stuck in a local mode, mean log density {tree['posterior'].attrs.get('dropped_gap')} "
             f"below the best chain's: dropped; the posterior is from the other {n_chains} chains",) if dropped else ()
    notes += tuple(line for line in str(tree["posterior"].attrs.get(COMPILE_CACHE_ATTR, "")).split("\n") if line)
    if tree["posterior"].attrs.get(REMEDY_ATTR):
        notes += (str(tree["posterior"].attrs[REMEDY_ATTR]),)
    return Diagnostics(max_rhat, min_b, min_t, div, n_chains * n_draws, worst_var, tuple(msgs), notes)


def stuck_chains(logp: np.ndarray) -> list[int]:
    """Chains stuck in a local mode: mean log density more than ``STUCK_GAP`` nats and 10 pooled within-chain
    sds below the best chain's, when they are fewer than half of the chains (else none: no majority to go by).

    Such a chain sits in a basin that holds no appreciable posterior mass: for that, its volume would have
    to make up e**gap. Seen on Pythia LAMBADA (4 chains): one chain at item spread 7.2 with mean log density
    -1509 against -35 for the three others (R-hat 1.54, ESS 7); modes of comparable mass differ by a few
    nats per parameter whose scale differs, far less than this.

    Parameters
    ----------
    logp : ndarray, shape (chain, draw)
        Log density of each draw.
    """
    logp = np.asarray(logp, dtype=float)
    if logp.ndim != 2 or logp.shape[0] < 3 or not np.isfinite(logp).all():
        return []
    mean = logp.mean(axis=1)
    sd = float(np.sqrt(np.mean(logp.var(axis=1))))
    gap = mean.max() - mean
    out = [int(c) for c in np.flatnonzero(gap > max(STUCK_GAP, 10.0 * sd))]
    return out if len(out) < logp.shape[0] / 2 else []


def _drop_stuck(tree: xr.DataTree) -> xr.DataTree:
    """``tree`` without the chains :func:`stuck_chains` finds (recorded in the posterior's attributes)."""
    ss = tree["sample_stats"].to_dataset()
    name = next((k for k in ("logp", "lp") if k in ss), None)
    if name is None:
        return tree
    logp = ss[name].transpose("chain", "draw").values
    stuck = stuck_chains(logp)
    if not stuck:
        return tree
    mean = logp.mean(axis=1)
    keep = [c for c in range(len(mean)) if c not in stuck]
    gap = float(mean.max() - mean[stuck].max())
    out = xr.DataTree(children={g: xr.DataTree(tree[g].to_dataset().isel(chain=keep)) for g in tree.children})
    out["posterior"].attrs["dropped_chains"] = ", ".join(str(c) for c in stuck)
    out["posterior"].attrs["dropped_gap"] = f"{gap:.0f}"
    return out


@dataclass
class FitResult:
    """A fitted forecaster model.

    Attributes
    ----------
    tree : xarray.DataTree
        ``posterior``, ``sample_stats`` and ``forecaster`` (input table and spec).
    data : pandas.DataFrame
        The validated tidy input table.
    spec : ModelSpec
        The model specification used.
    cells : CellData
        Sufficient statistics the model was built from.
    diagnostics : Diagnostics
        Convergence summary.
    options : dict
        How it was sampled (seed, draws, sampler, ...).
    structure : Structure
        The model as fitted: every "auto" of the spec resolved on these data.
    """

    tree: xr.DataTree
    data: pd.DataFrame
    spec: ModelSpec
    cells: CellData
    diagnostics: Diagnostics
    options: dict = field(default_factory=dict)
    structure: Structure | None = None

    def __post_init__(self):
        if self.structure is None:
            self.structure = resolve_structure(self.cells, self.spec)

    @property
    def posterior(self) -> xr.Dataset:
        return self.tree["posterior"].to_dataset()

    @property
    def tasks(self) -> list[str]:
        return list(self.cells.tasks)

    def summary(self) -> pd.DataFrame:
        """Posterior summary (mean, sd, intervals, R-hat, ESS) of the main parameters."""
        post = self.posterior
        names = [v for v in post.data_vars if not v.endswith(_SKIP_DIAG) and v != "mu_cell"]
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return az.summary(self.tree, var_names=names)


def _to_dataset(df: pd.DataFrame) -> xr.Dataset:
    out = {}
    for col in STORED_COLUMNS:
        if col not in df.columns:
            continue
        s = df[col]
        if col in ("family", "model", "task", "setting", "kind", "item"):
            out[col] = ("row", s.where(s.notna(), "").astype(str).to_numpy(dtype=object))
        else:
            out[col] = ("row", s.to_numpy(dtype=float))
    return xr.Dataset(out)


def table_from_dataset(ds: xr.Dataset) -> pd.DataFrame:
    """Inverse of the stored input table (strings back, empty items as NaN)."""
    df = pd.DataFrame({k: ds[k].values for k in ds.data_vars})
    for col in ("family", "model", "task", "setting", "kind", "item"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    if "item" in df.columns:
        df.loc[df["item"] == "", "item"] = np.nan
    return df


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ForecasterError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    if sampler == "numpyro" and importlib.util.find_spec("numpyro") is None:
        raise ForecasterError("sampler 'numpyro' needs JAX and NumPyro: pip install 'forecaster[numpyro]'")
    if sampler == "nutpie" and importlib.util.find_spec("nutpie") is None:
        raise ForecasterError("sampler 'nutpie' is not installed: pip install nutpie, or use --sampler pymc")


def fit(
    data: pd.DataFrame | str | Path | list,
    *,
    model: str | Path | ModelSpec | None = None,
    seed: int = 0,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    sampler: str = "nutpie",
    target_accept: float = 0.95,
    allow_single_compute: bool = False,
    progressbar: bool = False,
    c0: float | None = None,
    status: Callable[[str], None] | None = None,
    remedies: bool = True,
    log_likelihood: bool = True,
) -> FitResult:
    """Fit the hierarchical scaling model.

    Parameters
    ----------
    data : DataFrame, path or list of paths
        The tidy table (validated here if it is not already).
    model : str, path or ModelSpec, optional
        Shipped spec name (``"default"``), path to a TOML spec, or a parsed spec.
    seed : int
        Random seed; the same data and seed give the same posterior.
    draws, tune, chains : int
        Posterior draws and tuning steps per chain, and the number of chains.
    sampler : {"nutpie", "pymc", "numpyro"}
        NUTS implementation.
    target_accept : float
        NUTS target acceptance rate.
    allow_single_compute : bool
        Fit tasks seen at a single compute through the pooled slope prior.
    progressbar : bool
        Show the sampler's progress bar.
    c0 : float, optional
        Centre of log10 compute (default: median over cells).
    status : callable, optional
        Receives a line of text when a step will take long: before the model is compiled for nutpie (the
        first fit of a design on this machine; later fits load it from the compile cache), and why the compile
        cache was not used when it was not (also recorded in the diagnostics' notes; without ``status``, a
        ``UserWarning``).
    remedies : bool
        When a fit of at least ``REMEDY_MIN_DRAWS`` draws and two chains is not trusted (not converged, or any
        divergent transition or other warning), fit once more with
        twice the tuning steps and ``target_accept`` 0.99 (and twice the draws where the effective sample size
        was below ``ESS_MIN``), and keep the better fit (said in the diagnostics' notes; the options record what
        was kept).
    log_likelihood : bool
        Keep the observed data and each cell's pointwise log-likelihood (for LOO and checks; ~1-2 s); off for
        fits that are only forecast from (backtests).

    Returns
    -------
    FitResult
    """
    _check_sampler(sampler)
    for name, val, lo in (("draws", draws, 1), ("tune", tune, 0), ("chains", chains, 1)):
        if int(val) < lo:
            raise ForecasterError(f"--{name} must be >= {lo}, got {val}")
    if not 0 < float(target_accept) < 1:
        raise ForecasterError(f"--target-accept must lie in (0, 1), e.g. 0.95 or 0.99; got {target_accept:g}")
    if isinstance(data, pd.DataFrame):
        table = data if "kind" in data.columns else validate(data, allow_single_compute=allow_single_compute)
    else:
        table = load_table(data, allow_single_compute=allow_single_compute)
    spec = model if isinstance(model, ModelSpec) else load_spec(model)
    cells = summarize(table, c0=c0)
    structure = resolve_structure(cells, spec)
    pm_model = build_model(cells, spec, structure)

    kwargs = dict(
        draws=int(draws), tune=int(tune), chains=int(chains), random_seed=int(seed), progressbar=progressbar,
        target_accept=float(target_accept), compute_convergence_checks=False, nuts_sampler=sampler,
    )
    if sampler == "pymc":
        kwargs["cores"] = min(int(chains), os.cpu_count() or 1)
    digest = model_digest(cells, spec)
    tree = _drop_stuck(_tidy_tree(_sample(pm_model, cells, kwargs, digest, status)))
    remedy = ""
    if remedies and int(draws) >= REMEDY_MIN_DRAWS and int(chains) >= 2:
        first = diagnose(tree)
        if not first.trusted:  # the remedy: longer tuning and smaller steps, once; the better of the two is kept
            kwargs2 = dict(kwargs, tune=2 * max(int(tune), 500), target_accept=max(0.99, float(target_accept)))
            if min(first.min_ess_bulk, first.min_ess_tail) < ESS_MIN:  # too few effective draws: twice the draws too
                kwargs2["draws"] = 2 * int(draws)
            what = "not converged" if not first.converged else "not trusted"
            again = (f"{kwargs2['tune']} tuning steps"
                     + (f", {kwargs2['draws']} draws" if kwargs2["draws"] != int(draws) else "")
                     + f" and target_accept {kwargs2['target_accept']:g}")
            if status is not None:
                status(f"{what} ({first.warnings[0].split(':')[0]}): fitting again with {again}")
            tree2 = _drop_stuck(_tidy_tree(_sample(pm_model, cells, kwargs2, digest, None)))
            second = diagnose(tree2)
            better = _rank(second) >= _rank(first)
            if better:
                tree, kwargs = tree2, kwargs2
            outcome = "converged" if second.converged and second.trusted else (
                "converged, still warned" if second.converged else "still not converged")
            remedy = (f"{what} with {int(tune)} tuning steps ({'; '.join(first.lines())}); refitted with "
                      f"{again}: {outcome}"
                      f"{'' if better else ', so the first fit is kept'}")
            tree["posterior"].attrs[REMEDY_ATTR] = remedy
    if log_likelihood:
        tree = with_likelihood(tree, pm_model, cells)
    post = tree["posterior"].to_dataset()
    extra = setting_population_draws(post, spec, len(cells.tasks), int(seed))
    if extra:  # the pooled setting shifts, integrated out of the sampled model, drawn from their conditional
        tree["posterior"] = xr.DataTree(post.assign(extra))
    options = dict(
        seed=int(seed), draws=int(kwargs["draws"]), tune=int(kwargs["tune"]), chains=int(chains), sampler=sampler,
        target_accept=float(kwargs["target_accept"]), allow_single_compute=bool(allow_single_compute),
    )
    meta = _to_dataset(table)
    meta.attrs.update(
        spec_text=spec.text, spec_name=spec.name, c0=float(cells.c0), structure=structure.to_json(),
        settings=list(cells.settings), **{f"option_{k}": str(v) for k, v in options.items()},
    )
    tree["forecaster"] = xr.DataTree(meta)
    return FitResult(tree=tree, data=table, spec=spec, cells=cells, diagnostics=diagnose(tree), options=options,
                     structure=structure)


def _rank(d: Diagnostics) -> tuple:
    """How good a fit is, for the remedy's choice (larger is better): converged, trusted, fewer warnings, a smaller
    share of divergent draws (a refit may draw more), a smaller R-hat."""
    return (d.converged, d.trusted, -len(d.warnings), -d.divergences / max(d.n_samples, 1), -d.max_rhat)


def _sample(pm_model: pm.Model, cells: CellData, kwargs: dict, digest: str, status):
    """Posterior draws of ``pm_model`` with the sampler and settings in ``kwargs`` (an InferenceData)."""
    initvals, jitter_rvs = _spread_start(pm_model, len(cells.tasks))
    if kwargs["nuts_sampler"] == "nutpie":
        return _sample_nutpie(pm_model, initvals, jitter_rvs, kwargs, digest, status)
    # PyMC's and NumPyro's own start points jitter every variable (numpyro on the demo: one chain in the
    # spurious mode, R-hat 1.53), so the chains get the start points nutpie's get: jittered except the spread
    kwargs = dict(kwargs, initvals=_start_points(pm_model, initvals, jitter_rvs, kwargs["random_seed"],
                                                 kwargs["chains"]))
    if kwargs["nuts_sampler"] == "pymc":
        kwargs["init"] = "adapt_diag"  # the start points above, not jittered again
    else:
        kwargs["nuts"] = {"jitter": False}
    with pm_model, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pm.sample(**kwargs)


def observed_data(pm_model: pm.Model) -> xr.Dataset:
    """The model's observed values (sufficient statistics per cell or item group), with their dimensions."""
    from pymc.backends.arviz import find_observations

    out = {}
    for name, arr in find_observations(pm_model).items():
        dims = pm_model.named_vars_to_dims.get(name, (f"{name}_dim_0",))
        out[name] = xr.DataArray(np.asarray(arr), dims=dims, coords={d: list(pm_model.coords[d]) for d in dims
                                                                     if d in pm_model.coords})
    return xr.Dataset(out)


def with_likelihood(tree: xr.DataTree, pm_model: pm.Model, cells: CellData) -> xr.DataTree:
    """``tree`` with ``observed_data`` and a ``log_likelihood`` group: ``obs`` (chain, draw, cell), each
    cell's log-likelihood (all its observations), so that ``az.loo(tree)`` leaves out one cell at a time.

    The item-group terms of balanced per-item data (variance components shared by a group's cells) are
    spread evenly over the group's cells.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(tree, model=pm_model, extend_inferencedata=False, progressbar=False)
    ll = ll.to_dataset() if isinstance(ll, xr.DataTree) else ll
    post = tree["posterior"].to_dataset()
    total = np.zeros((post.sizes["chain"], post.sizes["draw"], cells.n_cells))
    for name, da in ll.data_vars.items():
        (dim,) = [d for d in da.dims if d not in ("chain", "draw")]
        vals = da.transpose("chain", "draw", dim).values
        if dim == "item_group":
            member = cells.cell_group[None, :] == np.arange(vals.shape[2])[:, None]
            total += np.einsum("cdg,gk->cdk", vals, member / member.sum(axis=1, keepdims=True))
        else:
            np.add.at(total, (slice(None), slice(None), np.asarray(da[dim].values, int)), vals)
    obs = xr.DataArray(total, dims=("chain", "draw", "cell"),
                       coords={"chain": post["chain"], "draw": post["draw"], "cell": np.arange(cells.n_cells)})
    out = tree.copy()
    out["log_likelihood"] = xr.DataTree(xr.Dataset({"obs": obs}))
    out["observed_data"] = xr.DataTree(observed_data(pm_model))
    return out


def _spread_start(pm_model: pm.Model, n_tasks: int) -> tuple[dict, set]:
    """Start values of the item spread (not jittered) and the variables to jitter, for every sampler."""
    # Every chain starts at a moderate item spread, unjittered: with aggregate CE and counts
    # alone a spurious large-spread mode exists (it explains the CE away as sampling noise); chains jittered
    # into it stayed there (simulated aggregate tasks: sigma_item 2.9 vs true 0.8, R-hat 1.8).
    spread = {pm_model["sigma_item"]}
    for name in ("item_persistence", "item_persistence_free"):
        if name in pm_model.named_vars and pm_model[name] in pm_model.free_RVs:
            spread.add(pm_model[name])
    initvals = {"sigma_item": np.ones(n_tasks)}
    # ... and at a growing spread: a constant large spread is the same spurious mode for CE with accuracy
    # (Pythia LAMBADA: a chain started near spread_slope 0 stayed at sigma_item ~3, R-hat 1.8)
    for name in ("spread_slope", "spread_slope_free"):
        if name in pm_model.named_vars and pm_model[name] in pm_model.free_RVs:
            spread.add(pm_model[name])
            # its length from its static shape, else one per task (dims): compiling the initial-point function
            # just to read it cost 0.3 s
            n = pm_model[name].type.shape[0]
            initvals[name] = np.full(n_tasks if n is None else int(n), 0.15)
    return initvals, set(pm_model.free_RVs) - spread


def _start_points(pm_model: pm.Model, initvals: dict, jitter_rvs: set, seed: int, chains: int) -> list[dict]:
    """One start point per chain (untransformed values by name): prior support points with ``initvals``
    applied, ``jitter_rvs`` jittered by U(-1, 1) on the sampler's scale, seeded from ``seed``."""
    from pymc.initial_point import make_initial_point_fn

    point_fn = make_initial_point_fn(model=pm_model, overrides=initvals, jitter_rvs=jitter_rvs,
                                     return_transformed=False)
    seeds = np.random.default_rng([seed, 0x5EED]).integers(2**30, size=chains)
    return [point_fn(int(s)) for s in seeds]


def _sample_nutpie(pm_model: pm.Model, initvals: dict, jitter_rvs: set, kwargs: dict, inputs: str | None = None,
                   status: Callable[[str], None] | None = None):
    """What ``pm.sample(nuts_sampler="nutpie", ...)`` does (same seeds, same draws), with a cached compile."""
    import nutpie
    from pymc.backends.arviz import patch_nutpie_idata

    from .compile_cache import compile_nutpie

    cache_lines: list[str] = []  # why the compile cache was not used (or an entry was replaced): said, and recorded

    def cache_problem(line: str) -> None:
        cache_lines.append(line)
        if status is not None:
            status(line)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile_nutpie(pm_model, initial_points=initvals, jitter_rvs=jitter_rvs, inputs=inputs,
                                  on_compile=None if status is None else lambda: status(COMPILE_NOTICE),
                                  on_problem=cache_problem)
        seed = int(np.random.default_rng(kwargs["random_seed"]).spawn(kwargs["chains"])[0].integers(2**30))
        t0 = time.time()
        idata = nutpie.sample(
            compiled, draws=kwargs["draws"], tune=max(1, kwargs["tune"]), chains=kwargs["chains"],
            cores=min(4, os.cpu_count() or 1), seed=seed, target_accept=kwargs["target_accept"],
            save_warmup=False, progress_bar=bool(kwargs["progressbar"]),
        )
        patch_nutpie_idata(idata, pm_model, sampling_time=time.time() - t0)
    if cache_lines:
        idata.posterior.attrs[COMPILE_CACHE_ATTR] = "\n".join(cache_lines)
        if status is None:
            for line in cache_lines:
                warnings.warn(line, UserWarning, stacklevel=3)
    return idata


def _tidy_tree(idata) -> xr.DataTree:
    """Keep posterior and sample_stats (drop warm-up groups) as a DataTree; per-draw Python objects (nutpie
    0.16.10's ``divergence_message``, mostly None) are dropped: netCDF cannot store them."""
    if not isinstance(idata, xr.DataTree):
        idata = az.convert_to_datatree(idata)
    keep = {}
    for g in ("posterior", "sample_stats"):
        if g in idata.children:
            ds = idata[g].to_dataset()
            if g == "sample_stats":
                ds = ds.drop_vars([n for n, v in ds.data_vars.items() if v.dtype == object])
            keep[g] = xr.DataTree(ds)
    return xr.DataTree(children=keep)
