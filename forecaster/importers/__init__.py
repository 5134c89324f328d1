"""Read the files evaluation researchers already have into the tidy input table.

One entry point, :func:`import_results`, for four formats:

``lm-eval``
    lm-evaluation-harness output (``--output_path ... --log_samples``):
    ``results_*.json`` plus ``samples_<task>_*.jsonl`` (see :mod:`.lmeval`).
``inspect``
    Inspect AI eval logs, ``.eval`` or ``.json`` (see :mod:`.inspect_log`;
    needs the ``inspect_ai`` package).
``bigbench``
    BIG-bench ``scores_<model>.json`` files (see :mod:`.bigbench`).
``long``
    The long results format of ``../shared/data`` (see :mod:`.long`).

Paths may be files or directories (searched recursively for that format's
files). Compute comes from the file where it records it, else from
``compute_table`` (CSV: ``model`` and ``compute``, or ``model``, ``params``
and ``tokens``; optional ``family``), else from the built-in catalog
(:mod:`forecaster.catalog`); a model with no known compute raises a
:class:`~forecaster.errors.DataError` that names it. Every output is a
pandas DataFrame in the tidy schema that :func:`forecaster.data.validate`
accepts.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..catalog import fill_compute, read_compute_table
from ..data import _one_line, _q
from ..errors import DataError, ForecasterError

__all__ = ["FORMATS", "import_results", "expand_paths"]

FORMATS = ("lm-eval", "inspect", "bigbench", "long")
_ALIASES = {"lm-eval": "lm-eval", "lmeval": "lm-eval", "lm_eval": "lm-eval", "lm-evaluation-harness": "lm-eval",
            "inspect": "inspect", "inspect-ai": "inspect", "inspect_ai": "inspect",
            "bigbench": "bigbench", "big-bench": "bigbench", "long": "long"}


def expand_paths(paths: Iterable[str | Path], patterns: tuple[str, ...], what: str) -> list[Path]:
    """Files named by ``paths``: files as given, directories searched recursively for ``patterns``."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    elif not isinstance(paths, Iterable) or isinstance(paths, bytes):
        raise DataError(f"expected file or folder paths, got {type(paths).__name__}; pass {what} files or folders")
    out: list[Path] = []
    for raw in paths:
        if not isinstance(raw, (str, os.PathLike)) or not str(raw).strip():
            raise DataError(f"expected a file or folder path, got {_q(raw)}; pass {what} files or folders")
        p = Path(raw)
        try:
            exists = p.exists()
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte in it
            raise DataError(f"{p}: cannot be opened ({getattr(exc, 'strerror', None) or exc}); check the path") from None
        if not exists:
            raise DataError(f"{p}: file not found; check the path")
        if p.is_dir():
            found = sorted({f for pat in patterns for f in p.rglob(pat) if f.is_file()})
            if not found:
                raise DataError(f"{p}: no {what} files ({', '.join(patterns)}) in this folder; pass the tool's output")
            out.extend(found)
        else:
            out.append(p)
    if not out:
        raise DataError(f"no input files given; pass {what} files or folders")
    return list(dict.fromkeys(out))


def import_results(
    fmt: str,
    paths: list[str | Path] | str | Path,
    compute_table: str | Path | None = None,
    *,
    drop_unknown: bool = False,
    **options,
) -> pd.DataFrame:
    """Import evaluation results into the tidy table.

    Parameters
    ----------
    fmt : {"lm-eval", "inspect", "bigbench", "long"}
        Input format.
    paths : list of paths
        Files or folders.
    compute_table : path, optional
        CSV mapping ``model`` to ``compute`` (FLOPs) or to ``params`` and ``tokens``
        (optional ``family`` column); takes precedence over the built-in catalog.
    drop_unknown : bool
        Drop (with a warning) the models whose compute is known neither from the
        file, the compute table nor the catalog, instead of raising.
    **options
        Format-specific options passed to the reader (e.g. ``n_tokens`` for
        ``long`` and ``bigbench``, ``n_items`` for ``bigbench``, ``scorer`` for
        ``inspect``, ``token_count`` for ``lm-eval``); see each module.

    Returns
    -------
    pandas.DataFrame
        Columns ``family, model, task, setting, compute, compute_source`` and either
        per-item ``item, n_tokens, logprob[, correct]`` or aggregate
        ``n_items, n_tokens, ce / n_correct`` columns (mixed tables have both).

    Raises
    ------
    forecaster.errors.DataError
        One line naming the file (or model) and the fix: unknown format, unreadable
        or malformed file, or a model without known compute.
    """
    try:
        return _import(fmt, paths, compute_table, drop_unknown, options)
    except ForecasterError as exc:  # one line, whatever names and paths the message quotes
        msg = _one_line(str(exc))
        if msg == str(exc):
            raise
        raise type(exc)(msg) from None


def _import(fmt, paths, compute_table, drop_unknown: bool, options: dict) -> pd.DataFrame:
    key = _ALIASES.get(str(fmt).strip().lower())
    if key is None:
        raise DataError(f"unknown import format {_q(fmt)}; use one of: {', '.join(FORMATS)}")
    table = read_compute_table(compute_table) if compute_table is not None else None
    if key == "lm-eval":
        from .lmeval import read_lmeval as reader
    elif key == "inspect":
        from .inspect_log import read_inspect as reader
    elif key == "bigbench":
        from .bigbench import read_bigbench as reader
    else:
        from .long import read_long as reader
    known = [n for n in inspect.signature(reader).parameters if n != "paths"]
    unknown = [n for n in options if n not in known]
    if unknown:
        raise DataError(f"option {unknown[0]!r} does not apply to the {key} format; its options: {', '.join(known)}")
    df = reader(paths, **options)
    if df.empty:
        raise DataError(f"{', '.join(map(str, paths if isinstance(paths, list) else [paths]))}: no results found; "
                        "check that these are the tool's output files")
    src = ", ".join(str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths]))
    df = fill_compute(df, table, source=src, drop_unknown=drop_unknown)
    return _order(df)


_FIRST = ["family", "model", "task", "setting", "compute", "item", "n_tokens", "logprob", "correct",
          "n_items", "ce", "n_correct", "accuracy"]


def _order(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in _FIRST if c in df.columns] + [c for c in df.columns if c not in _FIRST]
    return df[cols].reset_index(drop=True)
