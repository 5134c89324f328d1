"""forecaster: Bayesian scaling forecasts of language-model capabilities.

Model the smooth quantity (per-token cross-entropy, a power law in compute),
push its posterior through the sharp metric (exact match over k tokens, ...),
and report the posterior of the compute at which a threshold is crossed.

>>> import forecaster as fc
>>> data = fc.load_data("results.csv")            # doctest: +SKIP
>>> fit = fc.fit(data, seed=1)                     # doctest: +SKIP
>>> fc.forecast(fit, metric="exact_match", threshold=0.5, budget=1e25).table  # doctest: +SKIP
"""

from .backtest import BacktestResult, backtest
from .check import Check, check
from .check_plots import plot_check
from .data import load_table as load_data
from .data import validate
from .effects import SettingEffects, setting_effects
from .errors import DataError, ForecasterError, QueryError, SpecError
from .fit import Diagnostics, FitResult, fit
from .forecast import Forecast, forecast, metric_curve, trend
from .io import load_fit, save_fit
from .metrics import metric_value
from .plotting import plot_forecast, plot_setting_effects
from .predict import Prediction, predict
from .simulate import demo_data, simulate
from .spec import load_spec
from .structure import Structure

__version__ = "0.1.0"


__all__ = [
    "load_data", "validate", "fit", "forecast", "trend", "metric_curve", "metric_value", "save_fit", "load_fit",
    "plot_forecast", "demo_data", "simulate", "load_spec", "FitResult", "Forecast", "Diagnostics",
    "ForecasterError", "DataError", "QueryError", "SpecError", "setting_effects", "SettingEffects",
    "plot_setting_effects", "backtest", "BacktestResult", "check", "Check", "plot_check", "Structure",
    "predict", "Prediction",
]
