"""Backtests: fit on the smaller models, forecast the held-out larger ones, and score the forecasts.

A backtest answers "had we used this forecaster before the large models were
trained, how good would its forecasts have been?". It

1. **splits** the validated tidy table by compute (:func:`make_splits`):

   * ``holdout_largest=N`` (or a list of such ``N``, one fold each: a rolling
     origin by model size): within each family, hold out the ``N`` largest
     *base* models. A base model is the model name with a trailing
     ``@step<N>`` removed, so all checkpoints of one model go together (the
     long importer names Pythia checkpoints ``pythia-1b@step143000``); base
     models are ranked by their largest compute.
   * ``holdout_above=C``: hold out every row with ``compute > C`` FLOPs.
   * ``folds=K`` (rolling origin): ``K`` cuts at the ``j/(K+1)`` quantiles
     (``j = 1..K``) of the distinct log10 compute values of the data; each
     fold trains on ``compute <= cut`` and forecasts everything above it.

   A split is refused (:class:`~forecaster.errors.ForecasterError`, one
   line) when it leaves any task with fewer than two compute levels in
   training, holds out nothing, leaves nothing with exact-match counts to
   score, or (``holdout_largest``) holds out all of a family's models. With a
   compute cut, a family that lies wholly above it cannot be forecast: its
   cells are skipped with a note.

2. **predicts** each held-out (model, task, setting) cell that has
   exact-match counts, with every method in ``methods``:

   * ``forecaster``: the hierarchical model (``model``, default spec). Each
     held-out cell is a new model of the fitted model itself
     (:func:`forecaster.predict.predict`): its trend at the cell's compute
     (and params/tokens split, where known), a fresh deviation of the model
     and of its cell, exact match above the task's floor, and the model's
     own count likelihood (binomial or beta-binomial) on a test set of the
     cell's size. Each posterior draw is replicated ``replicates`` times.
   * ``unpooled``: the same, with the shipped ``unpooled`` spec (fixed
     population priors: no pooling across tasks).
   * ``logistic``: per (task, family, setting), a logistic regression of
     accuracy (binomial counts) on log10 compute fit by Newton's method, with
     quasi-binomial over-dispersion ``phi = max(1, Pearson chi2 / (m - 2))``
     over its ``m`` training points. Predictions: parameter draws from the
     Laplace approximation (covariance ``phi * H^-1``), then the test set's
     sampling noise, beta-binomial with the variance ``phi * p(1-p)/n``
     (binomial when ``phi = 1``). The baseline people use today, made
     honest about its uncertainty.

   Cells whose task, family or setting is absent from the training data are
   skipped with a note; so are cells without exact-match counts (aggregate
   CE-only rows say nothing about accuracy), and, for ``logistic``, groups
   with fewer than two training compute levels.

3. **scores** per method (:func:`score_points`): ``coverage50/80/90`` (share
   of held-out observed accuracies inside the central 50/80/90% predictive
   intervals, endpoints included), ``crps`` (continuous ranked probability
   score from the predictive samples, energy form
   ``E|Y - y| - E|Y - Y'|/2``, in percentage points) and ``mae`` (median
   absolute error of the predictive median, percentage points).

4. **crossings** per (task, family, setting) with held-out points whose
   training points all lie below ``threshold``: the method's posterior of the
   compute at which the metric reaches the threshold (for the Bayesian models
   the *trend's* crossing, as in :func:`forecaster.forecast.forecast`, with
   the task's mean answer length; for ``logistic`` where the curve reaches
   it) against the observed crossing. **Observed crossing rule**: all
   points of the group (training and held-out) in order of compute; the first
   one at or above the threshold, linearly interpolated in log10 compute with
   the point before it (which is below); null when no held-out point reaches
   the threshold. ``covered`` is whether the observed crossing lies in the
   method's central 90% interval ``[q05, q95]`` (null when not observed). A
   crossing quantile that lies beyond ``1e35`` FLOPs (never reached) is
   ``+inf`` internally and ``null`` in JSON.

Everything here is library code: no printing, no plotting, no CLI.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from .data import summarize, validate
from .errors import ForecasterError
from .fit import REMEDY_MIN_DRAWS, FitResult, fit
from .forecast import MAX_LOG10_COMPUTE, forecast
from .spec import ModelSpec, load_spec

__all__ = [
    "METHODS", "Split", "BacktestResult", "backtest", "make_splits", "base_model", "fold_cuts",
    "crps_samples", "crps_normal", "fit_logistic", "LogisticFit", "observed_crossing", "score_points",
    "metric_points", "POINT_KEYS", "SCORE_KEYS", "CROSSING_KEYS",
]

METHODS = ("forecaster", "logistic", "unpooled")
#: Keys of one JSON ``points`` record (the issue's contract).
POINT_KEYS = ("task", "family", "setting", "model", "compute", "metric", "observed", "n_items",
              "pred_q05", "pred_q25", "pred_q50", "pred_q75", "pred_q95")
#: Keys of one JSON ``scores`` object.
SCORE_KEYS = ("coverage50", "coverage80", "coverage90", "crps", "mae")
#: Keys of one JSON ``crossings`` record.
CROSSING_KEYS = ("task", "family", "setting", "threshold", "observed_log10_compute", "log10_compute_q05",
                 "log10_compute_q50", "log10_compute_q95", "covered")
_PRED_Q = (0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95)
_PRED_NAMES = ("pred_q05", "pred_q10", "pred_q25", "pred_q50", "pred_q75", "pred_q90", "pred_q95")
_LEVELS = {50: ("pred_q25", "pred_q75"), 80: ("pred_q10", "pred_q90"), 90: ("pred_q05", "pred_q95")}
_STEP = re.compile(r"@step\d+$")
METRIC = "exact_match"


# --------------------------------------------------------------------------- splits


def base_model(name: str) -> str:
    """Model name without a trailing ``@step<N>`` (checkpoints of one model share a base model)."""
    return _STEP.sub("", str(name))


@dataclass
class Split:
    """One train/test split of a validated table."""

    label: str
    train: pd.DataFrame
    test: pd.DataFrame
    holdout_above: float | None = None

    @property
    def train_models(self) -> list[str]:
        return sorted({base_model(m) for m in self.train["model"]})

    @property
    def test_models(self) -> list[str]:
        return sorted({base_model(m) for m in self.test["model"]})

    def describe(self) -> dict:
        return {"label": self.label, "holdout_above": self.holdout_above,
                "train_models": self.train_models, "test_models": self.test_models,
                "n_train_rows": int(len(self.train)), "n_test_rows": int(len(self.test))}


def _split_by_mask(data: pd.DataFrame, test_mask: pd.Series, label: str, above: float | None = None) -> Split:
    train = data[~test_mask].reset_index(drop=True)
    test = data[test_mask].reset_index(drop=True)
    train.attrs = dict(data.attrs)
    test.attrs = dict(data.attrs)
    return Split(label=label, train=train, test=test, holdout_above=above)


def split_holdout_largest(data: pd.DataFrame, n: int) -> Split:
    """Hold out each family's ``n`` largest-compute base models (all their checkpoints)."""
    n = int(n)
    if n < 1:
        raise ForecasterError(f"--holdout-largest must be >= 1 model, got {n}")
    base = data["model"].map(base_model)
    top = data.assign(_base=base).groupby(["family", "_base"])["compute"].max().reset_index()
    held = set()
    for fam, g in top.groupby("family"):
        if len(g) <= n:
            raise ForecasterError(
                f"family {fam!r} has {len(g)} model(s); --holdout-largest {n} would leave none to fit; "
                "hold out fewer models"
            )
        held |= {(fam, b) for b in g.sort_values("compute", ascending=False)["_base"].iloc[:n]}
    mask = pd.Series([(f, b) in held for f, b in zip(data["family"], base)], index=data.index)
    return _split_by_mask(data, mask, f"holdout-largest {n}")


