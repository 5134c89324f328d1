"""Setting effects (few-shot, instruction tuning): library, CLI and forest plot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

import forecaster as fc
from forecaster.cli import app
from forecaster.effects import EFFECT_QUANTITIES, POOLED, setting_effects
from forecaster.errors import QueryError
from forecaster.plotting import plot_setting_effects
from forecaster.simulate import TaskTruth, simulate

runner = CliRunner()

ID_COLUMNS = ["task", "setting", "reference", "family", "metric", "k", "log10_compute"]
SUMMARY_COLUMNS = [f"{q}_{s}" for q in EFFECT_QUANTITIES for s in ("q50", "q05", "q95")] + ["prob_better"]

TRUE_EFFECTS = {"0-shot": (0.0, 0.0), "5-shot": (-0.5, 0.0), "0-shot+instruct": (-0.25, -0.05)}


@pytest.fixture(scope="module")
def sim_fit():
    """Three tasks under three settings with known pooled shifts (the same for every task)."""
    scen = simulate(
        [TaskTruth("t1", a=0.2, b=-0.45, sigma_item=0.8, k=3), TaskTruth("t2", a=-0.4, b=-0.3, sigma_item=1.0, k=2),
         TaskTruth("t3", a=0.5, b=-0.6, sigma_item=0.9, k=4, kind="aggregate")],
        setting_effects=TRUE_EFFECTS, n_items=80, c0=19.5, sigma_cell=0.05, seed=11,
        log10_compute={"sim": [18.0, 18.6, 19.2, 19.8, 20.4]},
    )
    return fc.fit(scen.data, seed=5, draws=200, tune=200, chains=2)


# --------------------------------------------------------------------------- library, on the tiny demo fit


def test_table_shape_columns_and_draws(tiny_fit):
    eff = setting_effects(tiny_fit)
    assert eff.reference == "0-shot" and eff.settings == ["5-shot"]
    t = eff.table
    assert list(t.columns) == ID_COLUMNS + SUMMARY_COLUMNS
    assert len(t) == len(tiny_fit.cells.tasks) + 1  # tasks + pooled, one non-reference setting
    assert t.task.tolist()[-1] == POOLED and t.task.tolist()[:-1] == tiny_fit.cells.tasks
    assert t.prob_better.between(0, 1).all()
    for q in EFFECT_QUANTITIES:
        assert (t[f"{q}_q05"] <= t[f"{q}_q50"]).all() and (t[f"{q}_q50"] <= t[f"{q}_q95"]).all()
    d = eff.draws
    assert set(EFFECT_QUANTITIES) <= set(d.data_vars)
    assert d["metric_effect"].dims == ("chain", "draw", "task", "setting")
    np.testing.assert_allclose(d["metric_effect"], d["metric_setting"] - d["metric_ref"])
    np.testing.assert_allclose(d["ce_factor"], np.exp(d["dlogce"]))
    # per task, the intercept shift is the model's da (family offsets cancel)
    da = tiny_fit.posterior["da"].sel(setting="5-shot")
    np.testing.assert_allclose(d["da"].sel(task="qa-flat", setting="5-shot"), da.sel(task="qa-flat"))
    # pooled intercept shift is the population parameter setting_a
    np.testing.assert_allclose(d["da"].sel(task=POOLED, setting="5-shot"),
                               tiny_fit.posterior["setting_a"].sel(setting_effect="5-shot"))


def test_reference_swaps_sign_and_at_sets_compute(tiny_fit):
    fwd = setting_effects(tiny_fit, at=1e21)
    rev = setting_effects(tiny_fit, reference="5-shot", at=1e21)
    assert rev.settings == ["0-shot"]
    np.testing.assert_allclose(fwd.draws["metric_effect"].values, -rev.draws["metric_effect"].values, atol=1e-12)
    np.testing.assert_allclose(fwd.draws["da"].values, -rev.draws["da"].values, atol=1e-12)
    assert np.allclose(fwd.table.log10_compute, 21.0)
    p = fwd.table.prob_better.to_numpy()
    np.testing.assert_allclose(p[:-1], 1 - rev.table.prob_better.to_numpy()[:-1])


def test_decades_is_compute_equivalent(tiny_fit):
    """The reference at x + decades has the setting's log CE at x (per draw, where its slope falls)."""
    eff = setting_effects(tiny_fit, family="alpha")
    tr = fc.trend(tiny_fit, families=["alpha"])
    t = "arith-steep"
    x = float(eff.draws["log10_compute"].sel(task=t))
    dec = eff.draws["decades"].sel(task=t, setting="5-shot").values
    c0 = tiny_fit.cells.c0
    slope = tr["slope"] + tr["slope_family"].sel(family="alpha")  # the family's own slope on the task
    ref_at = (tr["intercept"].sel(task=t, family="alpha", setting="0-shot")
              + slope.sel(task=t, setting="0-shot") * (x + dec - c0)).values
    set_at = (tr["intercept"].sel(task=t, family="alpha", setting="5-shot")
              + slope.sel(task=t, setting="5-shot") * (x - c0)).values
    ok = slope.sel(task=t, setting="0-shot").values < 0
    np.testing.assert_allclose(ref_at[ok], set_at[ok], atol=1e-9)


