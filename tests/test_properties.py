"""Property-based tests of the input seam: every input yields a validated table or one ForecasterError line.

Three entry points get generated inputs, valid and corrupted:

* :func:`forecaster.data.validate` (``fc.validate``) on DataFrames: missing, renamed, duplicated or non-text
  column names, NaN/inf, strings, bools, bytes, mixed objects and huge numbers in numeric columns, empty and
  unicode names (newlines and control characters too), mixed per-item and aggregate rows, numeric and string
  ids, odd indexes and dtypes;
* :func:`forecaster.data.load_table` (``fc.load_data``) on such tables written as CSV, CSV.gz and Parquet, also
  truncated, overwritten with garbage bytes or empty;
* :func:`forecaster.importers.import_results` on the fixtures of ``fixtures/importers`` (lm-eval, Inspect,
  BIG-bench) and on long-format tables, mutated: truncated JSON, wrong types, missing keys, garbage, empty files.

The property: the outcome is a DataFrame that satisfies the invariants of a validated table, or a
:class:`~forecaster.errors.ForecasterError` whose message is one non-empty line. Any other exception, a message
over several lines, or an accepted table that breaks an invariant (compute not a positive finite number, a kind
other than item/aggregate, an item id that is not text, a count outside its range, a table :func:`summarize`
cannot reduce) fails the test. Tables generated valid must also be accepted, unchanged in meaning.

A second property breaks one value class of a valid table (compute <= 0, logprob > 0, n_correct > n_items,
an infinity, one compute for all models, 6*params*tokens beyond the float range, ...) and asserts the validator
rejects it with a message naming the problem, so that a validator that lets bad data through fails too.

The default run uses the ``forecaster`` hypothesis profile (40 to 160 examples per property, about 730 in all:
under a minute for the file). ``pytest -m fuzz`` runs the same properties under the ``fuzz`` profile, about
10,000 examples in all (1,200 per property; ``FORECASTER_FUZZ_EXAMPLES=N`` sets the number per property); those
tests are skipped unless ``-m`` selects them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from forecaster.data import DEFAULT_SETTING, load_table, summarize, validate
from forecaster.errors import ForecasterError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "importers"

settings.register_profile(
    "forecaster",
    max_examples=250,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the working tree; a failure prints its example and seed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    "fuzz", parent=settings.get_profile("forecaster"),
    max_examples=int(os.environ.get("FORECASTER_FUZZ_EXAMPLES", "1200")),
    derandomize=True,  # the same examples in every run: CI's outcome is the one seen before submitting
)
QUICK = settings.get_profile("forecaster")
FUZZ = settings.get_profile("fuzz")
only_when_selected = pytest.mark.skipif(
    "'fuzz' not in config.getoption('markexpr')",
    reason="the long fuzz run (about 10,000 examples in all): select it with -m fuzz",
)


def quick_and_fuzz(body, *strategies, quick=QUICK):
    """The same property twice: a quick run (default suite) and the long one (``-m fuzz``)."""
    fast = quick(given(*strategies)(body))
    long = pytest.mark.fuzz(only_when_selected(FUZZ(given(*strategies)(body))))
    return fast, long


# --------------------------------------------------------------------------- the property


def outcome(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it raised a ForecasterError with a one-line message."""
    try:
        return fn(*args, **kwargs)
    except ForecasterError as exc:
        msg = str(exc)
        assert msg.strip(), f"{type(exc).__name__} with an empty message"
        assert "\n" not in msg and "\r" not in msg, f"message over several lines: {msg!r}"
        assert len(msg.splitlines()) == 1, f"message with a line break character: {msg!r}"
        return None


def assert_validated(out: pd.DataFrame, reduce: bool = True) -> None:
    """The invariants of a table :func:`validate` / :func:`load_table` accepted (``reduce``: and it summarizes)."""
    assert isinstance(out, pd.DataFrame) and len(out) > 0
    assert out.columns.is_unique, list(out.columns)
    for col in ("family", "model", "task", "setting"):
        vals = out[col].tolist()
        assert all(isinstance(v, str) and v.strip() == v and v for v in vals), (col, vals[:5])
    comp = out["compute"].to_numpy(float)
    assert np.isfinite(comp).all() and (comp > 0).all(), comp
    assert set(out["kind"]) <= {"item", "aggregate"}
    k = out["n_tokens"].to_numpy(float)
    assert np.isfinite(k).all() and (k >= 1).all(), k
    items = out[out["kind"] == "item"]
    if len(items):
        ids = items["item"].tolist()
        assert all(isinstance(v, str) and v.strip() == v and v for v in ids), ids[:5]
        lp = items["logprob"].to_numpy(float)
        assert np.isfinite(lp).all() and (lp <= 0).all(), lp
        if "correct" in items.columns:
            c = items["correct"].to_numpy(float)
            assert np.isin(c[~np.isnan(c)], [0.0, 1.0]).all(), c
        assert not items.duplicated(["family", "model", "task", "setting", "item"]).any()
    aggs = out[out["kind"] == "aggregate"]
    if len(aggs):
        if "item" in aggs.columns:
            assert aggs["item"].isna().all()
        n = aggs["n_items"].to_numpy(float)
        assert np.isfinite(n).all() and (n >= 1).all() and (n == np.round(n)).all(), n
        ce = aggs["ce"].to_numpy(float) if "ce" in aggs.columns else np.full(len(aggs), np.nan)
        nc = aggs["n_correct"].to_numpy(float) if "n_correct" in aggs.columns else np.full(len(aggs), np.nan)
        assert (~np.isnan(ce) | ~np.isnan(nc)).all(), "an aggregate row without an observation"
        assert (np.isfinite(ce[~np.isnan(ce)]) & (ce[~np.isnan(ce)] > 0)).all(), ce
        ok = ~np.isnan(nc)
        assert ((nc[ok] >= 0) & (nc[ok] <= n[ok]) & (nc[ok] == np.round(nc[ok]))).all(), (nc, n)
        assert not aggs.duplicated(["family", "model", "task", "setting"]).any()
    assert (out.groupby("model")["family"].nunique() == 1).all()
    assert out["compute"].nunique() >= 2
    if not reduce:
        return
    cells = summarize(out)
    assert np.isfinite(cells.cell_x).all() and np.isfinite(cells.cell_k).all()
    assert cells.n_cells == len(out.groupby(["model", "task", "setting"]))


