"""Every bad input gets one clear line, exit code 2, no traceback and no output file (through the CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forecaster.cli import app
from forecaster.data import summarize, validate
from forecaster.errors import DataError

runner = CliRunner()


def _agg_table() -> pd.DataFrame:
    rows = []
    for task in ("t1", "t2"):
        for i, c in enumerate([1e18, 1e19, 1e20]):
            rows.append({"family": "f", "model": f"m{i}", "task": task, "compute": c, "n_items": 100,
                         "n_tokens": 3, "ce": 1.5 - 0.3 * i, "n_correct": 10 * i})
    return pd.DataFrame(rows)


def _item_table() -> pd.DataFrame:
    rows = []
    for i, c in enumerate([1e18, 1e19]):
        for it in range(3):
            rows.append({"family": "f", "model": f"m{i}", "task": "t", "compute": c, "item": f"q{it}",
                         "n_tokens": 2, "logprob": -1.0 - it, "correct": 0})
    return pd.DataFrame(rows)


CASES = [
    ("missing column", lambda d: d.drop(columns="task"), "missing column 'task'"),
    ("no compute", lambda d: d.drop(columns="compute"), "missing column 'compute'"),
    ("non-numeric", lambda d: d.assign(ce=d.ce.astype(object).where(d.index != 2, "abc")), "non-numeric"),
    ("NaN", lambda d: d.assign(n_items=d.n_items.where(d.index != 1, np.nan)), "NaN"),
    ("infinite", lambda d: d.assign(ce=d.ce.where(d.index != 1, np.inf)), "infinite"),
    ("compute <= 0", lambda d: d.assign(compute=d.compute.where(d.index != 0, 0.0)), "compute must be > 0"),
    ("negative compute", lambda d: d.assign(compute=d.compute.where(d.index != 0, -5.0)), "compute must be > 0"),
    ("n_tokens < 1", lambda d: d.assign(n_tokens=d.n_tokens.where(d.index != 3, 0)), "n_tokens must be >= 1"),
    ("n_correct > n_items", lambda d: d.assign(n_correct=d.n_correct.where(d.index != 2, 500)), "n_correct must be"),
    ("n_correct < 0", lambda d: d.assign(n_correct=d.n_correct.where(d.index != 2, -1)), "n_correct must be"),
    ("accuracy > 1", lambda d: d.drop(columns="n_correct").assign(accuracy=0.5).assign(
        accuracy=lambda x: x.accuracy.where(x.index != 4, 55.0)), "accuracy must be in [0, 1]"),
    ("duplicate", lambda d: pd.concat([d, d.iloc[[2]]], ignore_index=True), "duplicate"),
    ("one model size only", lambda d: d.assign(compute=1e20), "at least two model sizes"),
    ("single compute task", lambda d: pd.concat(
        [d, d.iloc[[0]].assign(task="t3")], ignore_index=True), "single compute"),
    ("no observation", lambda d: d.drop(columns=["ce", "n_correct"]), "needs 'ce', 'n_correct' or 'accuracy'"),
]


def _check_cli_rejects(tmp_path, df: pd.DataFrame, expect: str, name="bad.csv"):
    src = tmp_path / name
    df.to_csv(src, index=False)
    out = tmp_path / "fit.nc"
    res = runner.invoke(app, ["fit", str(src), "-o", str(out), "--draws", "10", "--tune", "10"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expect in err, err
    assert "Traceback" not in res.output
    assert not out.exists() and not any(p.name.startswith(".fit") for p in tmp_path.iterdir())
    return err


@pytest.mark.parametrize("name,mutate,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_aggregate_input(tmp_path, name, mutate, expect):
    err = _check_cli_rejects(tmp_path, mutate(_agg_table()), expect)
    assert "bad.csv" in err


def test_logprob_positive_per_item(tmp_path):
    d = _item_table()
    d.loc[4, "logprob"] = 0.3
    err = _check_cli_rejects(tmp_path, d, "logprob must be <= 0")
    assert "line 6" in err  # header is line 1, row index 4 is line 6


def test_correct_not_binary(tmp_path):
    d = _item_table()
    d.loc[1, "correct"] = 2
    _check_cli_rejects(tmp_path, d, "correct must be 0 or 1")


def test_duplicate_items(tmp_path):
    d = _item_table()
    _check_cli_rejects(tmp_path, pd.concat([d, d.iloc[[1]]]), "duplicate row")


def test_empty_and_unreadable_files(tmp_path):
    out = tmp_path / "fit.nc"
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = runner.invoke(app, ["fit", str(empty), "-o", str(out)])
    assert res.exit_code == 2 and "empty" in res.stderr and not out.exists()
    header = tmp_path / "header.csv"
    header.write_text("family,model,task,compute\n")
    res = runner.invoke(app, ["fit", str(header), "-o", str(out)])
    assert res.exit_code == 2 and "no data rows" in res.stderr
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"\x00\x01not parquet")
    res = runner.invoke(app, ["fit", str(garbage), "-o", str(out)])
    assert res.exit_code == 2 and "cannot be read" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["fit", str(tmp_path / "missing.csv"), "-o", str(out)])
    assert res.exit_code == 2 and "not found" in res.stderr


def test_unknown_task_in_query(tiny_fit_file, tmp_path):
    out = tmp_path / "f.json"
    res = runner.invoke(app, ["forecast", str(tiny_fit_file), "--task", "nope", "--format", "json", "-o", str(out)])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: unknown task 'nope'")
    assert not out.exists()
    res = runner.invoke(app, ["plot", str(tiny_fit_file), "--task", "nope", "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "unknown task" in res.stderr and not (tmp_path / "p.png").exists()


def test_bad_query_values(tiny_fit_file):
    for args, expect in [(["--threshold", "1.5"], "outside"), (["--metric", "bleu"], "unknown metric"),
                         (["--at", "abc"], "comma-separated"), (["--budget", "-1"], "--budget"),
                         (["--format", "xml"], "unknown --format")]:
        res = runner.invoke(app, ["forecast", str(tiny_fit_file), *args])
        assert res.exit_code == 2, (args, res.output)
        assert expect in res.stderr.strip().splitlines()[-1]


def test_not_a_fit_file(tmp_path):
    bad = tmp_path / "x.nc"
    bad.write_text("hello")
    res = runner.invoke(app, ["summary", str(bad)])
    assert res.exit_code == 2 and "not a forecaster fit file" in res.stderr


def test_single_compute_task_can_borrow_pooled_slope():
    d = pd.concat([_agg_table(), _agg_table().iloc[[0]].assign(task="t3")], ignore_index=True)
    with pytest.raises(DataError, match="single compute"):
        validate(d)
    assert "t3" in set(validate(d, allow_single_compute=True).task)


def test_params_tokens_give_compute_and_accuracy_gives_counts():
    d = _agg_table().drop(columns=["compute", "n_correct"]).assign(params=1e8, tokens=[1e9, 1e10, 1e11] * 2,
                                                                   accuracy=0.25)
    v = validate(d)
    np.testing.assert_allclose(v.compute, 6 * 1e8 * np.array([1e9, 1e10, 1e11] * 2))
    np.testing.assert_allclose(v.n_correct, 25)
    assert set(v.setting) == {"default"}


def test_sufficient_statistics_of_items():
    d = _item_table()
    cells = summarize(validate(d))
    assert cells.n_cells == 2
    ce = -d.logprob / d.n_tokens
    m0 = np.log(ce[d.model == "m0"])
    assert cells.item_mean[0] == pytest.approx(m0.mean())
    assert cells.item_ss[0] == pytest.approx(((m0 - m0.mean()) ** 2).sum())
    # same items at both models: a balanced group with a two-way decomposition
    assert cells.item_balanced.all() and len(cells.group_task) == 1
    assert cells.group_df_items[0] == 2 and cells.group_df_res[0] == 2


# --------------------------------------------------------------------------- crashes the seam's fuzz found
# (tests/test_properties.py); each input once raised something other than a one-line DataError


def _obj(values) -> pd.Series:
    return pd.Series(values, dtype=object)


SEAM_CASES = [
    ("duplicate column", lambda d: pd.concat([d, d[["ce"]]], axis=1), "column 'ce' appears 2 times"),
    ("names equal once stripped", lambda d: d.rename(columns={"model": " task "}).assign(model=d.model),
     "column 'task' appears 2 times"),
    ("two levels of column names", lambda d: d.set_axis(pd.MultiIndex.from_arrays(
        [list(d.columns), ["x"] * d.shape[1]]), axis=1), "2 levels of column names"),
    ("bytes that are not UTF-8", lambda d: d.assign(model=_obj([b"\xfc"] + list(d.model[1:]))),
     r"column 'model' holds text that is not valid Unicode (b'\xfc')"),
    ("lone surrogate", lambda d: d.assign(task=_obj(["t\ud800"] + list(d.task[1:]))),
     r"column 'task' holds text that is not valid Unicode ('t\ud800')"),
    ("list as a name", lambda d: d.assign(family=_obj([[1]] + list(d.family[1:]))), "column 'family' holds a list"),
    ("duplicate index labels", lambda d: d.assign(ce=d.ce.where(d.index != 2, -1.0)).set_axis([0] * len(d)),
     "line 0: ce must be > 0"),
    ("6*params*tokens overflows", lambda d: d.drop(columns="compute").assign(params=1e200, tokens=1e200),
     "compute = 6*params*tokens = 6*1e+200*1e+200 is beyond the float range"),
    ("complex number", lambda d: d.assign(ce=_obj([complex(1, 2)] + list(d.ce[1:]))),
     "column 'ce' has non-numeric value (1+2j)"),
    ("integer beyond float range", lambda d: d.assign(n_items=_obj([10**400] + list(d.n_items[1:]))),
     "column 'n_items' is infinite or too large"),
    ("dates as compute", lambda d: d.assign(compute=pd.to_datetime(["2020-01-01"] * len(d))),
     "column 'compute' has non-numeric value Timestamp("),
]


@pytest.mark.parametrize("name,mutate,expect", SEAM_CASES, ids=[c[0] for c in SEAM_CASES])
def test_seam_crashes_are_one_line_errors(name, mutate, expect):
    with pytest.raises(DataError) as err:
        validate(mutate(_agg_table()), source="t.csv")
    msg = str(err.value)
    assert expect in msg and len(msg.splitlines()) == 1, msg


def test_messages_stay_one_line_whatever_the_names():
    for source in ("a\nb.csv", "r\x1c.csv", "x\u2028y", "z\ud800"):
        with pytest.raises(DataError) as err:
            validate(_agg_table().drop(columns="task"), source=source)
        assert len(str(err.value).splitlines()) == 1 and "missing column 'task'" in str(err.value)
    d = _agg_table().assign(ce=lambda x: x.ce.where(x.index != 1, -1.0)).set_axis([f"r\n{i}" for i in range(6)])
    with pytest.raises(DataError, match=r"row 'r\\n1': ce must be > 0"):
        validate(d)


def test_categorical_setting_and_blank_optional_numbers_are_fine():
    d = _agg_table().assign(setting=pd.Categorical(["0-shot", None] * 3), accuracy=_obj(["", " "] * 3))
    v = validate(d)
    assert set(v.setting) == {"0-shot", "default"} and v.accuracy.isna().all()


@pytest.mark.parametrize("texts", [["9.999999999999999e+29", "1e+30"], ["1.0", "1801439850948199.0"]])
def test_numbers_written_as_text_are_read_exactly(texts):
    """Found by the property tests on pandas 2.2.3, whose text-to-number parser missed by an ulp: two computes
    one ulp apart read as one ("all rows have the same compute"), and values changed."""
    df = pd.DataFrame(dict(family="A", model=["A", "B"], task="A", compute=texts, item="A", n_tokens=1, logprob=0.0))
    assert validate(df, source="x")["compute"].tolist() == [float(t) for t in texts]