def split_holdout_above(data: pd.DataFrame, cut: float, label: str | None = None) -> Split:
    """Hold out every row with ``compute > cut`` FLOPs."""
    cut = float(cut)
    if not (cut > 0 and math.isfinite(cut)):
        raise ForecasterError(f"--holdout-above must be a positive number of FLOPs, got {cut:g}")
    return _split_by_mask(data, data["compute"] > cut, label or f"holdout-above {cut:.3g}", above=cut)


def fold_cuts(data: pd.DataFrame, k: int) -> list[float]:
    """``k`` rolling-origin cuts (FLOPs): the ``j/(k+1)`` quantiles of the distinct log10 compute values."""
    k = int(k)
    if k < 1:
        raise ForecasterError(f"--folds must be >= 1, got {k}")
    x = np.unique(np.log10(data["compute"].to_numpy(float)))
    if len(x) < k + 2:
        raise ForecasterError(f"--folds {k} needs at least {k + 2} distinct compute values; the data have {len(x)}")
    return [float(10 ** np.quantile(x, j / (k + 1))) for j in range(1, k + 1)]


def _check_split(split: Split, data: pd.DataFrame) -> None:
    how = split.label
    if split.test.empty:
        raise ForecasterError(f"{how} holds out nothing: no rows lie beyond the cut; lower the cut")
    fam_train = set(split.train["family"])
    lost = sorted(set(data["family"]) - fam_train)
    if split.holdout_above is None and lost:
        raise ForecasterError(f"{how} leaves family {lost[0]!r} with no training models; hold out fewer models")
    levels = split.train.groupby("task")["compute"].nunique()
    for t in sorted(data["task"].unique()):
        n = int(levels.get(t, 0))
        if n < 2:
            raise ForecasterError(
                f"{how} leaves task {t!r} with {n} compute level(s) in training; a trend needs at least 2: "
                "hold out fewer models or raise the cut"
            )
    pts = metric_points(split.test)
    if pts.empty:
        raise ForecasterError(f"{how}: the held-out rows have no exact-match/accuracy counts to score; "
                              "a backtest scores accuracy, so the held-out models need n_correct, accuracy or correct")


