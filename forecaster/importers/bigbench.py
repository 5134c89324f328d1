"""BIG-bench results (``scores_<model>.json``) -> tidy table.

Layout (BIG-bench ``results/`` folders of each task)::

    {"model": {"model_family": ..., "model_name": ..., "non_embedding_params": ...,
               "total_params": ..., "flop_matched_non_embedding_params": ...,
               "training_batch_size": ..., "training_steps": ..., ...},
     "scores": [{"number_of_shots": 0, "preferred_score": "...",
                 "score_dict": {"exact_str_match": ..., "log_likelihood": ..., ...},
                 "subtask_description": "arithmetic:1_digit_addition",
                 "high_score": ..., "low_score": ...}, ...]}

One aggregate row per (model, subtask, shots): ``task`` is the
``subtask_description``, ``setting`` is ``"<n>-shot"``, ``family`` and
``model`` come from the ``model`` header. Metrics:

* ``exact_str_match`` (a fraction in [0, 1]) -> ``accuracy``; where a score
  has no ``exact_str_match``, ``multiple_choice_grade`` is used instead.
* ``log_likelihood`` (mean over examples of the summed log-probability of the
  target, nats) -> per-token ``ce = -log_likelihood / n_tokens``.

Entries whose preferred score is ``normalized_aggregate_score`` summarise
subtasks and are skipped. The files do not record the number of examples
nor the target length: ``n_items`` must come from the score entry
(``number_of_examples``/``n_examples``, when a file has it) or the
``n_items=`` option (an int, or a dict task -> int, e.g. from the task's
``task.json``); ``n_tokens`` defaults to 1 (single-token targets; the
documented fallback) and can be an int or a dict task -> int.
The header's parameter counts are not enough for compute (BIG-bench does not
state training tokens), so compute comes from ``--compute-table`` or the catalog.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..data import _one_line, _q
from ..errors import DataError

__all__ = ["read_bigbench"]


def _per_task(value, task: str, default=None):
    if isinstance(value, dict):
        return value.get(task, value.get(task.split(":")[0], default))
    return default if value is None else value


def _number(v) -> float | None:
    """A JSON number (or its text) as a finite float; None if it is not one."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _name(v) -> str | None:
    """A name from a JSON value: text or a number, stripped; None if empty or not a name."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return None
    return str(v).strip() or None


def read_one(path: Path, n_items=None, n_tokens=1) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; pass BIG-bench scores_<model>.json") from None
    except (ValueError, OSError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = _one_line((str(exc).splitlines() or [type(exc).__name__])[0][:200])
        raise DataError(f"{path}: not valid JSON ({first}); pass BIG-bench scores_<model>.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("scores"), list):
        raise DataError(f"{path}: not a BIG-bench scores file (needs 'model' and 'scores'); pass scores_<model>.json")
    head = data["model"]
    model = _name(head.get("model_name"))
    if model is None:
        raise DataError(f"{path}: 'model.model_name' is missing or not a name ({_q(head.get('model_name'))}); "
                        "the file must name its model")
    family = _name(head.get("model_family"))
    params = _number(head.get("total_params"))
    params_nonembed = _number(head.get("non_embedding_params"))
    rows = []
    for i, sc in enumerate(data["scores"]):
        if not isinstance(sc, dict) or not isinstance(sc.get("score_dict"), dict):
            raise DataError(f"{path}: scores[{i}] has no 'score_dict'; pass an unmodified BIG-bench scores file")
        if sc.get("preferred_score") == "normalized_aggregate_score":
            continue
        task = _name(sc.get("subtask_description"))
        shots = sc.get("number_of_shots")
        if not task or shots is None:
            raise DataError(f"{path}: scores[{i}] lacks 'subtask_description' or 'number_of_shots'")
        shots_n = _number(shots)
        if shots_n is None or shots_n < 0 or shots_n != round(shots_n):
            raise DataError(f"{path}: scores[{i}] number_of_shots is {_q(shots)}, not a whole number >= 0")
        sd = sc["score_dict"]
        acc = sd.get("exact_str_match", sd.get("multiple_choice_grade"))
        ll = sd.get("log_likelihood")
        if acc is None and ll is None:
            continue
        n_raw = sc.get("number_of_examples", sc.get("n_examples", _per_task(n_items, task)))
        if n_raw is None:
            raise DataError(
                f"{path}: BIG-bench scores do not record how many examples task {task!r} has; pass n_items "
                "(e.g. --n-items, from the task's task.json)"
            )
        n = _number(n_raw)
        if n is None or n < 1 or n != round(n):
            raise DataError(f"{path}: scores[{i}] (task {task!r}) has {_q(n_raw)} examples, not a whole number >= 1; "
                            "fix number_of_examples or pass n_items")
        k_raw = _per_task(n_tokens, task, 1)
        k = _number(k_raw)
        if k is None or k < 1:
            raise DataError(f"{path}: n_tokens for task {task!r} is {_q(k_raw)}, not a number >= 1; pass the "
                            "target length in tokens (n_tokens)")
        row = {"family": family, "model": model, "task": task, "setting": f"{int(shots_n)}-shot",
               "n_items": int(n), "n_tokens": k, "params": params, "params_nonembed": params_nonembed}
        if acc is not None:
            acc_f = _number(acc)
            if acc_f is None or not 0.0 <= acc_f <= 1.0:
                raise DataError(f"{path}: scores[{i}] exact-match score {_q(acc)} is not a fraction in [0, 1]")
            row["accuracy"] = acc_f
        if ll is not None:
            ll_f = _number(ll)
            if ll_f is None or ll_f > 0:
                raise DataError(f"{path}: scores[{i}] log_likelihood {_q(ll)} must be a finite value <= 0 (nats)")
            if ll_f < 0 and -ll_f / k > 0:  # 0 (a certain answer, or an underflow) carries no CE information
                row["ce"] = -ll_f / k
        rows.append(row)
    return rows


def read_bigbench(paths, n_items=None, n_tokens=1) -> pd.DataFrame:
    """Read BIG-bench scores files into aggregate tidy rows (no compute yet; see module docstring)."""
    from . import expand_paths

    files = expand_paths(paths, ("scores_*.json",), "BIG-bench scores")
    rows = []
    for f in files:
        rows.extend(read_one(f, n_items, n_tokens))
    if not rows:
        raise DataError(f"{files[0]}: no exact_str_match or log_likelihood scores found")
    return pd.DataFrame(rows)
