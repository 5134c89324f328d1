"""Params/tokens effect and model-level (checkpoint) deviations: when they switch on, and what they do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecaster.data import summarize, validate
from forecaster.forecast import forecast, trend
from forecaster.model import build_model, model_deviation_index, use_allocation
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
    names = {v.name for v in build_model(cells, spec).free_RVs}
    assert {"alloc", "model_dev_z", "sigma_model"} <= names
    # compute only, one cell per model: neither
    df = _checkpoint_table().drop(columns=["params", "tokens"]).assign(compute=lambda d: d.index * 1e19 + 1e20)
    df["model"] = df["model"].str.replace("@", "-")
    plain = summarize(validate(df))
    assert not use_allocation(plain, spec) and model_deviation_index(plain, spec) is None
    assert not {"alloc", "model_dev_z"} & {v.name for v in build_model(plain, spec).free_RVs}


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

    res = fit(_checkpoint_table(), seed=2, draws=100, tune=150, chains=2)
    assert "alloc" in res.posterior
    # recovered: more parameters at fixed compute is better here (truth -0.275 per decade of params/tokens)
    assert float(res.posterior["alloc"].mean()) < 0
    f20 = forecast(res, threshold=0.5, tokens_per_param=20).draws["log10_compute"].values.ravel()
    f200 = forecast(res, threshold=0.5, tokens_per_param=200).draws["log10_compute"].values.ravel()
    tr = trend(res)
    alloc = tr["alloc"].values.ravel()
    slope = tr["slope"].values.ravel()
    # log10 C* = c0 + (mu* - intercept)/slope; intercept moves by alloc * (u_20 - u_200), u = -log10(tokens/param)
    expect = -alloc * (-np.log10(20) + np.log10(200)) / slope
    ok = np.isfinite(f20) & np.isfinite(f200)
    np.testing.assert_allclose(f20[ok] - f200[ok], expect[ok], atol=1e-6)