# --------------------------------------------------------------------------- generated tables

_CSV_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
           "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "inf", "-inf", "Inf", "-Inf", "INF", "infinity",
           "Infinity", "true", "false", "True", "False", "TRUE", "FALSE"}
# names as researchers write them (they survive a CSV round trip unchanged)
plain_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,7}", fullmatch=True).filter(
    lambda s: s not in _CSV_NA and s.lower() not in {x.lower() for x in _CSV_NA})


def _clean_ends(s: str) -> bool:
    return bool(s) and s == s.strip() and s[0].isprintable() and s[-1].isprintable()


# anything else: unicode, newlines and control characters inside a name, numbers as names
any_names = st.one_of(
    plain_names,
    st.integers(-(10**6), 10**12),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=6).filter(_clean_ends),
)
positive = st.one_of(
    st.floats(min_value=1e-6, max_value=1e30, allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 6e20, 1e300, 1.7e308]),
)


def _key(v) -> str:
    return str(v).strip()


@st.composite
def valid_tables(draw, names=any_names):
    """A valid tidy table: 2-4 models of distinct compute, 1-3 tasks, per-item or aggregate cells."""
    n_models = draw(st.integers(2, 4))
    models = draw(st.lists(names, min_size=n_models, max_size=n_models, unique_by=_key))
    families = draw(st.lists(names, min_size=1, max_size=2, unique_by=_key))
    family = [draw(st.sampled_from(families)) for _ in models]
    how = draw(st.sampled_from(["compute", "params_tokens", "mixed"]))
    if how == "compute":
        compute = draw(st.lists(positive, min_size=n_models, max_size=n_models, unique=True))
        params = tokens = [None] * n_models
    else:
        size = st.floats(min_value=1.0, max_value=1e14, allow_nan=False)
        params = draw(st.lists(size, min_size=n_models, max_size=n_models, unique=True))
        tokens = draw(st.lists(size, min_size=n_models, max_size=n_models))
        compute = [6.0 * p * t for p, t in zip(params, tokens)]
        assume(len(set(compute)) == n_models)
    give_compute = [how == "compute" or (how == "mixed" and draw(st.booleans())) for _ in models]
    tasks = draw(st.lists(names, min_size=1, max_size=3, unique_by=_key))
    settings_ = draw(st.one_of(st.none(), st.lists(names, min_size=1, max_size=2, unique_by=_key)))
    numeric_ids = draw(st.booleans())
    rows = []
    for task in tasks:
        kind = draw(st.sampled_from(["item", "aggregate", "both"]))
        ids = draw(st.lists(st.integers(0, 10**9) if numeric_ids else names, min_size=1, max_size=4, unique_by=_key))
        with_correct = draw(st.booleans())
        for setting in settings_ or [None]:
            # every task sees at least two models (two computes)
            present = draw(st.lists(st.sampled_from(range(n_models)), min_size=2, max_size=n_models, unique=True))
            for m in present:
                base = {"family": family[m], "model": models[m], "task": task}
                if setting is not None:
                    base["setting"] = setting
                if give_compute[m]:
                    base["compute"] = compute[m]
                if params[m] is not None:
                    base["params"], base["tokens"] = params[m], tokens[m]
                cell_kind = kind if kind != "both" else draw(st.sampled_from(["item", "aggregate"]))
                if cell_kind == "item":
                    for it in ids:
                        row = dict(base, item=it, n_tokens=draw(st.integers(1, 400)),
                                   logprob=draw(st.floats(min_value=-1e4, max_value=0.0)))
                        if with_correct:
                            row["correct"] = draw(st.sampled_from([0, 1, None]))
                        rows.append(row)
                else:
                    n = draw(st.integers(1, 10**6))
                    row = dict(base, n_items=n, n_tokens=draw(st.floats(min_value=1.0, max_value=1e3)))
                    obs = draw(st.sampled_from(["ce", "n_correct", "accuracy", "ce+n_correct", "ce+accuracy"]))
                    if "ce" in obs:
                        row["ce"] = draw(st.floats(min_value=1e-9, max_value=50.0))
                    if "n_correct" in obs:
                        row["n_correct"] = draw(st.integers(0, n))
                    if "accuracy" in obs:
                        row["accuracy"] = draw(st.floats(min_value=0.0, max_value=1.0))
                    rows.append(row)
    df = pd.DataFrame(rows)
    order = draw(st.permutations(list(df.columns)))
    df = df[order]
    if draw(st.booleans()):
        df = df.sample(frac=1.0, random_state=draw(st.integers(0, 2**31 - 1))).reset_index(drop=True)
    if draw(st.booleans()):  # numbers written as text are numbers
        col = draw(st.sampled_from([c for c in ("compute", "n_tokens", "logprob", "n_items", "ce") if c in df]))
        if df[col].notna().all():
            df[col] = [repr(float(v)) for v in df[col]]
    return df


