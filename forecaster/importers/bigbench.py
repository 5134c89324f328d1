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

from ..errors import DataError

__all__ = ["read_bigbench"]


def _per_task(value, task: str, default=None):
    if isinstance(value, dict):
        return value.get(task, value.get(task.split(":")[0], default))
    return default if value is None else value


def read_one(path: Path, n_items=None, n_tokens=1) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); pass BIG-bench scores_<model>.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("scores"), list):
        raise DataError(f"{path}: not a BIG-bench scores file (needs 'model' and 'scores'); pass scores_<model>.json")
    head = data["model"]
    model = head.get("model_name")
    if not model:
        raise DataError(f"{path}: 'model.model_name' is missing; the file must name its model")
    family = head.get("model_family") or None
    rows = []
    for i, sc in enumerate(data["scores"]):
        if not isinstance(sc, dict) or not isinstance(sc.get("score_dict"), dict):
            raise DataError(f"{path}: scores[{i}] has no 'score_dict'; pass an unmodified BIG-bench scores file")
        if sc.get("preferred_score") == "normalized_aggregate_score":
            continue
        task = sc.get("subtask_description")
        shots = sc.get("number_of_shots")
        if not task or shots is None:
            raise DataError(f"{path}: scores[{i}] lacks 'subtask_description' or 'number_of_shots'")
        sd = sc["score_dict"]
        acc = sd.get("exact_str_match", sd.get("multiple_choice_grade"))
        ll = sd.get("log_likelihood")
        if acc is None and ll is None:
            continue
        n = sc.get("number_of_examples", sc.get("n_examples", _per_task(n_items, task)))
        if n is None:
            raise DataError(
                f"{path}: BIG-bench scores do not record how many examples task {task!r} has; pass n_items "
                "(e.g. --n-items, from the task's task.json)"
            )
        k = _per_task(n_tokens, task, 1)
        row = {"family": family, "model": str(model), "task": str(task), "setting": f"{int(shots)}-shot",
               "n_items": int(n), "n_tokens": float(k),
               "params": head.get("total_params"), "params_nonembed": head.get("non_embedding_params")}
        if acc is not None:
            acc = float(acc)
            if not 0.0 <= acc <= 1.0:
                raise DataError(f"{path}: scores[{i}] exact-match score {acc} is not a fraction in [0, 1]")
            row["accuracy"] = acc
        if ll is not None:
            ll = float(ll)
            if not math.isfinite(ll) or ll > 0:
                raise DataError(f"{path}: scores[{i}] log_likelihood {ll} must be a finite value <= 0 (nats)")
            if ll < 0:
                row["ce"] = -ll / float(k)
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