def make_splits(data: pd.DataFrame, *, holdout_above: float | None = None,
                holdout_largest: int | Sequence[int] | None = None, folds: int | None = None) -> list[Split]:
    """The split(s) of a validated table; exactly one of the three options must be given.

    ``holdout_largest`` may be a sequence (e.g. ``[6, 5, 4, 3]``): one fold per value, a rolling origin
    by model size (fit on the smallest 2, 3, 4... models of each family, forecast the rest).
    """
    given = [o for o, v in (("--holdout-above", holdout_above), ("--holdout-largest", holdout_largest),
                            ("--folds", folds)) if v is not None]
    if len(given) != 1:
        raise ForecasterError(
            "give exactly one of --holdout-above FLOPS, --holdout-largest N or --folds K"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if holdout_largest is not None:
        ns = [holdout_largest] if np.ndim(holdout_largest) == 0 else list(holdout_largest)
        if not ns:
            raise ForecasterError("--holdout-largest needs at least one number of models")
        if len(set(int(n) for n in ns)) != len(ns):
            raise ForecasterError(f"--holdout-largest lists a number twice: {','.join(str(int(n)) for n in ns)}")
        splits = [split_holdout_largest(data, n) for n in ns]
    elif holdout_above is not None:
        splits = [split_holdout_above(data, holdout_above)]
    else:
        cuts = fold_cuts(data, folds)
        splits = [split_holdout_above(data, c, label=f"fold {j + 1}/{len(cuts)} (holdout-above {c:.3g})")
                  for j, c in enumerate(cuts)]
    for s in splits:
        _check_split(s, data)
    return splits


# --------------------------------------------------------------------------- observed points


def metric_points(df: pd.DataFrame) -> pd.DataFrame:
    """Cells of a validated table that have exact-match counts, with observed accuracy.

    Columns: ``task, family, setting, model, compute, x`` (log10 compute), ``k``
    (mean answer length), ``n_items``, ``n_correct``, ``u`` (log10 params/tokens), ``observed``.
    """
    if df.empty:
        return pd.DataFrame(columns=["task", "family", "setting", "model", "compute", "x", "k", "n_items",
                                     "n_correct", "observed"])
    c = summarize(df, c0=0.0)
    has = c.em_n > 0
    out = pd.DataFrame({
        "task": np.asarray(c.tasks, object)[c.cell_task],
        "family": np.asarray(c.families, object)[c.cell_family],
        "setting": np.asarray(c.settings, object)[c.cell_setting],
        "model": np.asarray(c.models, object)[c.cell_model],
        "compute": 10.0 ** c.cell_x,
        "x": c.cell_x,
        "k": c.cell_k,
        "n_items": c.em_n.astype(int),
        "n_correct": c.em_correct.astype(int),
        "u": c.cell_u,  # log10(params / tokens), NaN when not given
    })[has].reset_index(drop=True)
    out["compute"] = out["model"].map(c.model_compute).astype(float)
    out["observed"] = out["n_correct"] / out["n_items"]
    return out


def observed_crossing(x: np.ndarray, y: np.ndarray, threshold: float) -> float | None:
    """log10 compute at which observed points first reach ``threshold`` (see the module docstring); None if never."""
    order = np.argsort(np.asarray(x, float), kind="stable")
    x = np.asarray(x, float)[order]
    y = np.asarray(y, float)[order]
    hit = np.flatnonzero(y >= threshold)
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (threshold - y0) / (y1 - y0) * (x1 - x0))


# --------------------------------------------------------------------------- scoring


def crps_samples(samples: np.ndarray, y) -> np.ndarray:
    """CRPS of the empirical distribution of ``samples`` (last axis) at ``y``: ``E|Y - y| - E|Y - Y'|/2``.

    ``E|Y - Y'|`` over all ordered pairs (including ``Y = Y'``) via the sorted
    samples, so the cost is ``O(S log S)``.
    """
    s = np.sort(np.asarray(samples, float), axis=-1)
    y = np.asarray(y, float)
    n = s.shape[-1]
    e1 = np.mean(np.abs(s - y[..., None]), axis=-1)
    w = 2.0 * np.arange(n) - n + 1.0
    e2 = 2.0 * np.sum(s * w, axis=-1) / n**2
    return e1 - 0.5 * e2