# the values a corrupted cell gets
nasty_values = st.one_of(
    st.sampled_from([
        None, np.nan, pd.NA, pd.NaT, np.inf, -np.inf, "", " ", "\t", "abc", "nan", "1e400", "-1e400", "0x10", "1,5",
        "١٢", True, False, 0, -1, 0.5, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 2**63, 2**64 + 1, 10**400 // 10**99,
        b"12", b"\xff\xfe", bytearray(b"1"), [1, 2], (1,), {"a": 1}, {1, 2}, complex(1, 2), decimal.Decimal("NaN"),
        decimal.Decimal("1e500"), dt.datetime(2020, 1, 1), dt.timedelta(seconds=3), np.datetime64("2020-01-01"),
        "a\nb", "\n", "\r\n", "x\x00y", "\u2028", "\x1c", "\x85", "é", "\ud800", "a" * 300, object(),
        np.float32(3.5), np.int8(-3), np.bool_(True), np.array([1.0, 2.0]),
    ]),
    st.floats(),
    st.integers(-(2**80), 2**80),
    st.text(max_size=6),
    st.binary(max_size=4),
)
NUMERIC = ["compute", "params", "tokens", "n_tokens", "logprob", "correct", "n_items", "ce", "n_correct", "accuracy"]
ALL_COLUMNS = ["family", "model", "task", "setting", "compute", "params", "tokens", "item", "n_tokens", "logprob",
               "correct", "n_items", "ce", "n_correct", "accuracy", "kind", "_line"]
column_names = st.one_of(st.sampled_from(ALL_COLUMNS), st.sampled_from([f" {c} " for c in ALL_COLUMNS]),
                         st.text(max_size=5), st.integers(-3, 3), st.none(), st.floats(),
                         st.tuples(st.sampled_from(ALL_COLUMNS), st.integers(0, 2)))
DTYPES = ["object", "category", "bool", "str", "string[pyarrow]", "string[python]", "Int64", "Float64", "boolean",
          "float32", "int64", "int8", "uint64", "complex128", "datetime64[ns]", "timedelta64[ns]", "float16",
          "int64[pyarrow]", "double[pyarrow]", "large_string[pyarrow]", "Sparse[float64]"]


