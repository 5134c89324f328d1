"""Inspect AI eval logs (``.eval`` and ``.json``) -> tidy table.

Logs are read with inspect_ai's own reader (``inspect_ai.log.read_eval_log``),
so the ``inspect_ai`` package must be installed. Model and task come from the
log header (``eval.model``, ``eval.task``); the setting is ``"<n>-shot"``
when the task arguments carry a shot count (``fewshot``, ``num_fewshot``,
``n_shots``, ``shots``), else ``"default"``.

Inspect records per-sample scores but no log-probabilities, so each log gives
one aggregate exact-match row per (model, task, setting): every scored
sample *and epoch* is one trial (epochs become repeated samples), ``n_items``
counts them and ``n_correct`` sums their scores, converted with Inspect's
``value_to_float`` (``C``/``I``, booleans, 0/1 numbers). Partial credit is not
exact match and raises :class:`~forecaster.errors.DataError`. The scorer is the
first one in the log unless ``scorer=`` names another. ``n_tokens`` is the mean
number of whitespace-separated words of the targets (at least 1), the same
documented fallback as for lm-eval; pass ``n_tokens=`` to override.
Samples that errored (no score) are skipped.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import _one_line, _q
from ..errors import DataError

__all__ = ["read_inspect"]

_SHOT_ARGS = ("fewshot", "num_fewshot", "n_shots", "shots", "n_shot", "fewshot_k")


def _reader():
    try:
        from inspect_ai.log import read_eval_log
        from inspect_ai.scorer import value_to_float
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("reading Inspect logs needs the inspect_ai package; pip install inspect-ai") from None
    return read_eval_log, value_to_float()


def _target_text(target) -> str:
    if isinstance(target, (list, tuple)):
        return str(target[0]) if target else ""
    return "" if target is None else str(target)


def _setting(task_args: dict | None) -> str:
    for k in _SHOT_ARGS:
        if task_args and task_args.get(k) is not None:
            try:
                return f"{int(task_args[k])}-shot"
            except (TypeError, ValueError, OverflowError):
                pass
    return "default"


def read_one(path: Path, scorer: str | None = None, n_tokens: float | None = None) -> dict:
    read_eval_log, to_float = _reader()
    try:
        log = read_eval_log(str(path))
    except Exception as exc:  # the reader raises many kinds of errors on a damaged file
        first = _one_line((str(exc).splitlines() or [type(exc).__name__])[0][:200])
        raise DataError(f"{path}: cannot be read as an Inspect log ({first}); pass the .eval/.json log Inspect wrote") from None
    ev = getattr(log, "eval", None)
    if ev is None or not getattr(ev, "model", None) or not getattr(ev, "task", None):
        raise DataError(f"{path}: Inspect log has no model/task header; pass a complete log")
    samples = log.samples or []
    scores, words = [], []
    for s in samples:
        if not s.scores:
            continue
        name = scorer or next(iter(s.scores))
        if name not in s.scores:
            raise DataError(f"{path}: sample {_q(s.id)} has no score {_q(name)} (scorers: "
                            f"{', '.join(map(_q, s.scores))}); pick one with scorer=")
        try:
            v = to_float(s.scores[name].value)
        except (TypeError, ValueError, AttributeError):
            v = math.nan
        if v not in (0.0, 1.0):
            raise DataError(f"{path}: sample {_q(s.id)} epoch {_q(s.epoch)} has score {_q(s.scores[name].value)} "
                            f"from {_q(name)}, not correct/incorrect; use an exact-match scorer")
        scores.append(v)
        words.append(max(1, len(_target_text(s.target).split())))
    if not scores:
        raise DataError(f"{path}: Inspect log has no scored samples (status {log.status!r}); pass a finished run")
    return {
        "model": str(ev.model),
        "task": str(ev.task),
        "setting": _setting(getattr(ev, "task_args", None)),
        "n_items": len(scores),
        "n_correct": float(np.sum(scores)),
        "n_tokens": float(n_tokens) if n_tokens is not None else float(np.mean(words)),
        "epochs": int(getattr(getattr(ev, "config", None), "epochs", None) or 1),
        "log": path.name,
    }


def read_inspect(paths, scorer: str | None = None, n_tokens: float | None = None) -> pd.DataFrame:
    """Read Inspect logs into aggregate tidy rows (no compute yet; see module docstring)."""
    from . import expand_paths

    if n_tokens is not None:
        ok = isinstance(n_tokens, (int, float)) and not isinstance(n_tokens, bool) and math.isfinite(n_tokens)
        if not ok or n_tokens < 1:
            raise DataError(f"n_tokens is {_q(n_tokens)}; give the targets' length in tokens, a number >= 1")
    if scorer is not None and not isinstance(scorer, str):
        raise DataError(f"scorer is {_q(scorer)}; give the name of one of the log's scorers")

    files = expand_paths(paths, ("*.eval", "*.json"), "Inspect log")
    for f in files:
        if f.suffix not in (".eval", ".json"):
            raise DataError(f"{f}: not an Inspect log (expected .eval or .json)")
    rows = [read_one(f, scorer, n_tokens) for f in files]
    df = pd.DataFrame(rows)
    # several logs of the same (model, task, setting) are more trials of the same cell
    key = ["model", "task", "setting"]
    if df.duplicated(key).any():
        df = df.groupby(key, as_index=False).agg(
            n_items=("n_items", "sum"), n_correct=("n_correct", "sum"), n_tokens=("n_tokens", "mean"),
            epochs=("epochs", "max"), log=("log", lambda v: ";".join(v)),
        )
    return df
