"""The long results format of ``../shared/data`` -> tidy table.

Columns (see ``../shared/data/README.md``): ``family, model, params,
params_nonembed, train_tokens, compute_flops, step, task, subtask, shots,
metric, value, stderr, n_examples, setting, source_repo, source_commit,
source_path``. One tidy aggregate row per (model checkpoint, task, setting):

* **model**: ``<model>@step<step>`` where ``step`` is given, so every
  checkpoint is its own model with one compute (the catalog understands the
  same spelling).
* **metrics**: ``acc``/``accuracy``/``exact_match``/``exact_match_accuracy``/
  ``exact_str_match`` with ``n_examples`` -> exact-match counts (``accuracy``
  and ``n_items``); ``ppl`` -> per-token ``ce = ln(ppl)``;
  ``ce_nats_per_token`` -> ``ce``. Other metrics (``acc_norm``, edit
  distance, BERTScore, ...) are ignored. Where a cell has both, one row
  carries both ``ce`` and ``accuracy``.
* **setting**: ``"<shots>-shot"``; where the provenance column ``setting``
  says ``instruction_tuned=True`` the setting gets ``"+instruct"``, and a
  ``prompt=<name>`` there is appended as ``"/<name>"`` (Lu et al. 2023
  evaluate several prompt formats). Extra columns ``shots``,
  ``instruction_tuned`` and ``prompt`` are kept for analyses that need them.
* **repeats**: several rows of the same cell (e.g. Lu et al.'s three seeds)
  are averaged: accuracy and ce are means, ``n_items`` stays the test-set
  size (seeds re-use the same items, so they are not extra evidence).
* **subtasks**: rows with a subtask other than ``ALL`` are dropped when the
  same task has an ``ALL`` (or empty-subtask) row, since those aggregate them;
  ``subtasks=True`` keeps them instead, as tasks ``task/subtask``.
* **params, tokens**: ``params`` and ``train_tokens`` where both are given
  (dropped when no row has them), so the model can tell more parameters from
  more tokens at the same compute.
* **n_items**: ``n_examples``; where it is empty (``ppl`` rows), that of the
  cell's other metric, else of the same task in other rows.
* **n_tokens**: the data carry no answer length. Per-word perplexity (LAMBADA)
  is per word and its targets are single words, so the default ``n_tokens=1``
  is exact there; for other tasks it is the documented fallback (the number
  of answer tokens the exact-match model assumes). Pass ``n_tokens`` as an
  int, or a dict task -> int (e.g. ``{"arith_addition": 2}``).
* **empty values**: rows whose ``value`` is empty (a metric not measured) are
  skipped; a value that is not a number is an error.
* **compute**: ``compute_flops``; rows with 0 (untrained step-0 checkpoints)
  are dropped, empty ones are filled from the compute table, then from
  ``params * train_tokens``, then the catalog; a model with none is an error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import _LINE, _numeric, _one_line, _q, _text
from ..errors import DataError

__all__ = ["read_long", "ACC_METRICS"]

ACC_METRICS = ("acc", "accuracy", "exact_match", "exact_match_accuracy", "exact_str_match", "em")
REQUIRED = ("family", "model", "task", "shots", "metric", "value")
TEXT = ("family", "model", "task", "subtask", "metric", "setting")
NUMBERS = ("value", "shots", "step", "compute_flops", "params", "train_tokens", "n_examples")
#: whole-number columns: (minimum, required)
WHOLE = {"shots": 0, "step": 0, "n_examples": 1}


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    try:
        if path.name.lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(path, use_threads=False)  # (see data.read_table)
        else:
            df = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty; pass a long-format results CSV") from None
    except Exception as exc:
        first = _one_line((str(exc).splitlines() or [type(exc).__name__])[0][:200])
        raise DataError(f"{path}: cannot be read as CSV or Parquet ({first}); pass a long-format results CSV") from None
    if isinstance(df.columns, pd.MultiIndex):
        raise DataError(f"{path}: has several levels of column names; give one header row")
    df = df.reset_index(drop=True)  # a Parquet file may carry any index
    df.columns = [str(c).strip() for c in df.columns]
    if not df.columns.is_unique:
        dup = df.columns[df.columns.duplicated()][0]
        raise DataError(f"{path}: column {_q(dup)} appears {list(df.columns).count(dup)} times; keep one")
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path}: not in the long results format: missing column(s) {', '.join(missing)}; "
                        "see ../shared/data/README.md")
    if df.empty:
        raise DataError(f"{path}: has a header but no rows")
    # rows keep their line in the file (header is line 1; Parquet rows count from 0) for messages
    df[_LINE] = np.arange(len(df)) + (0 if path.name.lower().endswith((".parquet", ".pq")) else 2)
    source = _one_line(str(path))
    for c in TEXT:
        if c in df.columns:
            df[c] = _text(df, c, source)
    for c in NUMBERS:
        if c in df.columns:
            df[c] = _numeric(df, c, source)  # non-numbers and infinities raise, naming file, line and column
    for c, low in WHOLE.items():
        v = df[c] if c in df.columns else None
        if v is not None:
            bad = v.notna() & ((v < low) | (v != np.round(v)) | (v > 2**53))
            if bad.any():
                i = bad.idxmax()
                raise DataError(f"{path}, line {df.at[i, _LINE]}: '{c}' is {v[i]:g}, not a whole number >= {low}")
    return df


def _flag(setting: pd.Series, key: str) -> pd.Series:
    return setting.astype(object).where(setting.notna(), "").astype(str).str.extract(rf"(?:^|;)\s*{key}=([^;]*)", flags=re.IGNORECASE)[0].str.strip()


def _per_task(n_tokens, task: str | None) -> float:
    if isinstance(n_tokens, dict) and task is not None:
        k = n_tokens.get(task, n_tokens.get(task.split("/")[0], 1))
    else:
        k = n_tokens
    ok = isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k) and k >= 1
    if not ok:
        which = "" if task is None else f" for task {_q(task)}"
        raise DataError(f"n_tokens{which} is {_q(k)}; give the answer length in tokens, a number >= 1 "
                        "(or a dict task -> number)")
    return float(k)


def read_long(paths, n_tokens=1, subtasks: bool = False) -> pd.DataFrame:
    """Read long-format results files into aggregate tidy rows (see module docstring)."""
    from . import expand_paths

    files = expand_paths(paths, ("*.csv", "*.csv.gz", "*.parquet"), "long-format results")
    frames = []
    for f in files:
        df = _read(f)
        df["_file"] = str(f)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    src = ", ".join(map(str, files))
    if not isinstance(n_tokens, dict):
        _per_task(n_tokens, None)

    df["metric"] = df["metric"].fillna("")
    is_acc = df["metric"].str.lower().isin(ACC_METRICS)
    is_ppl = df["metric"].str.lower() == "ppl"
    is_ce = df["metric"].str.lower() == "ce_nats_per_token"
    df = df[(is_acc | is_ppl | is_ce) & df["value"].notna()].copy()
    if df.empty:
        raise DataError(f"{src}: no acc/accuracy, ppl or ce_nats_per_token rows; nothing to import")
    for c in ("model", "task"):
        empty = df[c].isna() | (df[c] == "")
        if empty.any():
            i = empty.idxmax()
            raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: '{c}' is empty; name the {c}")
    df["kind"] = np.where(df["metric"].str.lower().isin(ACC_METRICS), "acc",
                          np.where(df["metric"].str.lower() == "ppl", "ppl", "ce"))

    # subtasks
    sub = (df["subtask"].astype(object).where(df["subtask"].notna(), "").astype(str).str.strip()
           if "subtask" in df.columns else pd.Series("", index=df.index))
    whole = sub.isin(["", "ALL", "all"])
    if subtasks:
        df["task"] = np.where(whole, df["task"].astype(str), df["task"].astype(str) + "/" + sub)
    else:
        has_whole = df[whole].groupby("task").size()
        drop = ~whole & df["task"].isin(has_whole.index)
        df = df[~drop].copy()
        sub = sub[df.index]
        whole = whole[df.index]
        df["task"] = np.where(whole, df["task"].astype(str), df["task"].astype(str) + "/" + sub)

    # model checkpoint names
    step = df["step"] if "step" in df.columns else pd.Series(np.nan, index=df.index)
    df["model"] = np.where(step.notna(), df["model"].astype(str) + "@step" + step.fillna(0).astype(int).astype(str),
                           df["model"].astype(str))

    # settings
    shots = df["shots"]
    if shots.isna().any():
        i = shots.isna().idxmax()
        raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: 'shots' must be a whole number (row for "
                        f"model {_q(df.at[i, 'model'])}); fill it in")
    df["shots"] = shots.astype(int)
    prov = df["setting"] if "setting" in df.columns else pd.Series("", index=df.index)
    instr = _flag(prov, "instruction_tuned").str.lower().eq("true")
    prompt = _flag(prov, "prompt").fillna("")
    df["instruction_tuned"] = instr
    df["prompt"] = prompt
    df["setting"] = (df["shots"].astype(str) + "-shot" + np.where(instr, "+instruct", "")
                     + np.where(prompt != "", "/" + prompt, ""))

    # compute
    for c in ("compute_flops", "params", "train_tokens", "n_examples"):
        if c not in df.columns:
            df[c] = np.nan
    compute = df["compute_flops"]
    with np.errstate(over="ignore"):
        from_pt = df["params"] * df["train_tokens"] * 6.0
    df["compute"] = compute.where(compute.notna(), from_pt.where(df["train_tokens"].notna() & (df["train_tokens"] > 0)))
    df.loc[compute == 0, "compute"] = 0.0
    inf = np.isinf(df["compute"])
    if inf.any():
        i = inf.idxmax()
        raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: compute = 6*params*train_tokens is beyond "
                        "the float range; fix params and train_tokens, or give compute_flops")

    # n_items: fill empty n_examples from the same cell, then the same task
    cell = ["model", "task", "setting"]
    n = df["n_examples"]
    n = n.fillna(df.groupby(cell)["n_examples"].transform("max"))
    n = n.fillna(df.groupby("task")["n_examples"].transform("max"))
    if n.isna().any():
        i = n.isna().idxmax()
        raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: n_examples is empty for task "
                        f"{_q(df.at[i, 'task'])} and no other row gives it; fill in n_examples")
    df["n_examples"] = n

    bad = (df["kind"] == "acc") & ((df["value"] < 0) | (df["value"] > 1))
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: {_q(df.at[i, 'metric'])} for model "
                        f"{_q(df.at[i, 'model'])}, task {_q(df.at[i, 'task'])} is {df.at[i, 'value']:g}, not a "
                        "fraction in [0, 1]")
    bad = (df["kind"] == "ppl") & (df["value"] < 1)
    if bad.any():
        i = bad.idxmax()
        raise DataError(f"{df.at[i, '_file']}, line {df.at[i, _LINE]}: ppl for model {_q(df.at[i, 'model'])} is "
                        f"{df.at[i, 'value']:g} < 1; perplexity must be >= 1")
    df["ce_val"] = np.where(df["kind"] == "ppl", np.log(df["value"].clip(lower=1.0)),
                            np.where(df["kind"] == "ce", df["value"], np.nan))
    df["acc_val"] = np.where(df["kind"] == "acc", df["value"], np.nan)
    # a cell may have several accuracy metrics (acc, exact_match...): keep the first listed in ACC_METRICS
    rank = {m: i for i, m in enumerate(ACC_METRICS)}
    df["_rank"] = df["metric"].str.lower().map(rank).fillna(99)
    best = df[df["kind"] == "acc"].groupby(cell)["_rank"].transform("min")
    df = df.drop(index=best.index[df.loc[best.index, "_rank"] != best])

    agg = df.groupby(cell, sort=False).agg(
        family=("family", "first"),
        compute=("compute", "first"),
        params=("params", "first"),
        tokens=("train_tokens", "first"),
        n_items=("n_examples", "max"),
        ce=("ce_val", "mean"),
        accuracy=("acc_val", "mean"),
        shots=("shots", "first"),
        instruction_tuned=("instruction_tuned", "first"),
        prompt=("prompt", "first"),
        n_repeats=("value", "size"),
    ).reset_index()
    agg["n_items"] = agg["n_items"].round().astype(int)
    agg["n_tokens"] = [_per_task(n_tokens, t) for t in agg["task"]]
    agg.loc[agg["ce"] <= 0, "ce"] = np.nan  # ppl == 1 carries no cross-entropy information
    agg = agg[agg["ce"].notna() | agg["accuracy"].notna()]
    # params and tokens (where the data give both) let the model tell more parameters from more tokens
    known = agg["params"].gt(0) & agg["tokens"].gt(0)
    agg.loc[~known, ["params", "tokens"]] = np.nan
    if not known.any():
        agg = agg.drop(columns=["params", "tokens"])
    return agg.reset_index(drop=True)