def _quietly(fn, *args):
    """``fn(*args)`` without the warnings pandas gives on the corruptions themselves (casts that overflow...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _pos(df: pd.DataFrame, name) -> int | None:
    """Position of the first column called ``name`` (None if there is none)."""
    return next((j for j, c in enumerate(df.columns) if isinstance(c, str) and c == name), None)


def _with_cell(df: pd.DataFrame, r: int, j: int, value) -> pd.DataFrame:
    col = np.empty(len(df), dtype=object)
    col[:] = df.iloc[:, j].tolist()
    col[r] = value
    df = df.copy()
    df.isetitem(j, pd.Series(col, index=df.index, dtype=object))
    return df


@st.composite
def corrupted_tables(draw):
    """A valid table with one to four corruptions (some corrupted tables are still valid, which is fine)."""
    df = draw(valid_tables())
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from([
            "drop", "rename", "duplicate_column", "cell", "cell", "cell", "column_values", "dtype", "duplicate_row",
            "index", "multiindex_columns", "extra_column", "empty", "overflow", "mix_kinds", "negate", "blank_ids",
            "column_math", "column_math", "column_math",
        ]))
        ncol = df.shape[1]
        note(f"corruption: {op}")
        if op == "drop" and ncol:  # by position: a corrupted label (None, a duplicate) is not a drop() argument
            j = draw(st.integers(0, ncol - 1))
            df = df.iloc[:, [k for k in range(ncol) if k != j]]
        elif op == "rename" and ncol:
            j = draw(st.integers(0, ncol - 1))
            cols = list(df.columns)
            cols[j] = draw(column_names)
            df = df.set_axis(cols, axis=1) if not isinstance(df.columns, pd.MultiIndex) else df
        elif op == "duplicate_column" and ncol:
            j = draw(st.integers(0, ncol - 1))
            other = df.iloc[:, [j]]
            if draw(st.booleans()) and len(df):
                other = _with_cell(other, draw(st.integers(0, len(df) - 1)), 0, draw(nasty_values))
            df = pd.concat([df, other], axis=1)
        elif op == "cell" and ncol and len(df):
            df = _with_cell(df, draw(st.integers(0, len(df) - 1)), draw(st.integers(0, ncol - 1)), draw(nasty_values))
        elif op == "column_values" and ncol and len(df):
            j = draw(st.integers(0, ncol - 1))
            vals = draw(st.lists(nasty_values, min_size=len(df), max_size=len(df)))
            col = np.empty(len(df), dtype=object)
            col[:] = vals
            df = df.copy()
            df.isetitem(j, pd.Series(col, index=df.index, dtype=object))
        elif op == "dtype" and ncol:
            j = draw(st.integers(0, ncol - 1))
            try:
                new = _quietly(df.iloc[:, j].astype, draw(st.sampled_from(DTYPES)))
            except Exception:  # not every column converts to every dtype; keep it then
                continue
            df = df.copy()
            df.isetitem(j, new)
        elif op == "duplicate_row" and len(df):
            df = pd.concat([df, df.iloc[[draw(st.integers(0, len(df) - 1))]]])
        elif op == "index" and len(df):
            kind = draw(st.sampled_from(["duplicate", "text", "multi", "float"]))
            if kind == "duplicate":
                df.index = [0] * len(df)
            elif kind == "text":
                df.index = [f"row\n{i}\x00" for i in range(len(df))]
            elif kind == "multi":
                df.index = pd.MultiIndex.from_arrays([np.arange(len(df)) % 2, np.arange(len(df))])
            else:
                df.index = np.linspace(0, 1, len(df))
        elif op == "multiindex_columns" and ncol:
            df.columns = pd.MultiIndex.from_arrays([[str(c) for c in df.columns], ["x"] * ncol])
        elif op == "extra_column":
            name = draw(column_names)
            value = draw(nasty_values)
            df = df.copy()
            try:
                _quietly(df.__setitem__, name, [value] * len(df))
            except Exception:  # e.g. a tuple name on flat columns
                continue
        elif op == "empty":
            df = df.iloc[:0] if draw(st.booleans()) else df.iloc[:, :0]
        elif op == "overflow" and len(df) and not isinstance(df.columns, pd.MultiIndex):
            df = df.copy()
            df["params"], df["tokens"] = 1e200, 1e200
            j = _pos(df, "compute")
            if j is not None and draw(st.booleans()):
                df = _with_cell(df, draw(st.integers(0, len(df) - 1)), j, None)
            elif j is not None:
                df = df.drop(columns="compute")
        elif op == "mix_kinds" and len(df) and not isinstance(df.columns, pd.MultiIndex):
            r = draw(st.integers(0, len(df) - 1))
            df = df.copy()
            if _pos(df, "item") is None:
                df["item"] = None
            df = _with_cell(df, r, _pos(df, "item"), draw(st.one_of(st.none(), st.just(""), any_names)))
        elif op == "negate" and ncol:
            j = draw(st.integers(0, ncol - 1))
            col = df.iloc[:, j]
            if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                df = df.copy()
                df.isetitem(j, -col if draw(st.booleans()) else col * 0)
        elif op == "column_math" and len(df):  # a number column out of range: for all rows, or one model's
            present = [c for c in NUMERIC if _pos(df, c) is not None]
            if not present:
                continue
            j = _pos(df, draw(st.sampled_from(present)))
            col = _quietly(lambda c: pd.to_numeric(c, errors="coerce").astype(float), df.iloc[:, j])
            how = draw(st.sampled_from(["neg", "zero", "huge", "half", "percent", "nan", "inf", "tiny", "minus_one"]))
            with np.errstate(all="ignore"):
                new = {"neg": -col, "zero": col * 0, "huge": col * 1e300, "half": col + 0.5, "percent": col * 100,
                       "nan": col * np.nan, "inf": col * np.inf, "tiny": col * 1e-300, "minus_one": col - 1}[how]
            m = _pos(df, "model")
            rows = pd.Series(True, index=df.index)
            if m is not None and draw(st.booleans()):
                rows = df.iloc[:, m] == df.iloc[draw(st.integers(0, len(df) - 1)), m]
            df = df.copy()
            df.isetitem(j, col.where(~rows.to_numpy(bool), new))
        elif op == "blank_ids" and len(df):
            j = _pos(df, draw(st.sampled_from(["family", "model", "task", "setting", "item"])))
            if j is not None:
                df = _with_cell(df, draw(st.integers(0, len(df) - 1)), j,
                                draw(st.sampled_from(["", "  ", None, "\n", "\t"])))
    return df


# --------------------------------------------------------------------------- validate


def _valid_tables_are_accepted(df, allow_single):
    out = validate(df, source="gen.csv", allow_single_compute=allow_single)
    assert_validated(out)
    assert len(out) == len(df)
    want = df.get("compute", pd.Series(np.nan, index=df.index)).astype(float)
    if "params" in df.columns:
        want = want.fillna(6.0 * df["params"].astype(float) * df["tokens"].astype(float))
    np.testing.assert_array_equal(np.sort(out["compute"].to_numpy(float)), np.sort(want.to_numpy(float)))
    if "setting" not in df.columns:
        assert (out["setting"] == DEFAULT_SETTING).all()
    assert (out["kind"] == "item").sum() == (df["item"].notna().sum() if "item" in df.columns else 0)
    again = validate(out, source="again", allow_single_compute=allow_single)  # idempotent
    assert_validated(again, reduce=False)
    pd.testing.assert_frame_equal(again.drop(columns="_line"), out.drop(columns="_line"))


test_valid_tables_are_accepted, test_valid_tables_are_accepted_fuzz = quick_and_fuzz(
    _valid_tables_are_accepted, valid_tables(), st.booleans(), quick=settings(QUICK, max_examples=50))


def _validate_is_total(df, source, allow_single):
    out = outcome(validate, df, source=source, allow_single_compute=allow_single)
    if out is not None:
        assert_validated(out)


sources = st.one_of(st.just("<table>"), st.just("results.csv"), st.text(max_size=8))
test_validate_is_total, test_validate_is_total_fuzz = quick_and_fuzz(
    _validate_is_total, corrupted_tables(), sources, st.booleans(), quick=settings(QUICK, max_examples=160))


# one value class out of its range, in an otherwise valid table: (column, rows it applies to, change, words in
# the message). A validator that lets any of them through fails this property.
BREAKERS = {
    "compute<0": ("compute", "all", lambda v: -v, "compute must be > 0"),
    "compute=0": ("compute", "all", lambda v: v * 0, "compute"),
    "params<=0": ("params", "all", lambda v: -v, "params must be > 0"),
    "tokens=0": ("tokens", "all", lambda v: v * 0, "tokens must be > 0"),
    "n_tokens<1": ("n_tokens", "all", lambda v: v * 0 + 0.5, "n_tokens must be >= 1"),
    "logprob>0": ("logprob", "item", lambda v: v.abs() + 0.5, "logprob must be <= 0"),
    "correct=2": ("correct", "item", lambda v: v * 0 + 2, "correct must be 0 or 1"),
    "n_items=0": ("n_items", "aggregate", lambda v: v * 0, "n_items must be"),
    "n_items=x.5": ("n_items", "aggregate", lambda v: v + 0.5, "n_items must be"),
    "ce<=0": ("ce", "aggregate", lambda v: -v, "ce must be > 0"),
    "n_correct<0": ("n_correct", "aggregate", lambda v: v * 0 - 1, "n_correct must be"),
    "n_correct>n": ("n_correct", "aggregate", lambda v: v + 1e7, "n_correct must be"),
    "accuracy>1": ("accuracy", "aggregate", lambda v: v * 0 + 1.5, "accuracy must be"),
    "inf": (None, "one", lambda v: v * 0 + np.inf, "infinite"),
    "one compute": ("compute", "all", lambda v: v * 0 + 1e21, "same compute"),
    "overflow": ("params", "all", lambda v: v * 0 + 1e200, "beyond the float range"),
}


def _applies(df: pd.DataFrame, col: str | None, rows: str) -> np.ndarray:
    """Mask of the rows of ``df`` where breaking ``col`` must be caught (no rows if ``col`` is absent)."""
    if col is None or col not in df.columns:
        return np.zeros(len(df), bool)
    kind = np.where(df["item"].notna(), "item", "aggregate") if "item" in df.columns else np.full(len(df), "aggregate")
    have = pd.to_numeric(df[col], errors="coerce").notna().to_numpy()
    return have & ((kind == rows) if rows in ("item", "aggregate") else True)


def _out_of_range_is_rejected(df, data):
    which = data.draw(st.sampled_from(sorted(
        w for w, (col, rows, _, _) in BREAKERS.items()
        if w in ("inf", "one compute") or (w == "overflow" and "params" in df.columns) or _applies(df, col, rows).any()
    )))
    col, rows, change, words = BREAKERS[which]
    df = df.copy()
    if which == "inf":
        col = data.draw(st.sampled_from([c for c in NUMERIC if _applies(df, c, "all").any()]))
    if which == "one compute":  # every row (also where params and tokens gave it)
        df["compute"] = 1.0
    if which == "overflow":
        df = df.drop(columns="compute", errors="ignore").assign(tokens=1e200)
    where = _applies(df, col, rows)
    if rows == "one":
        where[np.flatnonzero(where)[1:]] = False
    vals = pd.to_numeric(df[col], errors="coerce").astype(float)
    df[col] = vals.where(~where, change(vals))
    note(f"broken: {which} ({col}, {where.sum()} rows)")
    with pytest.raises(ForecasterError) as err:
        validate(df)
    msg = str(err.value)
    assert "\n" not in msg and words in msg, (which, msg)


test_out_of_range_is_rejected, test_out_of_range_is_rejected_fuzz = quick_and_fuzz(
    _out_of_range_is_rejected, valid_tables(), st.data(), quick=settings(QUICK, max_examples=80))


def test_validate_rejects_what_is_not_a_table():
    for thing in (None, 3, "family,model\n", [{"family": "f"}], {"family": ["f"]}, np.zeros((2, 2)),
                  pd.Series([1.0]), pd.DataFrame(), pd.DataFrame(index=range(3)), pd.DataFrame(columns=["family"])):
        assert outcome(validate, thing) is None


def test_duplicate_column_names_are_named():
    df = pd.DataFrame({"family": ["f", "f"], "model": ["a", "b"], "task": ["t", "t"], "compute": [1e20, 1e21],
                       "n_items": [10, 10], "n_tokens": [1, 1], "ce": [2.0, 1.5]})
    dup = pd.concat([df, df[["ce"]]], axis=1)
    with pytest.raises(ForecasterError, match="column 'ce' appears 2 times"):
        validate(dup)
    with pytest.raises(ForecasterError, match="column 'task' appears 2 times"):
        validate(df.rename(columns={"model": " task "}))


# --------------------------------------------------------------------------- load_table on files

file_formats = st.sampled_from(["csv", "csv.gz", "parquet"])
byte_damage = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("prepend"), st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"PAR1", b"\x1f\x8b"])),
    st.tuples(st.just("replace"), st.binary(max_size=64)),
    st.tuples(st.just("latin-1"),),
)


def _write(df: pd.DataFrame, path: Path, fmt: str) -> bool:
    """Write ``df`` as ``fmt``; False when the writer itself refuses it (e.g. mixed objects for Parquet)."""
    for attempt in (df, _objects_as_text(df)):
        try:
            if fmt == "parquet":
                _quietly(attempt.to_parquet, path)
            else:
                attempt.to_csv(path, index=False, compression="gzip" if fmt == "csv.gz" else None)
            return True
        except Exception:
            continue
    return False


def _objects_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Mixed-object columns as text (what a tool that cannot write mixed columns to Parquet would do)."""
    out = df.copy()
    for j in range(out.shape[1]):
        col = out.iloc[:, j]
        if col.dtype == object or isinstance(col.dtype, pd.CategoricalDtype):
            out.isetitem(j, col.map(lambda v: v if v is None or isinstance(v, float) else repr(v)).astype(object))
    return out