def test_errors_are_query_errors(tiny_fit):
    with pytest.raises(QueryError, match="unknown reference setting '7-shot'"):
        setting_effects(tiny_fit, reference="7-shot")
    with pytest.raises(QueryError, match="reference"):
        setting_effects(tiny_fit, settings=["0-shot"])
    with pytest.raises(QueryError, match="unknown setting"):
        setting_effects(tiny_fit, settings=["instruct"])
    with pytest.raises(QueryError, match="unknown metric"):
        setting_effects(tiny_fit, metric="bleu")
    with pytest.raises(QueryError, match="--at"):
        setting_effects(tiny_fit, at=-1.0)
    one = dataclasses.replace(tiny_fit, cells=dataclasses.replace(tiny_fit.cells, settings=["0-shot"]))
    with pytest.raises(QueryError, match="one setting only") as exc:
        setting_effects(one)
    assert "\n" not in str(exc.value)


def test_records_are_json_ready(tiny_fit):
    recs = setting_effects(tiny_fit).records()
    text = json.dumps(recs, allow_nan=False)
    assert set(json.loads(text)[0]) == set(ID_COLUMNS + SUMMARY_COLUMNS)
    assert recs[-1]["task"] == POOLED and recs[-1]["k"] is None


def test_plot_returns_figure(tiny_fit):
    fig = plot_setting_effects(setting_effects(tiny_fit))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # one setting: effect panel + compute-equivalent panel
    assert len(plot_setting_effects(setting_effects(tiny_fit), decades=False).axes) == 1


# --------------------------------------------------------------------------- CLI


def test_cli_effects_table_json_csv_plot(tiny_fit_file, tmp_path):
    res = runner.invoke(app, ["effects", str(tiny_fit_file)])
    assert res.exit_code == 0, res.output
    assert "(pooled)" in res.stdout and "5-shot" in res.stdout
    out, png = tmp_path / "eff.json", tmp_path / "eff.png"
    res = runner.invoke(app, ["effects", str(tiny_fit_file), "--format", "json", "-o", str(out), "--plot", str(png),
                              "--at", "1e22"])
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert set(recs[0]) == set(ID_COLUMNS + SUMMARY_COLUMNS) and recs[0]["log10_compute"] == pytest.approx(22.0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["effects", str(tiny_fit_file), "--format", "csv", "--reference", "5-shot"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("task,setting,reference")


@pytest.mark.parametrize("args, msg", [
    (["--reference", "7-shot"], "unknown reference setting '7-shot'"),
    (["--format", "xml"], "unknown --format"),
    (["--at", "-5"], "--at"),
    (["--task", "nope"], "unknown task 'nope'"),
])
def test_cli_effects_bad_input_exit_2(tiny_fit_file, tmp_path, args, msg):
    out, png = tmp_path / "e.csv", tmp_path / "e.png"
    res = runner.invoke(app, ["effects", str(tiny_fit_file), *args, "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert not out.exists() and not png.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_effects_bad_plot_suffix(tiny_fit_file, tmp_path):
    res = runner.invoke(app, ["effects", str(tiny_fit_file), "--plot", str(tmp_path / "e.gif")])
    assert res.exit_code == 2 and ".png" in res.stderr


# --------------------------------------------------------------------------- recovery


@pytest.mark.slow
def test_recovers_pooled_setting_effects(sim_fit):
    eff = setting_effects(sim_fit)
    t = eff.table.set_index(["task", "setting"])
    for s, (da, db) in TRUE_EFFECTS.items():
        if s == "0-shot":
            continue
        row = t.loc[(POOLED, s)]
        assert row.da_q05 <= da <= row.da_q95, (s, row.da_q05, row.da_q95)
        assert abs(row.da_q50 - da) < 0.15, (s, row.da_q50)
        assert row.db_q05 - 0.02 <= db <= row.db_q95 + 0.02
        # every setting here lowers CE: the metric improves in every task
        assert (t.xs(s, level="setting").prob_better > 0.9).all()
    # the per-task intercept shifts are near the (shared) truth too
    per_task = t.xs("5-shot", level="setting").drop(POOLED)
    assert np.all(np.abs(per_task.da_q50 - TRUE_EFFECTS["5-shot"][0]) < 0.2)


def test_decades_never_where_reference_trend_is_flat():
    from forecaster.effects import _decades, _quantiles

    d = _decades(np.array([-0.5, -0.5, 0.5, 0.0]), np.array([-0.25, 0.1, 0.0, 0.0]))
    np.testing.assert_array_equal(d, [2.0, np.inf, -np.inf, 0.0])
    q = _quantiles(np.array([1.0, np.inf, np.inf, np.inf]), (0.05, 0.5, 0.95))
    assert q[0] < np.inf and q[1] == np.inf and q[2] == np.inf  # no NaN from inf - inf
