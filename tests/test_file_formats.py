"""Every documented input shape, written as a file and fitted through the CLI; every bad input rejected in one line.

The README promises a tidy table as CSV (optionally ``.gz``) or Parquet, with per-item rows and/or aggregate rows
(``ce``, ``n_correct``, ``accuracy`` with ``n_items``), ``compute`` or ``params`` + ``tokens``, an optional
``setting`` column, numeric or text names. A fresh install of pandas 3 once made every per-item CSV with numeric
item ids crash in ``forecaster fit`` while CI stayed green, because no test read such a file through the CLI;
here each shape is written the way people's tools write it (pandas, a spreadsheet's "CSV UTF-8" with a BOM and
CRLF line ends, R's ``write.csv``, hand-quoted names with commas and quotes, gzip, Parquet) and fitted.

Cheap by design: every file that fits holds the same table (4 models x 6 tasks, one setting; names, ids and
encodings vary), so all fits share one compiled model (the compile cache is keyed on the model's graph; the data
are run-time inputs). The first fit of a fresh cache compiles it (~20-120 s); the others load it. Bad inputs fail
before anything is compiled.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from forecaster.cli import app

runner = CliRunner()

FIT_ARGS = ["--draws", "20", "--tune", "20", "--chains", "1", "--seed", "1"]

PARAMS = [7e7, 1.6e8, 4.1e8, 1e9]
NUMERIC_MODELS = [70, 160, 410, 1000]  # "pythia-70m" shortened to a number: a column a reader parses as integers
TEXT_MODELS = ["pythia-70m", "pythia-160m", 'pythia "410m", dedup', "pythia-1b"]  # a comma and quotes inside
NUMERIC_ITEMS = [1, 2, 3, 4, 5]
TEXT_ITEMS = ["q1", 'say "hi"', "a, b", "q 4", "café"]
ITEM_TASKS = ("arith", "cloze")


def _main(*args, cwd=None, script: bool = False) -> subprocess.CompletedProcess:
    """The installed entry point (``forecaster.cli:main``) in a fresh interpreter, as a user runs it; ``script``:
    the ``forecaster`` console script itself where the environment has one."""
    exe = Path(sys.executable).with_name("forecaster")
    cmd = [str(exe)] if script and exe.is_file() else [sys.executable, "-c", "from forecaster.cli import main; main()"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd)


# --------------------------------------------------------------------------- the table


def rows(models=NUMERIC_MODELS, items=NUMERIC_ITEMS, size="compute", setting: str | None = "0-shot") -> list[dict]:
    """The one table every fitting file holds: per-item tasks (with and without ``correct``) and aggregate tasks
    (``ce``; ``n_correct``; ``accuracy`` with ``n_items``; ``ce`` and ``n_correct``), 4 models of one family.

    ``size``: ``"compute"``, ``"params"`` (params and tokens, no compute) or ``"both"``. Params and tokens keep
    one ratio (20 tokens a parameter), so compute alone and params + tokens give the same model design.
    """
    out = []
    for j, (name, p) in enumerate(zip(models, PARAMS)):
        base: dict = {"family": "pythia", "model": name}
        if setting is not None:
            base["setting"] = setting
        if size in ("compute", "both"):
            base["compute"] = 6 * p * 20 * p
        if size in ("params", "both"):
            base |= {"params": p, "tokens": 20 * p}
        ce = 2.4 - 0.35 * j  # per-token cross-entropy, falling with size
        for i, item in enumerate(items):
            k = 1 + i % 3
            out.append(base | {"task": "arith", "item": item, "n_tokens": k,
                               "logprob": round(-ce * k * (0.7 + 0.15 * i), 4), "correct": int(i + j >= 4)})
        for i, item in enumerate(items):  # per-item rows without 'correct' (it is optional)
            out.append(base | {"task": "cloze", "item": item, "n_tokens": 2,
                               "logprob": round(-(ce + 0.3) * 2 * (0.8 + 0.1 * i), 4)})
        out.append(base | {"task": "qa", "n_items": 200, "n_tokens": 4, "ce": round(ce + 0.2, 4)})
        out.append(base | {"task": "mcq", "n_items": 120, "n_tokens": 1, "n_correct": 20 + 25 * j})
        out.append(base | {"task": "trivia", "n_items": 80, "n_tokens": 3, "accuracy": round(0.1 + 0.2 * j, 2)})
        out.append(base | {"task": "gsm", "n_items": 150, "n_tokens": 5, "ce": round(ce - 0.1, 4),
                           "n_correct": 5 + 15 * j})
    return out


def frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records)


def reference_cells(records: list[dict]):
    from forecaster.data import summarize, validate

    return summarize(validate(frame(records), source="reference"))


# --------------------------------------------------------------------------- writers: how tools save the table


def _columns(records) -> list[str]:
    cols: list[str] = []
    for r in records:
        cols += [c for c in r if c not in cols]
    return cols


def _cell(v, na: str = "", numbers: bool = False):
    """A value as a spreadsheet writes it: whole numbers without '.0', empty (or ``na``) for missing; numbers as
    text unless ``numbers`` (for ``QUOTE_NONNUMERIC``, which quotes text only)."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return na
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return v if numbers and isinstance(v, (int, float)) else str(v)