def _damage(path: Path, how: tuple) -> None:
    data = path.read_bytes()
    if how[0] == "truncate":
        data = data[: int(len(data) * how[1])]
    elif how[0] == "overwrite":
        at = int(len(data) * how[1])
        data = data[:at] + how[2] + data[at + len(how[2]):]
    elif how[0] == "prepend":
        data = how[1] + data
    elif how[0] == "replace":
        data = how[1]
    elif how[0] == "latin-1":
        try:
            data = data.decode("utf-8").encode("latin-1", errors="replace")
        except UnicodeDecodeError:
            pass
    path.write_bytes(data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("seam")


def _load_table_is_total(workdir, tables, formats, damage, allow_single):
    paths = []
    for i, (df, fmt) in enumerate(zip(tables, formats)):
        p = workdir / f"in{i}.{fmt}"
        assume(_write(df, p, fmt))
        paths.append(p)
    _damage(paths[-1], damage)
    out = outcome(load_table, paths if len(paths) > 1 else paths[0], allow_single_compute=allow_single)
    if out is not None:
        assert_validated(out)


table_files = st.integers(1, 2).flatmap(lambda n: st.tuples(
    st.lists(st.one_of(valid_tables(), corrupted_tables()), min_size=n, max_size=n),
    st.lists(file_formats, min_size=n, max_size=n)))

def _files_load_or_fail_in_one_line(workdir, tables_formats, damage, allow_single):
    _load_table_is_total(workdir, *tables_formats, damage, allow_single)


test_load_table_is_total, test_load_table_is_total_fuzz = quick_and_fuzz(
    _files_load_or_fail_in_one_line, table_files, byte_damage, st.booleans(), quick=settings(QUICK, max_examples=80))


def _valid_files_load(workdir, df, fmt):
    p = workdir / f"valid.{fmt}"
    assert _write(df, p, fmt)
    out = load_table(p)
    assert_validated(out)
    assert len(out) == len(df)


test_valid_files_load, test_valid_files_load_fuzz = quick_and_fuzz(
    _valid_files_load, valid_tables(names=plain_names), file_formats, quick=settings(QUICK, max_examples=40))


def test_load_table_odd_paths(tmp_path):
    for bad in (None, 3, [], [None], b"x.csv", tmp_path, tmp_path / "nope.csv", "", "a\x00b.csv",
                [tmp_path / "nope.csv", tmp_path / "nope2.csv"], tmp_path / ("x" * 300 + ".csv")):
        assert outcome(load_table, bad) is None


# --------------------------------------------------------------------------- importers


def test_import_results_odd_arguments(tmp_path):
    from forecaster.importers import import_results

    calls = [
        (("helm", [FIX]), {}), ((None, [FIX]), {}), (("long", None), {}), (("long", 3), {}), (("long", [None]), {}),
        (("long", []), {}), (("long", [tmp_path / ("x" * 300 + ".csv")]), {}), (("long", [tmp_path / "a\nb.csv"]), {}),
        (("bigbench", [FIX / "bigbench"]), {"scorer": "x"}), (("lm-eval", [FIX / "lmeval"]), {"token_count": "bogus"}),
        (("inspect", [FIX / "inspect" / "json"]), {"n_tokens": -1}), (("long", [FIX]), {}),
        (("inspect", [FIX / "inspect" / "json"]), {"compute_table": tmp_path}),
        (("inspect", [FIX / "inspect" / "json"]), {"compute_table": tmp_path / ("x" * 300 + ".csv")}),
    ]
    for args, kwargs in calls:
        assert outcome(import_results, *args, **kwargs) is None, (args, kwargs)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def json_mutation(draw, doc):
    """``doc`` with one part deleted, replaced by another JSON value, or retyped (a path chosen at random)."""
    doc = json.loads(json.dumps(doc))
    root = {"": doc}
    parent, key = root, ""
    while isinstance(parent[key], (dict, list)) and parent[key] and draw(st.integers(0, 3)):
        node = parent[key]
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        parent = node
    op = draw(st.sampled_from(["delete", "replace", "replace", "wrap", "stringify", "empty"]))
    note(f"json mutation: {op} at {key!r}")
    if op == "delete" and parent is not root:
        del parent[key]
    elif op == "wrap":
        parent[key] = [parent[key]]
    elif op == "stringify":
        parent[key] = json.dumps(parent[key])
    elif op == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list, str)) else None
    else:
        parent[key] = draw(json_values)
    return root[""]


