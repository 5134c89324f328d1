"""forecaster: Bayesian scaling forecasts of language-model capabilities.

Model the smooth quantity (per-token cross-entropy, a power law in compute),
push its posterior through the sharp metric (exact match over k tokens, ...),
and report the posterior of the compute at which a threshold is crossed.

>>> import forecaster as fc
>>> data = fc.load_data("results.csv")            # doctest: +SKIP
>>> fit = fc.fit(data, seed=1)                     # doctest: +SKIP
>>> fc.forecast(fit, metric="exact_match", threshold=0.5, budget=1e25).table  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backtest import BacktestResult, backtest
from .data import load_table as load_data
from .data import validate
from .effects import SettingEffects, setting_effects
from .errors import DataError, ForecasterError, QueryError, SpecError
from .fit import Diagnostics, FitResult, fit
from .forecast import Forecast, forecast, metric_curve, trend
from .io import load_fit, save_fit
from .metrics import metric_value
from .simulate import demo_data, simulate
from .spec import load_spec

__version__ = "0.1.0"

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_forecast(
    fit: FitResult,
    task: str,
    *,
    family: str | None = None,
    setting: str | None = None,
    metric: str = "exact_match",
    k: float | None = None,
    n: int = 1,
    threshold: float | None = None,
    extend_decades: float = 3.0,
) -> Figure:
    """Figure of observed points, posterior bands, threshold and crossing density.

    The same as :func:`forecaster.plotting.plot_forecast` (documented there parameter by parameter); this
    wrapper imports matplotlib only when a plot is made, so ``import forecaster`` stays quick.
    """
    from .plotting import plot_forecast as _plot

    return _plot(fit, task, family=family, setting=setting, metric=metric, k=k, n=n, threshold=threshold,
                 extend_decades=extend_decades)


def plot_setting_effects(effects: SettingEffects, *, decades: bool = True, sort: bool = True,
                         max_decades: float = 6.0) -> Figure:
    """Forest plot of setting effects per task and pooled.

    The same as :func:`forecaster.plotting.plot_setting_effects` (documented there); this wrapper imports
    matplotlib only when a plot is made.
    """
    from .plotting import plot_setting_effects as _plot

    return _plot(effects, decades=decades, sort=sort, max_decades=max_decades)


__all__ = [
    "load_data", "validate", "fit", "forecast", "trend", "metric_curve", "metric_value", "save_fit", "load_fit",
    "plot_forecast", "demo_data", "simulate", "load_spec", "FitResult", "Forecast", "Diagnostics",
    "ForecasterError", "DataError", "QueryError", "SpecError", "setting_effects", "SettingEffects",
    "plot_setting_effects", "backtest", "BacktestResult",
]