def text_csv(records, *, bom=False, crlf=False, quoting=csv.QUOTE_MINIMAL, na="", row_names=False,
             blank_rows=False) -> bytes:
    """CSV text as the csv module writes it (a spreadsheet's or a script's CSV), with the given quirks.

    ``row_names``: a first column with an empty header holding row numbers (R's ``write.csv``).
    ``blank_rows``: an empty line inside the file and rows of bare commas at its end (a spreadsheet's leftovers).
    """
    if isinstance(records, pd.DataFrame):
        records = records.to_dict("records")
    cols = _columns(records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n", quoting=quoting)
    w.writerow(([""] if row_names else []) + cols)
    for n, r in enumerate(records, 1):
        if blank_rows and n == 3:
            buf.write("\r\n" if crlf else "\n")
        w.writerow(([n] if row_names else []) + [_cell(r.get(c), na, quoting == csv.QUOTE_NONNUMERIC) for c in cols])
    if blank_rows:
        for _ in range(2):
            w.writerow([""] * (len(cols) + row_names))
    return (("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8")


def write(path: Path, data: bytes | pd.DataFrame, fmt: str = "csv") -> Path:
    if fmt == "parquet":
        df = data if isinstance(data, pd.DataFrame) else pd.read_csv(io.BytesIO(data))
        df = df.copy()
        for c in df.columns:  # a column of mixed types (a bad value among numbers) is a text column in Parquet
            if df[c].dtype == object and len({type(v) for v in df[c].dropna()}) > 1:
                df[c] = df[c].map(lambda v: v if v is None or v != v else str(v))
        df.to_parquet(path, index=False)
    elif isinstance(data, pd.DataFrame):
        data.to_csv(path, index=False)
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- every shape fits


def _excel_utf8(records):
    """Excel's "CSV UTF-8": a byte-order mark, CRLF line ends, quotes only where needed; here also a blank line
    and rows of bare commas at the end (a spreadsheet's leftovers)."""
    return text_csv(records, bom=True, crlf=True, blank_rows=True)


def _split_kinds(tmp):
    """Per-item rows (integer ids, nothing else) in one gzipped CSV, aggregate rows in one Parquet file."""
    recs = rows()
    items = [r for r in recs if "item" in r]
    aggs = [r for r in recs if "item" not in r]
    return [write(tmp / "items.csv.gz", text_csv(items)), write(tmp / "aggregates.parquet", frame(aggs), "parquet")]


def _split_models(tmp):
    """Files by model, written by different tools: pandas' ``to_csv`` of the small models' rows (item ids beside
    aggregate rows: a number column with gaps, written 1.0, 2.0), a script's CSV of the large models' per-item
    rows (ids 1, 2) and their aggregate rows in Parquet. The items must match across the files (one balanced
    item group per task, as from one file)."""
    recs = rows()
    small = [r for r in recs if r["model"] in NUMERIC_MODELS[:2]]
    large = [r for r in recs if r["model"] in NUMERIC_MODELS[2:]]
    frame(small).to_csv(tmp / "small.csv", index=False)
    assert ",1.0," in (tmp / "small.csv").read_text()
    return [tmp / "small.csv", write(tmp / "large-items.csv", text_csv([r for r in large if "item" in r])),
            write(tmp / "large-aggregates.parquet", frame([r for r in large if "item" not in r]), "parquet")]


def _pandas_with_extra_columns(tmp):
    """pandas' ``to_csv`` with its index (an unnamed first column) and columns the schema does not know."""
    df = frame(rows())
    df["notes"] = ["run 1, seed 3"] * len(df)
    df["eval_date"] = "2024-05-01"
    df.insert(0, "harness", "lm-eval 0.4")
    df.to_csv(tmp / "extra.csv")
    return [tmp / "extra.csv"]


def _one(name, data, fmt="csv"):
    return lambda tmp: [write(tmp / name, data, fmt)]


TEXT = rows(TEXT_MODELS, TEXT_ITEMS)
# id -> (files written into a folder, the table they hold, run through the installed entry point in a subprocess?)
SHAPES = {
    "csv": (_one("results.csv", text_csv(rows())), rows(), True),  # (the shared fixture fits this one)
    "parquet": (_one("results.parquet", frame(rows()), "parquet"), rows(), True),
    "excel-csv-utf8-bom-crlf-blank-rows-quoted-names": (_one("results.csv", _excel_utf8(TEXT)), TEXT, True),
    "split-kinds-items-csv.gz+aggregates-parquet": (_split_kinds, rows(), True),
    "pandas-to_csv-index-extra-columns": (_pandas_with_extra_columns, rows(), False),
    "quote-all-csv.gz-bom-crlf": (_one("results.csv.gz", text_csv(TEXT, bom=True, crlf=True, quoting=csv.QUOTE_ALL)),
                                  TEXT, False),
    "r-write.csv": (_one("results.csv", text_csv(rows(), quoting=csv.QUOTE_NONNUMERIC, na="NA", row_names=True)),
                    rows(), False),
    "params-tokens-no-setting-column": (_one("results.csv", text_csv(rows(size="params", setting=None))),
                                        rows(size="params", setting=None), False),
    "compute-params-tokens-text-names-parquet": (
        _one("results.parquet", frame(rows(TEXT_MODELS, TEXT_ITEMS, size="both")), "parquet"),
        rows(TEXT_MODELS, TEXT_ITEMS, size="both"), False),
    "files-by-model-from-two-tools": (_split_models, rows(), False),
}


def _fit(files: list[Path], out: Path, subprocess_: bool) -> tuple[int, str]:
    args = ["fit", *map(str, files), "-o", str(out), *FIT_ARGS]
    if subprocess_:
        res = _main(*args)
        return res.returncode, res.stderr
    res = runner.invoke(app, args)
    return res.exit_code, res.stderr


def _assert_same_data(out: Path, records: list[dict]) -> None:
    """The fit read the file as the table it holds: same tasks, settings and models, same sufficient statistics."""
    from forecaster.io import load_fit

    got, want = load_fit(out).cells, reference_cells(records)
    assert got.tasks == want.tasks and got.settings == want.settings and got.families == want.families
    assert got.models == want.models, (got.models, want.models)
    for name in ("cell_x", "cell_k", "item_n", "item_mean", "item_ss", "ce_obs", "ce_n", "em_n", "em_correct",
                 "group_ss_items", "group_ss_res"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, err_msg=name)
    # the same item ids in every model's file rows: one balanced item group per per-item task
    assert np.array_equal(got.item_balanced, want.item_balanced) and len(got.group_task) == len(ITEM_TASKS)


@pytest.fixture(scope="session")
def csv_fit(tmp_path_factory) -> tuple[Path, int, str]:
    """The plain CSV with numeric model names and item ids (the pandas-3 regression) fitted by the entry point:
    (fit file, exit code, stderr). It compiles the design every fit here shares, so every fit test asks for it
    first. Under pytest-xdist the workers share it: the first to ask fits, the others wait for its result."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common folder (as for the compile cache in conftest.py)
    folder, done = root / "file-formats-csv-fit", root / "file-formats-csv-fit.json"
    try:
        folder.mkdir()
    except FileExistsError:  # another worker fits
        deadline = time.monotonic() + 900
        while not done.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"no result from the worker fitting {folder} after 900 s")
            time.sleep(0.5)
    else:
        result = {"returncode": -1, "stderr": "the fit did not run"}
        try:
            src = write(folder / "results.csv", text_csv(rows()))
            res = _main("fit", src, "-o", folder / "fit.nc", *FIT_ARGS, script=True)
            result = {"returncode": res.returncode, "stderr": res.stderr}
        finally:
            part = done.with_suffix(".part")
            part.write_text(json.dumps(result))
            part.replace(done)
    result = json.loads(done.read_text())
    return folder / "fit.nc", result["returncode"], result["stderr"]


def test_every_shape_is_one_model_design(tmp_path):
    """What keeps this file cheap: every shape above builds the same model graph (the compile cache's key), so
    one compile serves every fit. (Change the table, and keep this true.)"""
    from forecaster.compile_cache import model_key
    from forecaster.data import load_table, summarize
    from forecaster.model import build_model
    from forecaster.spec import load_spec

    spec, keys = load_spec("default"), {}
    for name, (make, _, _) in SHAPES.items():
        (tmp_path / name).mkdir()
        keys[name] = model_key(build_model(summarize(load_table(make(tmp_path / name))), spec))
    assert len(set(keys.values())) == 1, keys


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_documented_shape_fits_through_the_cli(shape, tmp_path, csv_fit):
    make, records, real_entry_point = SHAPES[shape]
    if shape == "csv":
        out, code, err = csv_fit
    else:
        out = tmp_path / "out" / "fit.nc"
        out.parent.mkdir()
        code, err = _fit(make(tmp_path), out, real_entry_point)
    assert code == 0, err
    assert "Traceback" not in err and "error:" not in err, err
    assert out.is_file()
    _assert_same_data(out, records)


def test_numeric_names_reach_forecasts(csv_fit, tmp_path):
    """Models named 70 and 410 are names, not numbers, downstream too: forecast and summary read the fit."""
    out, code, err = csv_fit
    assert code == 0, err
    fc = runner.invoke(app, ["forecast", str(out), "--task", "arith", "--format", "csv", "--at", "1e21"])
    assert fc.exit_code == 0, fc.output
    assert "arith" in fc.stdout
    summ = runner.invoke(app, ["summary", str(out)])
    assert summ.exit_code == 0 and "arith" in summ.stdout, summ.output


def test_text_quirks_read_as_the_plain_file(tmp_path):
    """Quirks no fit is needed for: a UTF-16 CSV (Excel's "Unicode text" saved with commas, PowerShell's
    Export-Csv), blank lines above the header, spaces after the commas, a Parquet file named .csv, ids with
    leading zeros (kept as written)."""
    from forecaster.data import load_table

    plain = load_table(write(tmp_path / "plain.csv", text_csv(rows())))
    text = text_csv(rows()).decode()
    padded = "\n".join(", ".join(line.split(",")) for line in text.splitlines()) + "\n"
    for name, data in (("utf16.csv", text.encode("utf-16")), ("utf16be.csv", b"\xfe\xff" + text.encode("utf-16-be")),
                       ("leading-blank.csv", ("\n\n" + text).encode()), ("padded.csv", padded.encode())):
        got = load_table(write(tmp_path / name, data))
        pd.testing.assert_frame_equal(got.drop(columns="_line"), plain.drop(columns="_line"), check_dtype=False)
    frame(rows()).to_parquet(tmp_path / "parquet-named.csv")  # a Parquet file under a CSV name
    pd.testing.assert_frame_equal(load_table(tmp_path / "parquet-named.csv").drop(columns="_line"),
                                  plain.drop(columns="_line"), check_dtype=False)
    zeros = [r | {"item": f"{r['item']:03d}"} if "item" in r else r for r in rows()]
    got = load_table(write(tmp_path / "zeros.csv", text_csv(zeros)))
    assert set(got["item"].dropna()) == {"001", "002", "003", "004", "005"}


# --------------------------------------------------------------------------- every bad input: one line, exit 2


def _first(df: pd.DataFrame, mask) -> int:
    return df.index[np.asarray(mask)][0]


def _set(df: pd.DataFrame, mask, **vals) -> pd.DataFrame:
    """``df`` with the first row matching ``mask`` given ``vals``."""
    df = df.copy()
    i = _first(df, mask)
    for col, v in vals.items():
        if isinstance(v, str) and df[col].dtype != object:
            df[col] = df[col].astype(object)
        elif isinstance(v, float) and not pd.api.types.is_float_dtype(df[col]):
            df[col] = df[col].astype(float)
        df.loc[i, col] = v
    return df


def _item(d):
    return d["task"] == "arith"


def _add(d, mask, **vals):
    extra = d.loc[[_first(d, mask)]].assign(**vals)
    return pd.concat([d, extra], ignore_index=True)


# (id, applies to the per-item-only file too, mutation, what the error line says)
BAD = [
    ("missing-task-column", True, lambda d: d.drop(columns="task"), "missing column 'task'"),
    ("missing-family-column", True, lambda d: d.drop(columns="family"), "missing column 'family'"),
    ("missing-logprob-column", True, lambda d: d.drop(columns="logprob"), "missing column 'logprob'"),
    ("missing-n_tokens-column", True, lambda d: d.drop(columns="n_tokens"), "missing column 'n_tokens'"),
    ("missing-compute-column", True, lambda d: d.drop(columns="compute"), "missing column 'compute'"),
    ("missing-n_items-column", False, lambda d: d.drop(columns="n_items"), "missing column 'n_items'"),
    ("nan-logprob", True, lambda d: _set(d, _item(d), logprob=np.nan), "column 'logprob' is empty or NaN"),
    ("nan-compute", True, lambda d: _set(d, _item(d), compute=np.nan), "column 'compute' is empty or NaN"),
    ("nan-n_tokens", True, lambda d: _set(d, _item(d), n_tokens=np.nan), "column 'n_tokens' is empty or NaN"),
    ("nan-n_items", False, lambda d: _set(d, d.task == "qa", n_items=np.nan), "column 'n_items' is empty or NaN"),
    ("empty-model-name", True, lambda d: _set(d, _item(d), model=""), "column 'model' is empty"),
    ("non-numeric-logprob", True, lambda d: _set(d, _item(d), logprob="-1,5"), "non-numeric value '-1,5'"),
    ("infinite-logprob", True, lambda d: _set(d, _item(d), logprob=-np.inf), "infinite"),
    ("compute-zero", True, lambda d: _set(d, _item(d), compute=0.0), "compute must be > 0"),
    ("compute-negative", True, lambda d: _set(d, _item(d), compute=-1e20), "compute must be > 0"),
    ("logprob-positive", True, lambda d: _set(d, _item(d), logprob=0.25), "logprob must be <= 0"),
    ("probabilities-not-logprobs", True, lambda d: d.assign(logprob=np.where(_item(d), 0.4, d.logprob)),
     "logprob must be <= 0"),
    ("n_tokens-zero", True, lambda d: _set(d, _item(d), n_tokens=0), "n_tokens must be >= 1"),
    ("n_tokens-zero-aggregate", False, lambda d: _set(d, d.task == "qa", n_tokens=0), "n_tokens must be >= 1"),
    ("correct-not-binary", True, lambda d: _set(d, _item(d), correct=2), "correct must be 0 or 1"),
    ("duplicate-item-row", True, lambda d: _add(d, _item(d)), "duplicate row"),
    ("duplicate-aggregate-row", False, lambda d: _add(d, d.task == "mcq"), "duplicate aggregate row"),
    ("item-and-aggregate-rows-in-one-cell", False,
     lambda d: _add(d, d.task == "qa", task="arith"), "both per-item and aggregate rows"),
    ("one-model-size-only", True, lambda d: d.assign(compute=1e20), "at least two model sizes"),
    ("task-at-single-compute", True, lambda d: _add(d, _item(d), task="lonely"), "single compute"),
    ("model-with-two-computes", True, lambda d: _set(d, _item(d), compute=3e21), "different compute values"),
    ("model-in-two-families", True, lambda d: _set(d, _item(d), family="gpt"), "several families"),
    ("accuracy-above-1", False, lambda d: _set(d, d.task == "trivia", accuracy=55.0), "accuracy must be in [0, 1]"),
    ("accuracy-negative", False, lambda d: _set(d, d.task == "trivia", accuracy=-0.1), "accuracy must be in [0, 1]"),
    ("n_correct-above-n_items", False, lambda d: _set(d, d.task == "mcq", n_correct=500), "n_correct must be"),
    ("n_correct-fraction", False, lambda d: _set(d, d.task == "mcq", n_correct=2.5), "n_correct must be"),
    ("n_items-zero", False, lambda d: _set(d, d.task == "qa", n_items=0), "n_items must be a whole number"),
    ("ce-zero", False, lambda d: _set(d, d.task == "qa", ce=0.0), "ce must be > 0"),
    ("aggregate-without-observation", False,
     lambda d: _set(d, d.task == "qa", ce=np.nan), "needs 'ce', 'n_correct' or 'accuracy'"),
]
BAD_BY_ID = {b[0]: b for b in BAD}
PARQUET_TOO = {"missing-logprob-column", "nan-logprob", "non-numeric-logprob", "logprob-positive", "n_tokens-zero",
               "duplicate-item-row", "task-at-single-compute", "accuracy-above-1", "n_correct-above-n_items",
               "one-model-size-only", "compute-zero", "empty-model-name"}


def _bad_tables() -> list:
    mixed = frame(rows())
    items = frame([r for r in rows() if r["task"] == "arith"])  # per-item rows only: integer ids, integer names
    out = []
    for name, item_too, mutate, expect in BAD:
        for base, df in (("mixed", mixed), ("items", items)):
            if base == "items" and not item_too:
                continue
            for fmt in ("csv", "parquet") if name in PARQUET_TOO else ("csv",):
                out.append(pytest.param(mutate(df), fmt, expect, id=f"{name}-{base}-{fmt}"))
    return out


def _assert_rejected(code: int, err: str, expect: str | tuple[str, ...], folder: Path, before: set) -> None:
    """One 'error:' line saying ``expect`` (or one of several wordings), exit 2, nothing written."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    expects = (expect,) if isinstance(expect, str) else expect
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and any(e in lines[0] for e in expects), err
    assert "Traceback" not in err
    assert set(folder.iterdir()) == before, "an output (or a temporary file) was written"


@pytest.mark.parametrize("df,fmt,expect", _bad_tables())
def test_bad_input_file_is_one_line(df, fmt, expect, tmp_path):
    src = write(tmp_path / f"bad.{fmt}", text_csv(df) if fmt == "csv" else df, fmt)
    before = set(tmp_path.iterdir())
    res = runner.invoke(app, ["fit", str(src), "-o", str(tmp_path / "fit.nc"), *FIT_ARGS])
    _assert_rejected(res.exit_code, res.stderr, expect, tmp_path, before)
    assert f"bad.{fmt}" in res.stderr  # the line names the file


@pytest.mark.parametrize("name,base,fmt", [("logprob-positive", "items", "csv"),
                                           ("accuracy-above-1", "mixed", "parquet")])
def test_bad_input_through_the_entry_point(name, base, fmt, tmp_path):
    """A few of the above in a fresh interpreter: no stray warning or log line beside the error."""
    _, _, mutate, expect = BAD_BY_ID[name]
    recs = rows() if base == "mixed" else [r for r in rows() if r["task"] == "arith"]
    df = mutate(frame(recs))
    src = write(tmp_path / f"bad.{fmt}", text_csv(df) if fmt == "csv" else df, fmt)
    before = set(tmp_path.iterdir())
    res = _main("fit", src, "-o", tmp_path / "fit.nc", *FIT_ARGS, cwd=tmp_path)
    _assert_rejected(res.returncode, res.stderr, expect, tmp_path, before)


def test_bad_line_numbers_match_the_file(tmp_path):
    """The line an error names is the file's line (header = 1), also after blank lines and with CRLF ends."""
    d = frame(rows())
    df = _set(d, _item(d) & (d["item"] == 3), logprob=0.5)  # the third record: below the blank line
    bad_row = _first(df, df.logprob > 0)
    src = write(tmp_path / "bad.csv", text_csv(df, crlf=True, blank_rows=True, bom=True))
    res = runner.invoke(app, ["fit", str(src), "-o", str(tmp_path / "fit.nc"), *FIT_ARGS])
    lines = src.read_bytes().decode("utf-8-sig").split("\r\n")
    assert res.exit_code == 2, res.output
    line = int(res.stderr.split(", line ")[1].split(":")[0])
    assert "0.5" in lines[line - 1].split(","), (line, lines[line - 1])
    assert bad_row + 2 < line  # the blank line inside the file counts


# (id, file name, its bytes, what the error line says)
BAD_FILES = [
    ("empty", "e.csv", b"", "file is empty"),
    ("header-only", "h.csv", b"family,model,task,compute,n_tokens,ce,n_items\r\n", "no data rows"),
    ("bom-only", "b.csv", b"\xef\xbb\xbf", "file is empty"),
    ("bom-and-header-only", "bh.csv", b"\xef\xbb\xbffamily,model,task,compute\r\n", "no data rows"),
    # pandas 3.0 meets the bad bytes while decoding, 3.1 while parsing: both are named
    ("binary-csv", "x.csv", bytes(range(256)) * 8, ("cannot be read", "is not UTF-8 text")),
    ("broken-parquet", "x.parquet", b"PAR1\x00\x01not parquet", "cannot be read"),
    ("not-gzip", "x.csv.gz", b"family,model,task\nf,m,t\n", "cannot be read"),
    ("latin-1", "l.csv", text_csv(rows(TEXT_MODELS, TEXT_ITEMS)).decode().encode("latin-1"),
     "is not UTF-8 text on line 6"),  # the first row with 'café'
    ("semicolon-separated", "s.csv", text_csv(rows()).replace(b",", b";"), "separated by ';'"),
    ("tab-separated", "t.csv", text_csv(rows()).replace(b",", b"\t"), "separated by tabs"),
    ("excel-workbook", "results.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), "Excel workbook"),
]


@pytest.mark.parametrize("name,fname,data,expect", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_files_are_one_line(name, fname, data, expect, tmp_path):
    src = tmp_path / fname
    src.write_bytes(data)
    before = set(tmp_path.iterdir())
    res = runner.invoke(app, ["fit", str(src), "-o", str(tmp_path / "fit.nc"), *FIT_ARGS])
    _assert_rejected(res.exit_code, res.stderr, expect, tmp_path, before)
    assert fname in res.stderr


def test_missing_file_and_folder(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    before = set(tmp_path.iterdir())
    for src, expect in ((tmp_path / "missing.csv", "file not found"), (tmp_path / "folder.csv", "is a directory")):
        res = runner.invoke(app, ["fit", str(src), "-o", str(tmp_path / "fit.nc"), *FIT_ARGS])
        _assert_rejected(res.exit_code, res.stderr, expect, tmp_path, before)


def test_unknown_task_in_a_query_is_one_line(csv_fit, tmp_path):
    fit_file, code, err = csv_fit
    assert code == 0, err
    out = tmp_path / "f.json"
    q = runner.invoke(app, ["forecast", str(fit_file), "--task", "nope", "--format", "json", "-o", str(out)])
    _assert_rejected(q.exit_code, q.stderr, "unknown task 'nope'", tmp_path, set())
    p = runner.invoke(app, ["plot", str(fit_file), "--task", "nope", "-o", str(tmp_path / "p.png")])
    _assert_rejected(p.exit_code, p.stderr, "unknown task 'nope'", tmp_path, set())