def _lmeval_run(tmp_path: Path, mutate) -> Path:
    d = tmp_path / "run"
    shutil.copytree(FIX / "lmeval" / "0shot" / "EleutherAI__pythia-70m", d)
    mutate(d)
    return d


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


IMPORTER_CASES = {  # inputs that crashed the importers, and the one line each now gets
    "lm-eval sample line null": ("lm-eval", lambda d: next(d.glob("samples_sim_arith_*")).write_text("null\n"),
                                 "line 1: not an lm-eval sample"),
    "lm-eval samples not UTF-8": ("lm-eval", lambda d: next(d.glob("samples_sim_arith_*")).write_bytes(b"\xff\n"),
                                  "is not UTF-8 text"),
    "lm-eval n-shot 'x'": ("lm-eval", lambda d: _edit_json(next(d.glob("results_*")),
                                                           lambda j: j["n-shot"].update(sim_arith="x")),
                           "n-shot of task 'sim_arith' is 'x', not a whole number"),
    "lm-eval configs a list": ("lm-eval", lambda d: _edit_json(next(d.glob("results_*")),
                                                               lambda j: j.update(configs=[])),
                               "'configs' is a list, not a JSON object"),
    "lm-eval JSON nested too deep": ("lm-eval", lambda d: next(d.glob("results_*")).write_text("[" * 10**5),
                                     "not valid JSON"),
    "bigbench shots [0]": ("bigbench", lambda d: _edit_json(d / "scores_gpt3-small.json",
                                                            lambda j: j["scores"][0].update(number_of_shots=[0])),
                           "number_of_shots is [0], not a whole number"),
    "bigbench score a list": ("bigbench", lambda d: _edit_json(
        d / "scores_gpt3-small.json", lambda j: j["scores"][0]["score_dict"].update(exact_str_match=[0.5])),
        "exact-match score [0.5] is not a fraction"),
}