def crps_normal(mu, sigma, y) -> np.ndarray:
    """Closed-form CRPS of ``N(mu, sigma**2)`` at ``y`` (Gneiting & Raftery 2007)."""
    from scipy.stats import norm

    z = (np.asarray(y, float) - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


def score_points(points: pd.DataFrame) -> dict:
    """``coverage50/80/90`` (shares), ``crps`` and ``mae`` (percentage points) of one method's points."""
    if points.empty:
        return {k: None for k in SCORE_KEYS}
    obs = points["observed"].to_numpy(float)
    out = {}
    for lvl, (lo, hi) in _LEVELS.items():
        inside = (obs >= points[lo].to_numpy(float) - 1e-12) & (obs <= points[hi].to_numpy(float) + 1e-12)
        out[f"coverage{lvl}"] = float(np.mean(inside))
    out["crps"] = float(np.mean(points["crps"].to_numpy(float)))
    out["mae"] = float(np.median(np.abs(points["pred_q50"].to_numpy(float) - obs)) * 100.0)
    return out


def _sample_quantile(v: np.ndarray, q: float) -> float:
    """Quantile of samples that may hold +-inf (order statistic: no inf arithmetic)."""
    s = np.sort(v)
    return float(s[int(round(q * (len(s) - 1)))])


def _crossing_record(task, family, setting, threshold, obs, draws: np.ndarray) -> dict:
    draws = np.where(draws > MAX_LOG10_COMPUTE, np.inf, draws)
    q05, q50, q95 = (_sample_quantile(draws, q) for q in (0.05, 0.5, 0.95))
    return {"task": task, "family": family, "setting": setting, "threshold": float(threshold),
            "observed_log10_compute": obs, "log10_compute_q05": q05, "log10_compute_q50": q50,
            "log10_compute_q95": q95, "covered": None if obs is None else bool(q05 <= obs <= q95)}


def _prediction_row(cell, samples: np.ndarray) -> dict:
    qs = np.quantile(samples, _PRED_Q)
    row = {"task": cell.task, "family": cell.family, "setting": cell.setting, "model": cell.model,
           "compute": float(cell.compute), "metric": METRIC, "observed": float(cell.observed),
           "n_items": int(cell.n_items)}
    row.update({name: float(v) for name, v in zip(_PRED_NAMES, qs)})
    row["crps"] = float(crps_samples(samples, cell.observed)) * 100.0
    return row


# --------------------------------------------------------------------------- methods


def _bayes_predict(fitres: FitResult, test_pts: pd.DataFrame, rng: np.random.Generator, replicates: int,
                   notes: list[str], method: str) -> list[dict]:
    """Held-out cells as new models of the fitted model itself (:func:`forecaster.predict.predict`): its trend at
    their compute (and their own params/tokens split where known), a fresh deviation of the model and of its
    cell, its metric and its count likelihood on a test set of their size."""
    from .predict import predict

    known = {"task": set(fitres.cells.tasks), "family": set(fitres.cells.families),
             "setting": set(fitres.cells.settings)}
    skipped: dict[str, set] = {}
    keep = []
    for j, cell in enumerate(test_pts.itertuples(index=False)):
        miss = [d for d in ("task", "family", "setting") if getattr(cell, d) not in known[d]]
        if miss:
            skipped.setdefault(miss[0], set()).add(getattr(cell, miss[0]))
        else:
            keep.append(j)
    for dim, vals in skipped.items():
        notes.append(f"{method}: held-out cells of {dim}(s) {', '.join(sorted(map(str, vals)))} not seen in "
                     "training were skipped")
    if not keep:
        return []
    pts = test_pts.iloc[keep].reset_index(drop=True)
    rows = pts[["task", "family", "setting", "model", "compute", "n_items"]].assign(n_tokens=pts["k"])
    u = pts["u"].to_numpy(float)
    if np.isfinite(u).all():  # the held-out models' own params/tokens split: params * tokens = compute / 6
        params = np.sqrt(pts["compute"].to_numpy(float) / 6.0 * 10.0**u)
        rows = rows.drop(columns="compute").assign(params=params, tokens=params / 10.0**u)
    pred = predict(fitres, rows, seed=int(rng.integers(2**31)), replicates=replicates)
    y = pred.draws["observed"].transpose("chain", "draw", "new").values.reshape(-1, len(pts))
    return [_prediction_row(cell, y[:, j]) for j, cell in enumerate(pts.itertuples(index=False))]


def _bayes_crossings(fitres: FitResult, groups: list[tuple], threshold: float, obs: dict,
                     test_pts: pd.DataFrame) -> list[dict]:
    """Posterior crossing compute per group; with a params/tokens effect, for models trained with the held-out
    models' median tokens per parameter (the path along which the observed crossing happened)."""
    out = []
    for t, f, s in groups:
        if t not in fitres.cells.tasks or f not in fitres.cells.families or s not in fitres.cells.settings:
            continue
        u = test_pts.loc[(test_pts.task == t) & (test_pts.family == f) & (test_pts.setting == s), "u"]
        tpp = float(10.0 ** -np.median(u)) if len(u) and np.isfinite(u).all() else None
        fc = forecast(fitres, metric=METRIC, threshold=threshold, tasks=[t], families=[f], settings=[s],
                      tokens_per_param=tpp)
        d = fc.draws["log10_compute"].values.reshape(-1)
        out.append(_crossing_record(t, f, s, threshold, obs[(t, f, s)], d))
    return out


@dataclass
class LogisticFit:
    """Logistic regression of accuracy on standardized log10 compute ``z = (x - x_mean) / x_scale``."""

    theta: np.ndarray  # (intercept, slope) on z
    cov: np.ndarray  # Laplace covariance, times the dispersion
    dispersion: float
    x_mean: float
    x_scale: float
    n_points: int

    def p(self, x, theta: np.ndarray | None = None) -> np.ndarray:
        th = self.theta if theta is None else theta
        z = (np.asarray(x, float) - self.x_mean) / self.x_scale
        return expit(th[..., 0] + th[..., 1] * z)

    def crossing(self, threshold: float, theta: np.ndarray) -> np.ndarray:
        """log10 compute where the curve reaches ``threshold`` per parameter draw (+inf never, -inf already)."""
        a, b = theta[..., 0], theta[..., 1]
        lt = math.log(threshold / (1.0 - threshold))
        out = np.where(a >= lt, -np.inf, np.inf)
        rising = b > 0
        out = np.where(rising, self.x_mean + self.x_scale * (lt - a) / np.where(rising, b, 1.0), out)
        return out


def fit_logistic(x, n, k, *, ridge: float = 1e-6, max_iter: int = 100) -> LogisticFit:
    """Binomial logistic regression of ``k`` successes out of ``n`` on ``x`` (Newton's method).

    A tiny ridge keeps separated data (all 0 or all 1) finite. The covariance is
    the inverse observed information times the quasi-binomial dispersion
    ``max(1, Pearson chi2 / (m - 2))`` (1 when ``m <= 2`` points).
    """
    x = np.asarray(x, float)
    n = np.asarray(n, float)
    k = np.asarray(k, float)
    xm = float(np.mean(x))
    xs = float(np.std(x)) or 1.0
    X = np.column_stack([np.ones_like(x), (x - xm) / xs])
    eta0 = np.log((k.sum() + 0.5) / (n.sum() - k.sum() + 0.5))
    th = np.array([eta0, 0.0])

    def loglik(t):
        eta = X @ t
        return float(np.sum(k * eta - n * np.logaddexp(0.0, eta)) - 0.5 * ridge * np.sum(t**2))

    ll = loglik(th)
    for _ in range(max_iter):
        p = expit(X @ th)
        g = X.T @ (k - n * p) - ridge * th
        H = (X * (n * p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(H, g)
        t_new, lam = th + step, 1.0
        while loglik(t_new) < ll - 1e-12 and lam > 1e-8:
            lam /= 2
            t_new = th + lam * step
        ll_new = loglik(t_new)
        done = abs(ll_new - ll) < 1e-10
        th, ll = t_new, ll_new
        if done:
            break
    p = expit(X @ th)
    H = (X * (n * p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
    m = len(x)
    phi = 1.0
    if m > 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = (k - n * p) ** 2 / np.maximum(n * p * (1 - p), 1e-12)
        phi = max(1.0, float(np.sum(r2)) / (m - 2))
    cov = phi * np.linalg.inv(H)
    return LogisticFit(theta=th, cov=cov, dispersion=phi, x_mean=xm, x_scale=xs, n_points=m)


def _logistic(train_pts: pd.DataFrame, test_pts: pd.DataFrame, groups: list[tuple], threshold: float,
              obs: dict, rng: np.random.Generator, n_draws: int, notes: list[str]) -> tuple[list, list]:
    fits: dict[tuple, LogisticFit] = {}
    skipped = []
    for key, g in train_pts.groupby(["task", "family", "setting"]):
        if g["x"].round(6).nunique() < 2:
            skipped.append("/".join(key))
            continue
        fits[key] = fit_logistic(g["x"], g["n_items"], g["n_correct"])
    rows = []
    draws = {}
    for key, lf in fits.items():
        try:
            L = np.linalg.cholesky(lf.cov)
        except np.linalg.LinAlgError:
            L = np.diag(np.sqrt(np.clip(np.diag(lf.cov), 0, None)))
        draws[key] = lf.theta + rng.standard_normal((n_draws, 2)) @ L.T
    missing = set()
    for cell in test_pts.itertuples(index=False):
        key = (cell.task, cell.family, cell.setting)
        if key not in fits:
            missing.add("/".join(key))
            continue
        lf, th = fits[key], draws[key]
        p = lf.p(cell.x, th)
        n = int(cell.n_items)
        if lf.dispersion > 1.0 and n > 1:
            kappa = max((n - 1) / (lf.dispersion - 1.0) - 1.0, 1e-3)
            p = rng.beta(np.clip(p * kappa, 1e-9, None), np.clip((1 - p) * kappa, 1e-9, None))
        y = rng.binomial(n, np.clip(p, 0.0, 1.0)) / n
        rows.append(_prediction_row(cell, y))
    if skipped:
        notes.append(f"logistic: group(s) {', '.join(skipped)} have < 2 training compute levels; not fit")
    if missing:
        notes.append(f"logistic: no fit for held-out group(s) {', '.join(sorted(missing))}; their points are "
                     "not scored for logistic")
    crossings = [_crossing_record(*key, threshold, obs[key], fits[key].crossing(threshold, draws[key]))
                 for key in groups if key in fits]
    return rows, crossings


# --------------------------------------------------------------------------- result


def _json_value(v):
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


@dataclass
class BacktestResult:
    """Result of :func:`backtest`.

    Attributes
    ----------
    points : pandas.DataFrame
        One row per held-out (model, task, setting) cell, method and fold:
        ``method, fold, task, family, setting, model, compute, metric,
        observed, n_items, pred_q05 .. pred_q95`` (also q10/q90) and ``crps``
        (percentage points).
    scores : pandas.DataFrame
        One row per method (folds pooled): ``coverage50, coverage80,
        coverage90, crps, mae`` and ``n_points``. Folds in which a Bayesian
        fit did not converge (``excluded_folds``) are left out, for every
        method, so that all are scored on the same points.
    crossings : pandas.DataFrame
        One row per (task, family, setting), method and fold still below the
        threshold in training: the ``CROSSING_KEYS`` plus ``method``, ``fold``
        and ``error_decades`` (predicted median minus observed).
    fold_scores : pandas.DataFrame
        ``scores`` per fold (one fold without ``folds``).
    splits : list of dict
        What each fold fit and held out. A ``fold`` value anywhere in the
        result is the position of its split in this list (0-based, so
        ``splits[fold]``); the split's ``label`` counts from 1 ("fold 1/4").
    diagnostics : dict
        Convergence of each Bayesian fit: ``{str(fold): {method: {...}}}``.
    notes : list of str
        What was skipped and why; untrusted fits.
    excluded_folds : list of int
        Folds left out of ``scores`` because a Bayesian fit in them did not converge (named in ``notes``).
    scores_all : pandas.DataFrame
        ``scores`` with every fold, the unconverged ones included (for comparison).
    """

    points: pd.DataFrame
    scores: pd.DataFrame
    crossings: pd.DataFrame
    fold_scores: pd.DataFrame
    splits: list[dict]
    threshold: float
    methods: tuple[str, ...]
    diagnostics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    excluded_folds: list[int] = field(default_factory=list)
    scores_all: pd.DataFrame | None = None

    def crossing_scores(self) -> pd.DataFrame:
        """Per method: ``n_groups`` (crossings forecast), ``n_observed`` (seen in the held-out data),
        ``median_abs_error_decades`` (|predicted median - observed|; ``inf`` where the median crossing is
        never reached; JSON null) and ``crossing_coverage90`` (share of observed inside [q05, q95])."""
        rows = []
        crossings = self.crossings
        if len(crossings) and self.excluded_folds:  # like the scores: converged folds only
            crossings = crossings[~crossings["fold"].isin(self.excluded_folds)]
        for m in self.methods:
            c = crossings[crossings["method"] == m] if len(crossings) else crossings
            seen = c[c["observed_log10_compute"].notna()] if len(c) else c
            err = np.abs(seen["error_decades"].to_numpy(float)) if len(seen) else np.array([])
            rows.append({"method": m, "n_groups": int(len(c)), "n_observed": int(len(seen)),
                         "median_abs_error_decades": float(np.median(err)) if len(err) else np.nan,
                         "crossing_coverage90": float(np.mean(seen["covered"].astype(bool))) if len(seen) else np.nan})
        return pd.DataFrame(rows)

    def _points_records(self, method: str, fold: int | None = None) -> list[dict]:
        p = self.points[self.points["method"] == method]
        if fold is not None:
            p = p[p["fold"] == fold]
        return [{k: _json_value(r[k]) for k in POINT_KEYS} for _, r in p.iterrows()]

    def _crossing_records(self, method: str, fold: int | None = None) -> list[dict]:
        c = self.crossings
        if c.empty:
            return []
        c = c[c["method"] == method]
        if fold is not None:
            c = c[c["fold"] == fold]
        return [{k: _json_value(r[k]) for k in CROSSING_KEYS} for _, r in c.iterrows()]

    def _scores_dict(self, df: pd.DataFrame) -> dict:
        return {r["method"]: {k: _json_value(r[k]) for k in SCORE_KEYS} for _, r in df.iterrows()}

    def to_json_dict(self) -> dict:
        """One JSON-ready object.

        ``points``, ``scores`` and ``crossings`` follow the issue's contract
        exactly (``points``/``crossings`` are the ``forecaster`` method's, or the
        first method's when it was not run; with folds, all folds in order).
        Extra keys: ``points_by_method`` and ``crossings_by_method`` (every
        method, same record keys), ``crossing_scores``, ``folds`` (per fold:
        split, scores, points, crossings), ``diagnostics``, ``notes``,
        ``threshold``, ``methods``.
        """
        main = "forecaster" if "forecaster" in self.methods else self.methods[0]
        folds = []
        for i, sp in enumerate(self.splits):
            fs = self.fold_scores[self.fold_scores["fold"] == i]
            folds.append({"fold": i, "split": sp, "scores": self._scores_dict(fs),
                          "points": self._points_records(main, i), "crossings": self._crossing_records(main, i)})
        cs = self.crossing_scores()
        return {
            "points": self._points_records(main),
            "scores": self._scores_dict(self.scores),
            "crossings": self._crossing_records(main),
            "points_by_method": {m: self._points_records(m) for m in self.methods},
            "crossings_by_method": {m: self._crossing_records(m) for m in self.methods},
            "crossing_scores": {r["method"]: {k: _json_value(v) for k, v in r.items() if k != "method"}
                                for _, r in cs.iterrows()},
            "folds": folds,
            "excluded_folds": list(self.excluded_folds),
            "scores_all_folds": self._scores_dict(self.scores if self.scores_all is None else self.scores_all),
            "threshold": float(self.threshold),
            "methods": list(self.methods),
            "diagnostics": self.diagnostics,
            "notes": list(self.notes),
        }

    def scores_table(self) -> pd.DataFrame:
        """Scores and crossing scores side by side, one row per method."""
        cs = self.crossing_scores()
        return self.scores.merge(cs, on="method", how="left")

    def markdown(self) -> str:
        """The scores (and crossings) as a markdown table, for a README."""
        t = self.scores_table()
        lines = ["| method | points | cov. 50% | cov. 80% | cov. 90% | CRPS (pp) | median abs. err. (pp) "
                 "| crossings observed | crossing \\|err\\| (decades) | crossing in 90% |",
                 "|---|---|---|---|---|---|---|---|---|---|"]

        def f(v, fmt):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                return "–"
            return "∞" if isinstance(v, float) and np.isinf(v) else format(v, fmt)

        for _, r in t.iterrows():
            lines.append(
                f"| {r['method']} | {int(r['n_points'])} | {f(r['coverage50'], '.2f')} | {f(r['coverage80'], '.2f')} "
                f"| {f(r['coverage90'], '.2f')} | {f(r['crps'], '.2f')} | {f(r['mae'], '.2f')} "
                f"| {int(r['n_observed'])}/{int(r['n_groups'])} | {f(r['median_abs_error_decades'], '.2f')} "
                f"| {f(r['crossing_coverage90'], '.2f')} |"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- driver


def backtest(
    data: pd.DataFrame,
    *,
    holdout_above: float | None = None,
    holdout_largest: int | Sequence[int] | None = None,
    folds: int | None = None,
    threshold: float = 0.5,
    methods: Sequence[str] = METHODS,
    model: str | ModelSpec | None = None,
    seed: int = 0,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    sampler: str = "nutpie",
    target_accept: float = 0.95,
    replicates: int = 4,
    logistic_draws: int = 4000,
    progressbar: bool = False,
) -> BacktestResult:
    """Fit on the models below the cut, forecast the held-out ones, and score every method (module docstring).

    Parameters
    ----------
    data : pandas.DataFrame
        The tidy table (validated here if it is not already).
    holdout_above, holdout_largest, folds
        The split: exactly one (see :func:`make_splits`; a sequence of ``holdout_largest`` values is a
        rolling origin by model size, one fold each, scores pooled over folds and also per fold).
    threshold : float
        Accuracy level whose crossing compute is forecast and checked.
    methods : sequence of {"forecaster", "logistic", "unpooled"}
    model : str or ModelSpec, optional
        Spec of the ``forecaster`` method (default: the shipped default).
    seed, draws, tune, chains, sampler, target_accept
        Passed to :func:`forecaster.fit.fit` for each Bayesian fit.
    replicates : int
        Predictive replicates per posterior draw (new-cell deviation and binomial noise).
    logistic_draws : int
        Laplace parameter draws for the logistic baseline.

    Returns
    -------
    BacktestResult
    """
    methods = tuple(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ForecasterError(f"unknown method {bad[0] if bad else '(none)'!r}; choose from {', '.join(METHODS)}")
    if not (0.0 < float(threshold) < 1.0):
        raise ForecasterError(f"--threshold must be an accuracy in (0, 1), got {threshold:g}")
    if int(replicates) < 1:
        raise ForecasterError(f"replicates must be >= 1, got {replicates}")
    table = data if "kind" in data.columns else validate(data, allow_single_compute=True)
    splits = make_splits(table, holdout_above=holdout_above, holdout_largest=holdout_largest, folds=folds)
    specs = {"forecaster": model if isinstance(model, ModelSpec) else load_spec(model),
             "unpooled": load_spec("unpooled")}

    notes: list[str] = []
    n_ce_only = 0
    all_rows, all_cross, fold_scores, diagnostics, timings = [], [], [], {}, {}
    unconverged: dict[int, list[str]] = {}
    for fi, split in enumerate(splits):
        train_pts = metric_points(split.train)
        test_pts = metric_points(split.test)
        n_ce_only += int(split.test.groupby(["model", "task", "setting"]).ngroups - len(test_pts))
        # crossing groups: held-out points present, training points all below the threshold
        obs, groups, already = {}, [], []
        for key, g in test_pts.groupby(["task", "family", "setting"]):
            tr = train_pts[(train_pts.task == key[0]) & (train_pts.family == key[1]) & (train_pts.setting == key[2])]
            if len(tr) and (tr["observed"] >= threshold).any():
                already.append("/".join(key))
                continue
            both = pd.concat([tr, g])
            seen_test = (g["observed"] >= threshold).any()
            obs[key] = observed_crossing(both["x"], both["observed"], threshold) if seen_test else None
            groups.append(key)
        if already:
            notes.append(f"{split.label}: {', '.join(already)} already reach {threshold:g} in training; "
                         "no crossing to forecast there")
        rows_by_method, cross_by_method = {}, {}
        for m in methods:
            t0 = time.perf_counter()
            rng = np.random.default_rng([int(seed), fi, METHODS.index(m)])
            if m == "logistic":
                rows, cross = _logistic(train_pts, test_pts, groups, threshold, obs, rng, int(logistic_draws), notes)
            else:
                fr = fit(split.train, model=specs[m], seed=seed, draws=draws, tune=tune, chains=chains,
                         sampler=sampler, target_accept=target_accept, allow_single_compute=True,
                         progressbar=progressbar, log_likelihood=False)
                d = fr.diagnostics
                diagnostics.setdefault(str(fi), {})[m] = {
                    "max_rhat": _json_value(d.max_rhat), "min_ess_bulk": _json_value(d.min_ess_bulk),
                    "min_ess_tail": _json_value(d.min_ess_tail), "divergences": int(d.divergences),
                    "n_samples": int(d.n_samples), "trusted": bool(d.trusted)}
                notes.extend(f"{split.label}: the {m} fit: {n}" for n in d.notes)
                if not d.converged and int(draws) >= REMEDY_MIN_DRAWS:
                    unconverged.setdefault(fi, []).append(m)
                    notes.append(f"{split.label}: the {m} fit did not converge ({'; '.join(d.lines())}); "
                                 "this fold is left out of the pooled scores")
                elif not d.converged:
                    notes.append(f"{split.label}: the {m} fit did not converge ({'; '.join(d.lines())}); an "
                                 f"exploratory run (draws < {REMEDY_MIN_DRAWS}), scored anyway")
                elif not d.trusted:
                    notes.append(f"{split.label}: the {m} fit converged but is noisy ({'; '.join(d.warnings)})")
                rows = _bayes_predict(fr, test_pts, rng, int(replicates), notes, m)
                cross = _bayes_crossings(fr, groups, threshold, obs, test_pts)
            timings[f"{fi}/{m}"] = time.perf_counter() - t0
            for r in rows:
                r.update(method=m, fold=fi)
            for c in cross:
                o, q50 = c["observed_log10_compute"], c["log10_compute_q50"]
                c.update(method=m, fold=fi, error_decades=(q50 - o) if o is not None else np.nan)
            rows_by_method[m], cross_by_method[m] = rows, cross
            all_rows.extend(rows)
            all_cross.extend(cross)
            fold_scores.append({"fold": fi, "method": m, **score_points(pd.DataFrame(rows)), "n_points": len(rows)})
    if n_ce_only:
        notes.append(f"{n_ce_only} held-out cell(s) have cross-entropy only (no exact-match counts) and are not "
                     "scored: a backtest scores accuracy")
    cols = ["method", "fold", *POINT_KEYS[:-5], *_PRED_NAMES, "crps"]
    points = pd.DataFrame(all_rows, columns=cols)
    def pooled(pts: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame([{"method": m, **score_points(pts[pts.method == m]),
                              "n_points": int((pts.method == m).sum())} for m in methods])

    excluded = sorted(unconverged)
    scores_all = pooled(points)
    scores = pooled(points[~points["fold"].isin(excluded)]) if excluded else scores_all
    ccols = ["method", "fold", *CROSSING_KEYS, "error_decades"]
    crossings = pd.DataFrame(all_cross, columns=ccols)
    return BacktestResult(points=points, scores=scores, crossings=crossings, fold_scores=pd.DataFrame(fold_scores),
                          splits=[s.describe() for s in splits], threshold=float(threshold), methods=methods,
                          diagnostics=diagnostics, notes=list(dict.fromkeys(notes)), timings=timings,
                          excluded_folds=excluded, scores_all=scores_all)
