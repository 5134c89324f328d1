"""The one tidy input schema: reading, validation (the one seam) and sufficient statistics.

A row of the tidy table is either

* **per item**: ``item``, ``n_tokens`` (reference answer length in tokens, >= 1),
  ``logprob`` (sum of the natural-log probabilities of the reference tokens,
  teacher-forced; <= 0) and optionally ``correct`` (0/1 exact match); or
* **aggregate** per (model, task, setting): ``n_items``, ``n_tokens`` (mean
  answer length) and ``ce`` (mean per-token cross-entropy, nats) and/or
  ``n_correct`` (exact-match count), or ``accuracy`` together with ``n_items``.

Every row also names ``family``, ``model``, ``task`` and either ``compute``
(training FLOPs) or both ``params`` and ``tokens`` (compute = 6 * params * tokens);
``setting`` (e.g. ``0-shot``, ``5-shot``, ``instruct``) is optional.

:func:`validate` is the only place input is checked; every problem raises a
:class:`~forecaster.errors.DataError` whose message is one line naming the
source, the row/column and the fix. :func:`summarize` reduces a validated table
to sufficient statistics per (model, task, setting) cell, so that the cost of a
fit grows with the number of cells, not with the number of items or tokens.
"""

from __future__ import annotations

import decimal
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataError

__all__ = [
    "DEFAULT_SETTING",
    "CE_FLOOR",
    "CellData",
    "load_table",
    "read_table",
    "validate",
    "summarize",
]

DEFAULT_SETTING = "default"
#: Per-token cross-entropy below this (nats) is floored before taking logs
#: (a log-prob of exactly 0 would otherwise give log CE = -inf).
CE_FLOOR = 1e-6
ID_COLUMNS = ("family", "model", "task")
NUMERIC_COLUMNS = (
    "compute", "params", "tokens", "n_tokens", "logprob", "correct",
    "n_items", "ce", "n_correct", "accuracy",
)
_LINE = "_line"


def _one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1c``, ``\\u2028``, lone
    surrogates too), so that a message stays one printable line whatever names and paths it quotes."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _q(value, limit: int = 60) -> str:
    """A value quoted for a message: its repr on one line, shortened to about ``limit`` characters."""
    try:
        text = repr(value.item() if isinstance(value, np.generic) else value)
    except Exception:  # a repr that fails: name the type instead
        text = f"<{type(value).__name__}>"
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str) -> DataError:
    """The DataError for ``message``, made one line."""
    return DataError(_one_line(message))


def _reject_first(df: pd.DataFrame, bad: pd.Series, source: str, message) -> None:
    """Raise for the first row flagged in ``bad``: its file and line, then ``message(row)``."""
    if bad.any():
        i = bad.idxmax()
        raise _fail(f"{_where(source, df.at[i, _LINE])}: {message(df.loc[i])}")


def _where(source: str, line) -> str:
    line = line if isinstance(line, (int, np.integer)) and not isinstance(line, bool) else _q(line, 30)
    return f"{source}, line {line}" if source and not source.startswith("<") else f"{source} row {line}"


#: Columns of names and ids: read as the text written in a CSV (not parsed as numbers).
_TEXT_COLUMNS = (*ID_COLUMNS, "setting", "item")


def _raw(p: Path, name: str, n: int = -1) -> bytes:
    """The first ``n`` bytes (all: -1) of a CSV, decompressed if it is a .gz; b"" if they cannot be read."""
    import gzip

    try:
        with (gzip.open(p, "rb") if name.endswith(".gz") else open(p, "rb")) as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error):  # not gzip after all, unreadable: the CSV reader says so
        return b""


def _not_utf8_line(p: Path, name: str) -> str:
    """' on line N' for the first line of the file that is not UTF-8 ('' when that cannot be told)."""
    data = _raw(p, name)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f" on line {line}"
    return ""