@pytest.mark.parametrize("case", sorted(IMPORTER_CASES))
def test_importer_crashes_are_one_line_errors(tmp_path, case):
    from forecaster.importers import import_results

    fmt, mutate, expect = IMPORTER_CASES[case]
    if fmt == "lm-eval":
        d = _lmeval_run(tmp_path, mutate)
    else:
        d = tmp_path / "bb"
        shutil.copytree(FIX / "bigbench", d)
        mutate(d)
    with pytest.raises(ForecasterError) as err:
        import_results(fmt, [d], **({"n_items": 20} if fmt == "bigbench" else {}))
    assert expect in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


@pytest.mark.parametrize("rows,options,expect", [
    ("f,m,t,0,acc,0.5,10,1e20,inf", {}, "column 'step' is infinite"),
    ("f,m,t,0,acc,0.5,10,1e20,1.5", {}, "'step' is 1.5, not a whole number"),
    ("f,m,t,1e300,acc,0.5,10,1e20,", {}, "'shots' is 1e+300, not a whole number"),
    ("f,m,,0,acc,0.5,10,1e20,", {}, "'task' is empty"),
    ("f,m,t,0,ppl,inf,10,1e20,", {}, "column 'value' is infinite"),
    ("f,m,t,0,acc,0.5,10,1e20,", {"n_tokens": "x"}, "n_tokens is 'x'"),
    ("f,m,t,0,acc,0.5,10,1e20,", {"n_tokens": 0}, "n_tokens is 0"),
])
def test_long_format_crashes_are_one_line_errors(tmp_path, rows, options, expect):
    from forecaster.importers import import_results

    f = tmp_path / "long.csv"
    f.write_text("family,model,task,shots,metric,value,n_examples,compute_flops,step\n" + rows + "\n")
    with pytest.raises(ForecasterError) as err:
        import_results("long", [f], **options)
    assert expect in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


def _mutate_file(draw, path: Path) -> None:
    """Damage one file: its JSON (or one JSON line) mutated, or its bytes (or, now and then, nothing)."""
    how = draw(st.sampled_from(["json", "json", "json", "bytes", "none"]))
    if how == "json" and path.suffix in (".json", ".jsonl"):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            lines = text.splitlines()
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = json.dumps(draw(json_mutation(json.loads(lines[i]))))
            if draw(st.integers(0, 3)) == 0:
                lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "{", "[]", "null", "1"])))
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        else:
            path.write_text(json.dumps(draw(json_mutation(json.loads(text)))), encoding="utf-8")
    elif how == "bytes":
        _damage(path, draw(byte_damage))


def mostly(valid, *invalid):
    """Options: a valid one two times in three, else one of ``invalid``."""
    return st.one_of(st.just(valid), st.just(valid), st.sampled_from(invalid))


def _fresh(workdir: Path, src: Path) -> Path:
    dst = workdir / "imp"
    if dst.exists():
        shutil.rmtree(dst)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.mkdir()
        shutil.copy(src, dst / src.name)
    return dst


def _import_is_total(fmt, paths, **options):
    from forecaster.importers import import_results

    out = outcome(import_results, fmt, paths, **options)
    if out is not None:
        assert isinstance(out, pd.DataFrame) and len(out)
        v = outcome(validate, out, source="imported", allow_single_compute=True)
        if v is not None:
            assert_validated(v)


def _mutate_one_file_of(data, workdir: Path, src: Path) -> Path:
    """A fresh copy of ``src`` (a file or a folder) with one of its files mutated."""
    d = _fresh(workdir, src)
    files = sorted(f for f in d.rglob("*") if f.is_file())
    f = files[data.draw(st.integers(0, len(files) - 1))]
    if f.suffix == ".eval":
        _mutate_eval_zip(data.draw, f)
    else:
        _mutate_file(data.draw, f)
    return d


def _lmeval_is_total(workdir, data):
    # one run (one model: validation then asks for a second compute) or three runs (three models)
    runs = sorted(p for p in (FIX / "lmeval").glob("*/*") if p.is_dir()) + [FIX / "lmeval" / "0shot"]
    d = _mutate_one_file_of(data, workdir, data.draw(st.sampled_from(runs)))
    token_count = data.draw(st.one_of(st.sampled_from(["words", "chars/4", 1, 3]),
                                      st.sampled_from([0, -2, "bogus", None, 2.5, True, math.nan])))
    _import_is_total("lm-eval", [d], **({} if token_count is None else {"token_count": token_count}))


