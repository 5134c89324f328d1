"""Forecast plots on a small demo fit: figure structure, file formats, the task grid, query errors, monotone curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from forecaster.errors import QueryError  # noqa: E402
from forecaster.forecast import forecast  # noqa: E402
from forecaster.plotting import plot_crossing, plot_forecast  # noqa: E402


@pytest.fixture(scope="module")
def small_fit(tiny_fit):
    return tiny_fit


def _line(ax, prefix: str):
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    assert lines, f"no line labelled {prefix!r}"
    return lines[0]


def _main_axes(fig: Figure):
    """Metric and log-CE panels (the crossing density sits on a twin axis without a y label)."""
    return [ax for ax in fig.axes if ax.get_ylabel()]


def test_single_task_figure(small_fit):
    task = small_fit.cells.tasks[0]
    fig = plot_forecast(small_fit, task, threshold=0.5)
    assert isinstance(fig, Figure)
    main = _main_axes(fig)
    assert len(main) == 2
    top, bottom = main
    assert top.get_xscale() == "log" and bottom.get_xscale() == "log"
    assert top.get_xlabel() == "training compute (FLOPs)"
    assert top.get_ylabel().startswith("exact match (k=")
    assert bottom.get_ylabel() == "log per-token CE (nats)"
    fam, sett = small_fit.cells.families[0], small_fit.cells.settings[0]
    assert top.get_title() == f"{task} — {fam}, {sett}"
    # the crossing density adds a twin axis; the threshold is drawn; a legend exists
    assert len(fig.axes) == 3
    assert any(np.allclose(ln.get_ydata(), 0.5) for ln in top.get_lines() if len(ln.get_ydata()) == 2)
    assert any(ax.get_legend() is not None for ax in fig.axes)
    # the crossing summary is written on the panel
    assert any("threshold crossing" in t.get_text() for t in top.texts)


def test_without_threshold_no_density(small_fit):
    fig = plot_forecast(small_fit, small_fit.cells.tasks[0])
    assert len(fig.axes) == 2


@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_saves_formats(small_fit, tmp_path, ext):
    fig = plot_forecast(small_fit, small_fit.cells.tasks[1], threshold=0.3)
    out = tmp_path / f"plot.{ext}"
    fig.savefig(out)
    assert out.is_file() and out.stat().st_size > 1000


def test_all_tasks_grid(small_fit, tmp_path):
    tasks = small_fit.cells.tasks
    fig = plot_forecast(small_fit, "all", threshold=0.5)
    main = _main_axes(fig)
    assert len(main) == 2 * len(tasks)
    titles = [ax.get_title() for ax in main if ax.get_title()]
    assert titles == list(tasks)
    w, h = fig.get_size_inches()
    assert w > h  # one column per task
    fig.savefig(tmp_path / "all.png")
    assert (tmp_path / "all.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(task="no-such-task"), "unknown task 'no-such-task'"),
        (dict(task="all", family="gamma"), "unknown family 'gamma'"),
        (dict(task="all", setting="9-shot"), "unknown setting '9-shot'"),
        (dict(task="all", metric="bleu"), "unknown metric 'bleu'"),
    ],
)
def test_unknown_names_raise(small_fit, kwargs, needle):
    task = kwargs.pop("task")
    with pytest.raises(QueryError) as err:
        plot_forecast(small_fit, task, **kwargs)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    if "task" in needle:
        assert all(t in msg for t in small_fit.cells.tasks)


def test_exact_match_median_monotone(small_fit):
    for task in small_fit.cells.tasks:
        fig = plot_forecast(small_fit, task, threshold=0.5)
        top = _main_axes(fig)[0]
        x = np.asarray(_line(top, "posterior median").get_xdata(), float)
        y = np.asarray(_line(top, "posterior median").get_ydata(), float)
        assert np.all(np.diff(x) > 0)
        assert np.all(np.diff(y) > 0), task
        assert np.all((y >= 0) & (y <= 1))
        # the trend of log CE falls with compute in the demo
        bottom = _main_axes(fig)[1]
        yl = np.asarray(_line(bottom, "trend median").get_ydata(), float)
        assert yl[-1] < yl[0]


def test_grid_spans_extend_decades(small_fit):
    task = small_fit.cells.tasks[0]
    c = small_fit.cells
    mask = (c.cell_task == 0) & (c.cell_family == 0) & (c.cell_setting == 0)
    fig = plot_forecast(small_fit, task, extend_decades=2.0)
    x = np.log10(np.asarray(_line(_main_axes(fig)[0], "posterior median").get_xdata(), float))
    assert x[0] <= c.cell_x[mask].min()
    assert x[-1] == pytest.approx(c.cell_x[mask].max() + 2.0)


def test_observed_points_only_for_matching_metric(small_fit):
    task = small_fit.cells.tasks[0]
    family, setting = small_fit.cells.families[-1], small_fit.cells.settings[-1]
    fig = plot_forecast(small_fit, task, family=family, setting=setting)
    top = _main_axes(fig)[0]
    assert any(c.get_label().startswith("observed") for c in top.containers)
    assert top.get_title() == f"{task} — {family}, {setting}"
    for kw in (dict(metric="token_accuracy"), dict(metric="edit_distance", threshold=1.0), dict(k=20.0)):
        top = _main_axes(plot_forecast(small_fit, task, **kw))[0]
        assert not any(c.get_label().startswith("observed") for c in top.containers), kw
    ed = _main_axes(plot_forecast(small_fit, task, metric="edit_distance"))[0]
    y = np.asarray(_line(ed, "posterior median").get_ydata(), float)
    assert np.all(np.diff(y) < 0)  # fewer wrong tokens with more compute


def test_plot_crossing(small_fit, tmp_path):
    fc = forecast(small_fit, threshold=0.5)
    fig = plot_crossing(fc)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_yticklabels()) == len(fc.table)
    fig.savefig(tmp_path / "crossing.png")
    assert (tmp_path / "crossing.png").stat().st_size > 1000


def test_library_plot_functions_have_the_plotting_signatures():
    """``fc.plot_forecast`` / ``fc.plot_setting_effects`` are the plotting functions themselves (no wrapper
    with its own, drifting parameters): same parameters, defaults, annotations and docstrings."""
    import forecaster as fc
    from forecaster import plotting

    for name in ("plot_forecast", "plot_setting_effects"):
        assert getattr(fc, name) is getattr(plotting, name), name