def _whole_ids(v: pd.Series) -> pd.Series:
    """A column of ids, all whole numbers written as floats (Parquet floats, or text ``1.0``), as integer text."""
    ok = v.dropna()
    if not len(ok):
        return v
    if pd.api.types.is_float_dtype(v):
        if np.isfinite(ok).all() and (ok == np.round(ok)).all():
            return v.astype(object).map(lambda x: x if pd.isna(x) else str(int(x)))
    elif pd.api.types.is_string_dtype(ok) and ok.astype(str).str.fullmatch(r"\s*-?\d+\.0\s*").all():
        return v.where(v.isna(), v.astype(str).str.strip().str[:-2])
    return v


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one CSV or Parquet file (by extension, or by Parquet's first bytes; ``.csv.gz`` works) without
    validating it.

    Names and ids (family, model, task, setting, item) are read as the text the CSV holds (``070`` stays
    ``070``), and ids that are all whole numbers written as floats (``1.0``: what pandas writes for a number
    column with gaps, such as item ids beside aggregate rows, in CSV or Parquet) as the integers (``"1"``), so
    that the same items match across files whichever tool wrote them.
    A UTF-8 or UTF-16 byte-order mark, CRLF line ends, blank lines and rows of bare commas (a spreadsheet's
    leftovers) are fine; line numbers in messages stay those of the file.
    """
    p = Path(path)
    name = p.name.lower()
    parquet = name.endswith((".parquet", ".pq"))
    try:
        exists = p.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte in it
        raise DataError(f"{p}: cannot be opened ({getattr(exc, 'strerror', None) or exc}); check the path") from None
    if not exists:
        raise DataError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass a CSV or Parquet file")
    magic = b"" if parquet else _raw(p, name, 4)
    if magic == b"PK\x03\x04" and not name.endswith(".zip"):  # (pandas reads a zipped .csv.zip)
        raise DataError(f"{p}: is a zip file (an Excel workbook?), not CSV; save it as CSV UTF-8 or Parquet")
    parquet = parquet or magic == b"PAR1"  # a Parquet file under another name
    try:
        if parquet:  # one thread: pyarrow's thread pool after a read through a file handle can abort the
            df = pd.read_parquet(p, use_threads=False)  # interpreter at exit (apache/arrow#34314, #50482)
        else:
            # a UTF-16 byte-order mark: Excel's "Unicode text", PowerShell's Export-Csv
            enc = "utf-16" if magic[:2] in (b"\xff\xfe", b"\xfe\xff") else None
            opts = dict(encoding=enc, skipinitialspace=True)  # "a, b, c": a space after a comma is no value
            header = pd.read_csv(p, nrows=0, **opts).columns
            opts["dtype"] = {c: str for c in header if str(c).strip() in _TEXT_COLUMNS}
            try:  # blank lines kept as empty rows (dropped below), so that rows keep their line numbers
                df = pd.read_csv(p, skip_blank_lines=False, **opts)
            except pd.errors.EmptyDataError:  # blank lines above the header: skipped (lines count from it)
                df = pd.read_csv(p, **opts)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: file is empty; it needs a header row and at least one data row") from None
    except UnicodeError:
        raise DataError(f"{p}: is not UTF-8 text{_not_utf8_line(p, name)}; save it as UTF-8 CSV "
                        "(Excel: 'CSV UTF-8') or Parquet") from None
    except Exception as exc:  # unreadable: binary garbage, broken gzip or parquet
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{p}: cannot be read as CSV or Parquet ({first}); save it as UTF-8 CSV or Parquet") from None
    if not parquet and len(df.columns) == 1:
        for sep, what in ((";", "';'"), ("\t", "tabs")):
            if sep in str(df.columns[0]):
                raise DataError(f"{p}: columns are separated by {what}, not commas; save it as comma-separated "
                                "CSV or Parquet")
    if isinstance(df.columns, pd.MultiIndex):  # (a Parquet file written from a table with such columns)
        raise DataError(f"{p}: has {df.columns.nlevels} levels of column names; give one header row of plain names")
    # line numbers as a person sees them in the file (header is line 1); Parquet rows count from 0
    df[_LINE] = np.arange(len(df)) + (0 if parquet else 2)
    for col in df.columns if df.columns.is_unique else ():  # whole-number ids written as floats: as integers
        if str(col).strip() in _TEXT_COLUMNS:
            df[col] = _whole_ids(df[col])
    if not parquet:  # blank lines and rows of bare commas hold nothing: drop them (their lines still count)
        cells = df.drop(columns=_LINE)
        blank = cells.isna().all(axis=1)
        if blank.any():
            df = df[~blank].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{p}: has a header but no data rows; add results, one row per item or per (model, task, setting)")
    df.attrs["source"] = str(p)
    return df


def load_table(paths: str | Path | Sequence[str | Path], *, allow_single_compute: bool = False) -> pd.DataFrame:
    """Read and validate one or more CSV/Parquet files into one tidy table.

    Parameters
    ----------
    paths : path or sequence of paths
        CSV (optionally gzipped) or Parquet files in the tidy schema.
    allow_single_compute : bool
        Accept tasks seen at a single compute (their slope then comes from the
        pooled prior alone).

    Returns
    -------
    pandas.DataFrame
        The validated table (see :func:`validate`).

    Raises
    ------
    forecaster.errors.DataError
        With a one-line message naming the file, line and column, and the fix.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    elif not isinstance(paths, Iterable) or isinstance(paths, (bytes, pd.DataFrame)):
        raise _fail(f"expected file paths, got {type(paths).__name__}; pass CSV or Parquet file names")
    paths = list(paths)
    frames = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not str(p).strip():
            raise _fail(f"expected a file path, got {_q(p)}; pass CSV or Parquet file names")
        source = _one_line(str(p))
        try:
            df = read_table(p)
        except DataError as exc:
            raise _fail(str(exc)) from None
        frames.append(_check_rows(df, source=source))
    if not frames:
        raise _fail("no input files given; pass at least one CSV or Parquet file")
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    table.attrs["source"] = ", ".join(_one_line(str(p)) for p in paths)
    return _check_table(table, allow_single_compute=allow_single_compute)


def validate(df: pd.DataFrame, *, source: str = "<table>", allow_single_compute: bool = False) -> pd.DataFrame:
    """Validate a tidy table and return a normalized copy.

    The returned table has a ``compute`` column (filled from ``6*params*tokens``
    where needed), a ``setting`` column (``"default"`` where absent), a
    ``kind`` column (``"item"`` or ``"aggregate"``) and ``n_correct`` filled from
    ``accuracy * n_items`` where only accuracy was given. Names and ids
    (family, model, task, setting, item) are text, numbers are floats, and
    column names are stripped text.

    Parameters
    ----------
    df : pandas.DataFrame
        The tidy table (see the README's input schema).
    source : str
        Name of the table's origin (a file name), used in error messages.
    allow_single_compute : bool
        Accept tasks seen at a single compute (fit only through the pooled slope prior).

    Returns
    -------
    pandas.DataFrame
        The normalized copy.

    Raises
    ------
    forecaster.errors.DataError
        With a one-line message naming the source, row and column, and the fix;
        for any input (validation is total: no other exception).
    """
    source = _one_line(str(source))
    if not isinstance(df, pd.DataFrame):
        raise _fail(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    if df.shape[1] == 0:
        raise _fail(f"{source}: the table has no columns; give family, model, task, compute and the results")
    if df.empty:
        raise _fail(f"{source}: the table has no rows; add results, one row per item or per (model, task, setting)")
    df = _plain_columns(df, source)  # a copy
    if _LINE not in df.columns:  # rows are named by their index label in messages
        df[_LINE] = df.index.to_flat_index()
    df = df.reset_index(drop=True)
    df.attrs["source"] = source
    df = _check_rows(df, source=source)
    return _check_table(df, allow_single_compute=allow_single_compute)


def _plain_columns(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """A copy with column names as stripped text; several levels of column names, or a repeated name, raise."""
    if isinstance(df.columns, pd.MultiIndex):
        raise _fail(f"{source}: the table has {df.columns.nlevels} levels of column names; give one header row "
                    "of plain names (family, model, task, ...)")
    names = [str(c).strip() for c in df.columns]
    if len(set(names)) < len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise _fail(f"{source}: column {_q(dup)} appears {names.count(dup)} times; keep one column of each name "
                    "(rename or drop the others)")
    out = df.copy()
    out.columns = names
    return out


_BAD = object()  # a cell that is neither text nor a number (a list, bytes that are not UTF-8, a date...)


def _text_value(v):
    """One cell as text (numbers as their text), None where missing, _BAD where it is no name at all."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no file can hold it
            return _BAD
        return v
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and v != v):
        return None
    if isinstance(v, (bool, int, float, decimal.Decimal, np.bool_, np.integer, np.floating)):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return _BAD
    return _BAD


def _text(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    """Column of names/ids as stripped text (numbers as their text), NaN where missing; other objects raise."""
    raw = df[col]
    try:  # fast path: a text or number column
        if not (pd.api.types.is_string_dtype(raw.dtype) and raw.dtype != object) and not (
            pd.api.types.is_numeric_dtype(raw.dtype) or pd.api.types.infer_dtype(raw, skipna=True) in (
                "string", "empty", "integer", "floating", "mixed-integer-float", "boolean", "decimal")
        ):
            raise TypeError("mixed")
        if raw.dtype == object:  # pandas 2's text: a lone surrogate passes astype(str); the slow path names it
            raw.dropna().astype(str).str.encode("utf-8")
        return raw.astype(str).str.strip().where(raw.notna(), np.nan)  # pandas 2 writes NaN as "nan"
    except (TypeError, ValueError, UnicodeError):
        pass
    vals = raw.astype(object).map(_text_value)
    bad = vals.map(lambda v: v is _BAD)
    if bad.any():
        i = bad.idxmax()
        v = raw.at[i]
        what = "text that is not valid Unicode" if isinstance(v, (str, bytes, bytearray)) else f"a {type(v).__name__}"
        raise _fail(f"{_where(source, df.at[i, _LINE])}: column '{col}' holds {what} ({_q(v)}), not a name; "
                    f"write the {col} as plain text")
    return vals.astype(str).str.strip().where(vals.notna(), np.nan)  # pandas 2 writes None as "None"


def _number_value(v):
    """One cell for :func:`pandas.to_numeric`: numbers as floats, text as stripped text, None where missing,
    _BAD where it is neither."""
    if isinstance(v, str):
        return v.strip() or None  # blank text is an empty cell
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (bool, int, float, decimal.Decimal, np.bool_, np.integer, np.floating)):
        try:
            return float(v)
        except OverflowError:  # an integer beyond the float range
            return math.inf if v > 0 else -math.inf
        except ValueError:  # Decimal("sNaN")
            return _BAD
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            return _BAD
    return _BAD


def _exact_float(text: str, parsed: float) -> float:
    """``text`` (which pandas parsed as ``parsed``) as the nearest float, as Python reads it."""
    try:
        return float(text)
    except (ValueError, OverflowError):
        return parsed


def _floats(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A column as floats (NaN where empty: missing values, blank text) and the mask of its cells that are no
    number (text that is not a number, lists, bytes that are not UTF-8, dates, complex numbers...). Total: any
    column gives an answer; integers beyond the float range become infinite."""
    try:  # fast path: numbers, or text of numbers
        dtype = raw.dtype
        if getattr(dtype, "kind", "O") in "mMcV" or isinstance(
                dtype, (pd.PeriodDtype, pd.IntervalDtype, pd.CategoricalDtype)):
            raise TypeError("no numbers")
        if dtype == object and pd.api.types.infer_dtype(raw, skipna=True) not in (
                "string", "empty", "integer", "floating", "mixed-integer-float", "boolean", "decimal"):
            raise TypeError("mixed")
        vals = pd.to_numeric(raw, errors="coerce").astype(float)
        cells, flagged = raw, None
    except (TypeError, ValueError, OverflowError):  # cell by cell: complex, lists, bytes, dates, huge integers...
        cells = raw.astype(object).map(_number_value)
        flagged = cells.map(lambda v: v is _BAD).astype(bool)
        cells = cells.where(~flagged, None)
        vals = pd.to_numeric(cells, errors="coerce").astype(float)
    if not pd.api.types.is_numeric_dtype(cells.dtype):  # text parsed exactly (pandas 2 misses by an ulp)
        text = np.flatnonzero(vals.notna().to_numpy() & cells.map(lambda v: isinstance(v, str)).to_numpy(bool))
        if len(text):
            vals = vals.copy()
            vals.iloc[text] = [_exact_float(cells.iloc[i], vals.iloc[i]) for i in text]
    bad = np.array(vals.isna() & cells.notna(), dtype=bool)
    if bad.any():  # blank text is an empty cell
        at = np.flatnonzero(bad)
        bad[at] = ~cells.iloc[at].map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(bool)
    if flagged is not None:
        bad |= flagged.to_numpy(bool)
    return vals, pd.Series(bad, index=raw.index)


def _numeric(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    """Column as float; non-numeric or infinite entries raise with the offending row. Blank text is missing."""
    vals, bad = _floats(df[col])
    if bad.any():
        i = bad.idxmax()
        raise _fail(f"{_where(source, df.at[i, _LINE])}: column '{col}' has non-numeric value {_q(df[col].at[i])}; "
                    "write a plain number")
    inf = np.isinf(vals)
    if inf.any():
        i = inf.idxmax()
        raise _fail(f"{_where(source, df.at[i, _LINE])}: column '{col}' is infinite or too large "
                    f"({_q(df[col].at[i])}); write a finite number")
    return vals


def _require_present(df: pd.DataFrame, col: str, mask: pd.Series, source: str, why: str) -> None:
    if col not in df.columns:
        i = mask.idxmax()
        raise _fail(f"{source}: missing column '{col}' ({why}, e.g. {_where(source, df.at[i, _LINE])}); add it")
    missing = mask & df[col].isna()
    if missing.any():
        i = missing.idxmax()
        raise _fail(
            f"{_where(source, df.at[i, _LINE])}: column '{col}' is empty or NaN ({why}); fill it in or drop the row"
        )


def _check_rows(df: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Per-row checks of one source: columns, types, ranges."""
    df = _plain_columns(df, source).reset_index(drop=True)  # rows are named by their _line
    for col in ID_COLUMNS:
        if col not in df.columns:
            raise _fail(f"{source}: missing column '{col}'; every row needs family, model and task")
        df[col] = _text(df, col, source)
        empty = df[col].isna() | (df[col] == "")
        if empty.any():
            i = empty.idxmax()
            raise _fail(f"{_where(source, df.at[i, _LINE])}: column '{col}' is empty; name the {col}")
    if "setting" in df.columns:
        setting = _text(df, "setting", source)
        df["setting"] = setting.where(setting.notna() & (setting != ""), DEFAULT_SETTING)
    else:
        df["setting"] = DEFAULT_SETTING

    everything = pd.Series(True, index=df.index)
    for col in NUMERIC_COLUMNS:
        if col in df.columns:
            df[col] = _numeric(df, col, source)

    # compute
    if "compute" in df.columns and df["compute"].notna().all():
        pass
    elif {"params", "tokens"} <= set(df.columns):
        need = df["compute"].isna() if "compute" in df.columns else everything
        _require_present(df, "params", need, source, "compute is missing, so compute = 6*params*tokens")
        _require_present(df, "tokens", need, source, "compute is missing, so compute = 6*params*tokens")
        with np.errstate(over="ignore"):
            filled = 6.0 * df["params"] * df["tokens"]
        _reject_first(df, need & np.isinf(filled), source, lambda r: (
            f"compute = 6*params*tokens = 6*{r['params']:g}*{r['tokens']:g} is beyond the float range; "
            "fix params and tokens, or give 'compute' in FLOPs"))
        df["compute"] = df["compute"].where(~need, filled) if "compute" in df.columns else filled
    elif "compute" in df.columns:
        i = df["compute"].isna().idxmax()
        raise _fail(
            f"{_where(source, df.at[i, _LINE])}: column 'compute' is empty or NaN; give training FLOPs, "
            "or add columns params and tokens"
        )
    else:
        raise _fail(
            f"{source}: missing column 'compute'; add training FLOPs as 'compute', or both 'params' and 'tokens'"
        )
    for col in ("params", "tokens"):
        bad = df[col] <= 0 if col in df.columns else pd.Series(False, index=df.index)
        _reject_first(df, bad, source, lambda r: f"{col} must be > 0, got {r[col]:g}; fix or leave it empty")
    bad = df["compute"] <= 0
    _reject_first(df, bad, source, lambda r: (
        f"compute must be > 0 FLOPs, got {r['compute']:g}; drop untrained (step 0) checkpoints or fix the value"))

    # row kind
    if "item" in df.columns:
        item = _text(df, "item", source)
        is_item = item.notna() & (item != "")
    else:
        is_item = pd.Series(False, index=df.index)
    is_agg = ~is_item
    df["kind"] = np.where(is_item, "item", "aggregate")
    if "item" in df.columns:  # item ids as text (numeric ids too), empty for aggregate rows
        df["item"] = item.where(is_item)

    # answer length, for both kinds
    _require_present(df, "n_tokens", everything, source, "answer length in tokens, needed for every row")
    bad = df["n_tokens"] < 1
    _reject_first(df, bad, source, lambda r: (
        f"n_tokens must be >= 1, got {r['n_tokens']:g}; give the reference answer's length in tokens"))

    if is_item.any():
        _require_present(df, "logprob", is_item, source, "per-item rows need the answer's summed log-probability")
        bad = is_item & (df["logprob"] > 0)
        _reject_first(df, bad, source, lambda r: (
            f"logprob must be <= 0 (a natural-log probability), got {r['logprob']:g}; "
            "pass log-probabilities, not probabilities or negated losses"))
        if "correct" in df.columns:
            bad = is_item & df["correct"].notna() & ~df["correct"].isin([0.0, 1.0])
            _reject_first(df, bad, source, lambda r: (
                f"correct must be 0 or 1, got {r['correct']:g}; write 1 for an exact match, 0 otherwise"))

    if is_agg.any():
        has = {c: (df[c].notna() if c in df.columns else pd.Series(False, index=df.index))
               for c in ("ce", "n_correct", "accuracy", "n_items")}
        none = is_agg & ~has["ce"] & ~has["n_correct"] & ~has["accuracy"]
        if none.any():
            i = none.idxmax()
            raise _fail(
                f"{_where(source, df.at[i, _LINE])}: an aggregate row needs 'ce', 'n_correct' or 'accuracy' "
                "(or 'item' and 'logprob' for a per-item row); add one of them"
            )
        _require_present(df, "n_items", is_agg, source, "aggregate rows need the number of test items")
        bad = is_agg & ((df["n_items"] < 1) | (df["n_items"] != np.round(df["n_items"])))
        _reject_first(df, bad, source, lambda r: f"n_items must be a whole number >= 1, got {r['n_items']:g}")
        if has["ce"].any():
            bad = is_agg & has["ce"] & (df["ce"] <= 0)
            _reject_first(df, bad, source, lambda r: (
                f"ce must be > 0 (mean per-token cross-entropy in nats), got {r['ce']:g}"))
        if has["accuracy"].any():
            bad = is_agg & has["accuracy"] & ((df["accuracy"] < 0) | (df["accuracy"] > 1))
            _reject_first(df, bad, source, lambda r: (
                f"accuracy must be in [0, 1], got {r['accuracy']:g}; give a fraction, not a percentage"))
            if "n_correct" not in df.columns:
                df["n_correct"] = np.nan
            fill = is_agg & has["accuracy"] & ~has["n_correct"]
            df.loc[fill, "n_correct"] = np.round(df.loc[fill, "accuracy"] * df.loc[fill, "n_items"])
        if "n_correct" in df.columns:
            nc = df["n_correct"]
            bad = is_agg & nc.notna() & ((nc < 0) | (nc > df["n_items"]) | (nc != np.round(nc)))
            _reject_first(df, bad, source, lambda r: (
                f"n_correct must be a whole number in [0, n_items], got {r['n_correct']:g} "
                f"with n_items {r['n_items']:g}"))
    return df


def _check_table(df: pd.DataFrame, *, allow_single_compute: bool) -> pd.DataFrame:
    """Checks across rows (possibly from several files): duplicates, consistency, identifiability."""
    source = df.attrs.get("source", "<table>")
    cell = ["family", "model", "task", "setting"]
    # duplicates
    item_rows = df[df["kind"] == "item"]
    _reject_first(df, item_rows.duplicated(cell + ["item"], keep="first"), source, lambda r: (
        f"duplicate row for model {_q(r['model'])}, task {_q(r['task'])}, setting {_q(r['setting'])}, "
        f"item {_q(r['item'])}; keep one row per item"))
    agg_rows = df[df["kind"] == "aggregate"]
    _reject_first(df, agg_rows.duplicated(cell, keep="first"), source, lambda r: (
        f"duplicate aggregate row for model {_q(r['model'])}, task {_q(r['task'])}, setting {_q(r['setting'])}; "
        "keep one row per (model, task, setting)"))
    both = set(map(tuple, item_rows[cell].drop_duplicates().to_numpy())) & set(
        map(tuple, agg_rows[cell].to_numpy())
    )
    if both:
        f, m, t, s = sorted(both)[0]
        raise _fail(
            f"{source}: model {_q(m)}, task {_q(t)}, setting {_q(s)} has both per-item and aggregate rows; "
            "keep one kind per (model, task, setting)"
        )
    # a model has one family and one compute
    fam = df.groupby("model")["family"].nunique()
    if (fam > 1).any():
        m = fam[fam > 1].index[0]
        raise _fail(f"{source}: model {_q(m)} appears under several families; give each model one family")
    by_model = df.groupby("model")["compute"]
    comp = by_model.max() / by_model.min()
    if (comp > 1 + 1e-9).any():
        m = comp[comp > 1 + 1e-9].index[0]
        raise _fail(
            f"{source}: model {_q(m)} has different compute values; give each model (checkpoint) one compute, "
            "or name checkpoints as separate models"
        )
    # identifiability
    n_compute = df["compute"].nunique()
    if n_compute < 2:
        raise _fail(
            f"{source}: all rows have the same compute ({df['compute'].iloc[0]:g} FLOPs): a scaling trend needs "
            "results from at least two model sizes or checkpoints"
        )
    per_task = df.groupby("task")["compute"].nunique()
    single = per_task[per_task < 2]
    if len(single) and not allow_single_compute:
        raise _fail(
            f"{source}: task {_q(single.index[0])} is seen at a single compute only, so its slope cannot be "
            "identified; add results at another compute, or allow it to borrow the pooled slope "
            "(--pool-single-compute / allow_single_compute=True)"
        )
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- sufficient statistics


@dataclass
class CellData:
    """Sufficient statistics per (model, task, setting) cell, with integer codes for the model.

    Arrays named ``cell_*`` have one entry per cell. Item statistics are NaN
    (and ``item_n`` 0) for cells without per-item data, and likewise for the
    aggregate CE and the exact-match counts.
    """

    tasks: list[str]
    families: list[str]
    settings: list[str]
    models: list[str]
    c0: float
    cell_model: np.ndarray
    cell_task: np.ndarray
    cell_family: np.ndarray
    cell_setting: np.ndarray
    cell_x: np.ndarray  # log10 compute
    cell_k: np.ndarray  # mean answer length (tokens)
    item_n: np.ndarray  # number of per-item observations
    item_mean: np.ndarray  # mean over items of log per-token CE
    item_ss: np.ndarray  # within-cell sum of squares of log CE (used when the group is unbalanced)
    item_balanced: np.ndarray  # bool: cell belongs to a balanced (task, setting) item group
    ce_obs: np.ndarray  # aggregate mean per-token CE (nats)
    ce_n: np.ndarray  # n_items behind ce_obs
    em_n: np.ndarray  # items behind the exact-match count (0 when none)
    em_correct: np.ndarray
    group_task: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # balanced groups
    group_ss_items: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_df_items: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_ss_res: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_df_res: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cell_group: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # balanced group of a cell, or -1
    # log10(params / tokens) of each cell's model (NaN where params and tokens are not both given), and its median
    cell_u: np.ndarray = field(default_factory=lambda: np.zeros(0))
    u0: float = float("nan")
    # per task: median observed log CE over its cells with CE data (0 where none): the reference point of the
    # item spread (forecaster.quadrature.item_spread)
    spread_ref: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # base model of each cell ("pythia-1b@step13000" -> "pythia-1b": checkpoints of one model share it)
    cell_base: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    bases: list[str] = field(default_factory=list)
    model_family: dict[str, str] = field(default_factory=dict)
    model_compute: dict[str, float] = field(default_factory=dict)
    task_k: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_cells(self) -> int:
        return len(self.cell_x)


def _codes(values: pd.Series, order: Iterable[str] | None = None) -> tuple[np.ndarray, list[str]]:
    levels = list(order) if order is not None else sorted(values.unique())
    lookup = {v: i for i, v in enumerate(levels)}
    return values.map(lookup).to_numpy(int), levels


def _setting_order(settings: Iterable[str]) -> list[str]:
    """Reference setting first: 'default', then a zero-shot one, then alphabetical."""
    s = sorted(set(settings))

    def rank(v: str) -> tuple[int, str]:
        low = v.lower()
        if low == DEFAULT_SETTING:
            return (0, v)
        if low.startswith("0-shot") or low in {"0shot", "zero-shot", "base"}:
            return (1, v)
        return (2, v)

    return sorted(s, key=rank)


def summarize(df: pd.DataFrame, c0: float | None = None) -> CellData:
    """Reduce a validated tidy table to per-cell sufficient statistics.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`validate` or :func:`load_table`.
    c0 : float, optional
        Centre of log10 compute; defaults to the median over cells.
    """
    key = ["model", "task", "setting"]
    cells = df.groupby(key, sort=True).agg(
        family=("family", "first"), compute=("compute", "first"), k=("n_tokens", "mean")
    ).reset_index()
    tasks = sorted(df["task"].unique())
    families = sorted(df["family"].unique())
    settings = _setting_order(df["setting"].unique())
    models = sorted(df["model"].unique())
    n = len(cells)
    idx = {tuple(r): i for i, r in enumerate(cells[key].to_numpy())}

    item_n = np.zeros(n)
    item_mean = np.full(n, np.nan)
    item_ss = np.full(n, np.nan)
    balanced = np.zeros(n, bool)
    cell_group = np.full(n, -1, int)
    ce_obs = np.full(n, np.nan)
    ce_n = np.zeros(n)
    em_n = np.zeros(n)
    em_correct = np.zeros(n)
    g_task, g_ssi, g_dfi, g_ssr, g_dfr = [], [], [], [], []

    items = df[df["kind"] == "item"]
    if len(items):
        ce = np.maximum(-items["logprob"].to_numpy(float) / items["n_tokens"].to_numpy(float), CE_FLOOR)
        items = items.assign(y=np.log(ce))
        st = items.groupby(key).agg(n=("y", "size"), mean=("y", "mean"), var=("y", lambda v: float(np.var(v))))
        for (m, t, s), r in st.iterrows():
            i = idx[(m, t, s)]
            item_n[i] = r["n"]
            item_mean[i] = r["mean"]
            item_ss[i] = r["var"] * r["n"]
        if "correct" in items.columns:
            c = items[items["correct"].notna()].groupby(key)["correct"].agg(["size", "sum"])
            for (m, t, s), r in c.iterrows():
                i = idx[(m, t, s)]
                em_n[i] = r["size"]
                em_correct[i] = r["sum"]
        # balanced (task, setting) groups: same item set in every cell -> two-way decomposition
        for (t, s), g in items.groupby(["task", "setting"]):
            per_cell = g.groupby("model")["item"].apply(lambda v: frozenset(v))
            if len(per_cell) < 2 or len(set(per_cell)) != 1:
                continue
            n_items_g = len(per_cell.iloc[0])
            if n_items_g < 2:
                continue
            mat = g.pivot(index="item", columns="model", values="y").to_numpy()
            grand = mat.mean()
            item_means = mat.mean(axis=1)
            cell_means = mat.mean(axis=0)
            J = mat.shape[1]
            resid = mat - item_means[:, None] - cell_means[None, :] + grand
            g_task.append(tasks.index(t))
            g_ssi.append(J * float(np.sum((item_means - grand) ** 2)))
            g_dfi.append(n_items_g - 1)
            g_ssr.append(float(np.sum(resid**2)))
            g_dfr.append((n_items_g - 1) * (J - 1))
            for m in per_cell.index:
                balanced[idx[(m, t, s)]] = True
                cell_group[idx[(m, t, s)]] = len(g_task) - 1

    aggs = df[df["kind"] == "aggregate"]
    for r in aggs.itertuples(index=False):
        i = idx[(r.model, r.task, r.setting)]
        ce_val = getattr(r, "ce", np.nan)
        if ce_val == ce_val and ce_val is not None:
            ce_obs[i] = ce_val
            ce_n[i] = r.n_items
        nc = getattr(r, "n_correct", np.nan)
        if nc == nc and nc is not None:
            em_n[i] = r.n_items
            em_correct[i] = nc

    cell_u = np.full(n, np.nan)
    if {"params", "tokens"} <= set(df.columns):
        pt_ = df.groupby(key, sort=True).agg(params=("params", "first"), tokens=("tokens", "first"))
        pp, tk = pt_["params"].to_numpy(float), pt_["tokens"].to_numpy(float)
        ok = np.isfinite(pp) & np.isfinite(tk) & (pp > 0) & (tk > 0)
        cell_u[ok] = np.log10(pp[ok]) - np.log10(tk[ok])
    u0 = float(np.round(np.median(cell_u[np.isfinite(cell_u)]), 2)) if np.isfinite(cell_u).any() else float("nan")

    obs_lce = np.where(item_n > 0, item_mean, np.log(np.where(ce_obs > 0, ce_obs, np.nan)))
    t_codes0 = _codes(cells["task"], tasks)[0]
    spread_ref = np.array([
        float(np.round(np.nanmedian(obs_lce[t_codes0 == j]), 2)) if np.isfinite(obs_lce[t_codes0 == j]).any() else 0.0
        for j in range(len(tasks))
    ])
    base_names = cells["model"].astype(str).str.split("@", n=1).str[0]
    cell_base, bases = _codes(base_names)

    x = np.log10(cells["compute"].to_numpy(float))
    if c0 is None:
        c0 = float(np.round(np.median(x), 2))
    t_codes, _ = _codes(cells["task"], tasks)
    k = cells["k"].to_numpy(float)
    task_k = np.array([k[t_codes == j].mean() for j in range(len(tasks))])
    mf = df.groupby("model")["family"].first().to_dict()
    mc = df.groupby("model")["compute"].first().astype(float).to_dict()
    return CellData(
        tasks=tasks,
        families=families,
        settings=settings,
        models=models,
        c0=c0,
        cell_model=_codes(cells["model"], models)[0],
        cell_task=t_codes,
        cell_family=_codes(cells["family"], families)[0],
        cell_setting=_codes(cells["setting"], settings)[0],
        cell_x=x,
        cell_k=k,
        item_n=item_n,
        item_mean=item_mean,
        item_ss=item_ss,
        item_balanced=balanced,
        ce_obs=ce_obs,
        ce_n=ce_n,
        em_n=em_n,
        em_correct=em_correct,
        group_task=np.array(g_task, int),
        group_ss_items=np.array(g_ssi, float),
        group_df_items=np.array(g_dfi, float),
        group_ss_res=np.array(g_ssr, float),
        group_df_res=np.array(g_dfr, float),
        cell_group=cell_group,
        cell_u=cell_u,
        u0=u0,
        cell_base=cell_base,
        bases=bases,
        spread_ref=spread_ref,
        model_family=mf,
        model_compute=mc,
        task_k=task_k,
    )