test_lmeval_import_is_total, test_lmeval_import_is_total_fuzz = quick_and_fuzz(
    _lmeval_is_total, st.data(), quick=settings(QUICK, max_examples=100))


def _bigbench_is_total(workdir, data):
    d = _mutate_one_file_of(data, workdir, FIX / "bigbench")
    n_items = data.draw(mostly(20, None, 0, -3, 2.5, "x", {"toy_arithmetic": 7}, {"other": 3}, [1], math.inf))
    n_tokens = data.draw(mostly(1, 3, 0, -1, "x", {"toy_arithmetic": 2}, None, math.inf, 0.5))
    _import_is_total("bigbench", [d], n_items=n_items, n_tokens=n_tokens)


test_bigbench_import_is_total, test_bigbench_import_is_total_fuzz = quick_and_fuzz(
    _bigbench_is_total, st.data(), quick=settings(QUICK, max_examples=100))


def _mutate_eval_zip(draw, path: Path) -> None:
    """An Inspect .eval log is a zip of JSON files: mutate one member's JSON, or the zip's bytes."""
    if draw(st.booleans()):
        _damage(path, draw(byte_damage))
        return
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = draw(st.sampled_from(sorted(n for n in members if n.endswith(".json"))))
    members[name] = json.dumps(draw(json_mutation(json.loads(members[name])))).encode()
    if draw(st.integers(0, 5)) == 0:
        del members[name]
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def _inspect_is_total(workdir, data):
    pytest.importorskip("inspect_ai")
    # the .eval logs of two models, or one .json log
    d = _mutate_one_file_of(data, workdir, data.draw(st.sampled_from([FIX / "inspect" / "eval",
                                                                       FIX / "inspect" / "json"])))
    scorer = data.draw(mostly(None, "match", "nope", 3))
    n_tokens = data.draw(mostly(None, 2, 0, -1, "x", math.nan))
    _import_is_total("inspect", [d], compute_table=FIX / "inspect" / "compute_table.csv", scorer=scorer,
                     n_tokens=n_tokens)


test_inspect_import_is_total, test_inspect_import_is_total_fuzz = quick_and_fuzz(
    _inspect_is_total, st.data(), quick=settings(QUICK, max_examples=40))


LONG_COLUMNS = ["family", "model", "params", "train_tokens", "compute_flops", "step", "task", "subtask", "shots",
                "metric", "value", "stderr", "n_examples", "setting"]


@st.composite
def long_tables(draw):
    rows = []
    models = draw(st.lists(any_names, min_size=2, max_size=3, unique_by=_key))
    for m, model in enumerate(models):
        for task in draw(st.lists(any_names, min_size=1, max_size=2, unique_by=_key)):
            for metric in draw(st.lists(st.sampled_from(["acc", "ppl", "ce_nats_per_token", "acc_norm", "exact_match",
                                                         "bleu"]), min_size=1, max_size=3, unique=True)):
                value = {"ppl": draw(st.floats(1.0, 1e4)), "ce_nats_per_token": draw(st.floats(0.0, 20.0))}.get(
                    metric, draw(st.floats(0.0, 1.0)))
                rows.append({
                    "family": "fam", "model": model, "params": draw(st.sampled_from([None, 1e8 * (m + 1)])),
                    "train_tokens": draw(st.sampled_from([None, 3e11])),
                    "compute_flops": draw(st.sampled_from([1e20 * (m + 1), 1e20 * (m + 1), None, 0.0])),
                    "step": draw(st.sampled_from([None, 0, 1000, 143000])), "task": task,
                    "subtask": draw(st.sampled_from([None, "ALL", "sub"])), "shots": draw(st.sampled_from([0, 5])),
                    "metric": metric, "value": value, "stderr": None,
                    "n_examples": draw(st.sampled_from([100, 100, 2500, None])),
                    "setting": draw(st.sampled_from([None, "x", "instruction_tuned=True", "prompt=p1;seed=2"])),
                })
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


@st.composite
def corrupted_long_tables(draw):
    df = draw(long_tables())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "duplicate_column", "cell", "cell", "dtype"]))
        j = draw(st.integers(0, df.shape[1] - 1)) if df.shape[1] else None
        if j is None:
            break
        if op == "drop":
            df = df.drop(columns=df.columns[j])
        elif op == "duplicate_column":
            df = pd.concat([df, df.iloc[:, [j]]], axis=1)
        elif op == "cell" and len(df):
            df = _with_cell(df, draw(st.integers(0, len(df) - 1)), j, draw(nasty_values))
        elif op == "dtype":
            try:
                new = _quietly(df.iloc[:, j].astype, draw(st.sampled_from(DTYPES)))
            except Exception:
                continue
            df = df.copy()
            df.isetitem(j, new)
    return df


def _long_is_total(workdir, df, fmt, damage, n_tokens, subtasks):
    d = workdir / "long"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    p = d / f"results.{fmt}"
    assume(_write(df, p, fmt))
    _damage(p, damage)
    _import_is_total("long", [p], n_tokens=n_tokens, subtasks=subtasks)


test_long_import_is_total, test_long_import_is_total_fuzz = quick_and_fuzz(
    _long_is_total, corrupted_long_tables(), file_formats, st.one_of(st.just(("none",)), byte_damage),
    mostly(1, 2.5, 0, -1, math.nan, "x", {"t": 2}, None), st.booleans(), quick=settings(QUICK, max_examples=80))
