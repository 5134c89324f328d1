"""lm-evaluation-harness output -> tidy table.

Input: what ``lm-eval run ... --output_path OUT --log_samples`` writes,
``OUT/<model>/results_<date>.json`` and ``samples_<task>_<date>.jsonl`` (pass
the folder, the results files, or the samples files; each samples file is
paired with the results file of the same run, i.e. the same ``<date>``).

* **Model identity** from the results file's ``config.model_args``
  (``pretrained=`` or ``model=``/``path=``/``engine=``; ``revision=stepN``
  becomes ``NAME@stepN`` so the catalog can price checkpoints), else
  ``model_name``.
* **Setting** ``"<n>-shot"`` from ``n-shot`` (``"<n>-shot+chat"`` when a chat
  template was applied).
* **Log-likelihood tasks** (``output_type`` ``loglikelihood``,
  ``multiple_choice``, ``loglikelihood_rolling``) give per-item rows:
  ``logprob`` is the summed log-probability of the reference continuation
  (for multiple choice: of the gold choice) and ``correct`` its greedy/argmax
  exact match where the sample records it (``acc``).
* **Generation tasks** (``generate_until``) give per-item correctness but no
  log-probability, so they become one aggregate row per (model, task,
  setting): ``n_items`` and ``n_correct`` from the per-sample metric
  (``exact_match``, else ``acc``/``em``, else the first 0/1 metric).
* **Token counts.** lm-eval samples carry no token count of the target.
  Fallback (``token_count="words"``, the default): the number of
  whitespace-separated words of the reference continuation (at least 1) --
  exact for LAMBADA-style single-word targets scored per word, an
  undercount for BPE tokens. ``token_count=1`` (or any integer) uses that
  constant for every item; ``token_count="chars/4"`` uses
  ``ceil(len(text)/4)``, the usual BPE rule of thumb.
* Without a samples file for a task, the results file's aggregate
  ``acc``/``exact_match`` with ``n-samples`` gives an aggregate row.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import _one_line, _q
from ..errors import DataError

__all__ = ["read_lmeval", "count_tokens"]

_DATE = re.compile(r"_(\d{4}-\d{2}-\d{2}T[\d\-\.:]+)\.jsonl?$")
_LL_TYPES = {"loglikelihood", "multiple_choice", "loglikelihood_rolling"}
_EM_METRICS = ("exact_match", "acc", "em", "exact", "exact_str_match", "accuracy")


def _check_token_count(token_count) -> None:
    if isinstance(token_count, (int, float)) and not isinstance(token_count, bool):
        if math.isfinite(token_count) and token_count >= 1:
            return
    elif token_count in ("words", "chars/4", "chars"):
        return
    raise DataError(f"unknown token_count {_q(token_count)}; use 'words', 'chars/4' or a whole number >= 1")


def count_tokens(text: str, token_count: str | int = "words") -> int:
    """Token count of a reference answer under the documented fallback (see module docstring)."""
    _check_token_count(token_count)
    if isinstance(token_count, (int, float)) and not isinstance(token_count, bool):
        return max(1, int(token_count))
    text = "" if text is None else str(text)
    if token_count == "words":
        return max(1, len(text.split()))
    if token_count in ("chars/4", "chars"):
        return max(1, math.ceil(len(text.strip()) / 4))
    raise DataError(f"unknown token_count {_q(token_count)}; use 'words', 'chars/4' or a whole number >= 1")


def _first_line(exc: Exception) -> str:
    return _one_line((str(exc).splitlines() or [type(exc).__name__])[0][:200])


#: the sections of a results file that are read: JSON objects (keyed by task, but for config)
_SECTIONS = ("results", "config", "configs", "n-shot", "n-samples")


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; pass the results_*.json that lm-eval wrote") from None
    except (ValueError, OSError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({_first_line(exc)}); pass lm-eval's results_*.json") from None
    if not isinstance(data, dict) or "results" not in data or "config" not in data:
        raise DataError(
            f"{path}: not an lm-eval results file (no 'results'/'config'); pass the results_*.json that "
            "`lm-eval --output_path` wrote"
        )
    for key in _SECTIONS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise DataError(f"{path}: {key!r} is a {type(data[key]).__name__}, not a JSON object; pass the "
                            "results_*.json that lm-eval wrote, unchanged")
    for key in ("results", "configs", "n-shot", "n-samples"):
        for task, v in (data.get(key) or {}).items():
            if key != "n-shot" and v is not None and not isinstance(v, dict):
                raise DataError(f"{path}: {key}[{_q(task)}] is a {type(v).__name__}, not a JSON object; pass the "
                                "results_*.json that lm-eval wrote, unchanged")
    return data


def _whole(v, what: str, minimum: int = 0) -> int:
    """A whole number >= ``minimum`` from a JSON value (an int, a whole float or its text); else DataError."""
    try:
        f = float(v) if not isinstance(v, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        f = math.nan
    if not (math.isfinite(f) and f == round(f) and f >= minimum):
        raise DataError(f"{what} is {_q(v)}, not a whole number >= {minimum}")
    return int(f)


def _model_args(config: dict) -> dict:
    args = config.get("model_args") or {}
    if isinstance(args, str):
        out = {}
        for part in args.split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k.strip()] = v.strip()
        return out
    return dict(args) if isinstance(args, dict) else {}


def model_identity(results: dict) -> str:
    """Model name from a results file (``NAME@REVISION`` for non-main revisions)."""
    config = results.get("config") or {}
    args = _model_args(config)
    name = next((str(args[k]) for k in ("pretrained", "model", "path", "engine", "model_name") if args.get(k)), None)
    name = name or results.get("model_name") or config.get("model")
    if isinstance(name, (dict, list)):
        raise DataError(f"lm-eval results file names its model as a {type(name).__name__} ({_q(name)}); "
                        "re-run with --model_args pretrained=NAME")
    if not name or not str(name).strip():
        raise DataError("lm-eval results file names no model (config.model_args has no pretrained=); "
                        "re-run with --model_args pretrained=NAME")
    rev = args.get("revision")
    if rev and str(rev).strip().lower() not in {"main", "none"}:
        name = f"{name}@{str(rev).strip()}"
    return str(name)


def _setting(results: dict, task: str) -> str:
    shots = (results.get("n-shot") or {}).get(task)
    if shots is None:
        shots = ((results.get("configs") or {}).get(task) or {}).get("num_fewshot")
    setting = f"{_whole(shots, f'n-shot of task {task!r}')}-shot" if shots is not None else "0-shot"
    if results.get("chat_template") or (results.get("config") or {}).get("apply_chat_template"):
        setting += "+chat"
    return setting


def _as_float(v) -> float:
    if isinstance(v, str):
        if v.strip().lower() in {"true", "false"}:
            return float(v.strip().lower() == "true")
    return float(v)


def _pair(resp) -> tuple[float, float | None]:
    """(logprob, is_greedy) from a loglikelihood response in its various nestings."""
    while isinstance(resp, (list, tuple)) and len(resp) == 1 and isinstance(resp[0], (list, tuple)):
        resp = resp[0]
    if isinstance(resp, (list, tuple)):
        lp = _as_float(resp[0])
        greedy = _as_float(resp[1]) if len(resp) > 1 else None
        return lp, greedy
    return _as_float(resp), None


def _continuation(sample: dict, index: int = 0) -> str:
    args = sample.get("arguments")
    if isinstance(args, dict):
        a = args.get(f"gen_args_{index}") or {}
        if isinstance(a, dict) and "arg_1" in a and isinstance(a["arg_1"], str):
            return a["arg_1"]
    elif isinstance(args, list) and len(args) > index and isinstance(args[index], (list, tuple)) and len(args[index]) > 1:
        return str(args[index][1])
    t = sample.get("target")
    return t if isinstance(t, str) else str(t)


def _em_metric(sample: dict) -> str | None:
    for m in _EM_METRICS:
        if m in sample:
            return m
    for m in sample.get("metrics") or []:
        v = sample.get(m)
        if isinstance(v, (int, float)) and v in (0, 1):
            return m
    return None


def _read_samples(path: Path, results: dict, task: str, model: str, token_count) -> list[dict]:
    config = (results.get("configs") or {}).get(task) or {}
    otype = config.get("output_type")
    if otype is not None and not isinstance(otype, str):
        raise DataError(f"{path}: the run's results file gives output_type {_q(otype)} for task {task!r}, not a "
                        "name; pass lm-eval's output unchanged")
    try:
        setting = _setting(results, task)
    except DataError as exc:
        raise DataError(f"{path}: in the run's results file, {exc}; pass lm-eval's output unchanged") from None
    lines = []
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    lines.append((n, json.loads(line)))
    except UnicodeDecodeError:
        raise DataError(f"{path}: is not UTF-8 text; pass lm-eval's samples_<task>_*.jsonl unchanged") from None
    except (ValueError, OSError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: line {n} is not valid JSON ({_first_line(exc)}); pass lm-eval's "
                        "samples_<task>_*.jsonl unchanged") from None
    if not lines:
        raise DataError(f"{path}: empty samples file; re-run lm-eval with --log_samples")
    for n, s in lines:
        if not isinstance(s, dict) or "doc_id" not in s:
            raise DataError(f"{path}, line {n}: not an lm-eval sample (no doc_id); pass samples_<task>_*.jsonl")
    # one filter per document: 'none' if present, else the first seen
    filters = [s.get("filter", "none") for _, s in lines]
    keep = "none" if "none" in filters else filters[0]
    rows, gen = [], []
    for n, s in lines:
        if s.get("filter", "none") != keep:
            continue
        resps = s.get("filtered_resps", s.get("resps"))
        try:
            if otype in _LL_TYPES or (otype is None and _looks_ll(resps)):
                if otype == "multiple_choice":
                    gold = s.get("target")
                    if isinstance(gold, list):
                        gold = gold[0]
                    gold = int(gold)
                    lp, _ = _pair(resps[gold])
                    text = _continuation(s, gold)
                elif otype == "loglikelihood_rolling":
                    lp, _ = _pair(resps)
                    args = s.get("arguments") or {}
                    a0 = args.get("gen_args_0", {}).get("arg_0") if isinstance(args, dict) else None
                    text = a0 if isinstance(a0, str) else _continuation(s)
                else:
                    lp, greedy = _pair(resps)
                    text = _continuation(s)
                row = {"model": model, "task": task, "setting": setting, "item": str(s["doc_id"]),
                       "n_tokens": count_tokens(text, token_count), "logprob": 0.0 if 0.0 < lp <= 1e-9 else lp}
                if otype == "loglikelihood_rolling":
                    pass
                elif "acc" in s:
                    row["correct"] = float(_as_float(s["acc"]) >= 0.5)
                elif otype != "multiple_choice" and greedy is not None:
                    row["correct"] = float(greedy)
                if not np.isfinite(row["logprob"]):
                    raise ValueError("non-finite log-probability")
                if row["logprob"] > 0:
                    raise ValueError(f"log-probability {row['logprob']:g} > 0")
                rows.append(row)
            else:
                m = _em_metric(s)
                if m is None:
                    raise ValueError("no 0/1 correctness metric (exact_match/acc) in the sample")
                v = _as_float(s[m])
                if v not in (0.0, 1.0):
                    raise ValueError(f"metric {m!r} is {v}, not 0/1")
                gen.append({"correct": v, "n_tokens": count_tokens(s.get("target"), token_count)})
        except DataError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
            raise DataError(f"{path}, line {n}: cannot read the sample's response ({_first_line(exc)}); pass "
                            "lm-eval's samples file unchanged") from None
    if gen:
        rows.append({"model": model, "task": task, "setting": setting, "n_items": len(gen),
                     "n_correct": sum(g["correct"] for g in gen),
                     "n_tokens": float(np.mean([g["n_tokens"] for g in gen]))})
    return rows


def _looks_ll(resps) -> bool:
    try:
        _pair(resps)
        return True
    except (ValueError, TypeError, IndexError, OverflowError):
        return False


def _aggregate_from_results(results: dict, task: str, model: str, path: Path, token_count) -> list[dict]:
    res = (results.get("results") or {}).get(task) or {}
    n = ((results.get("n-samples") or {}).get(task) or {}).get("effective")
    for m in _EM_METRICS:
        key = f"{m},none" if f"{m},none" in res else (m if m in res else None)
        if key is not None and n:
            n = _whole(n, f"n-samples[{task!r}].effective", minimum=1)
            acc = res[key]
            if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0:
                raise DataError(f"results[{task!r}][{key!r}] is {_q(acc)}, not a fraction in [0, 1]")
            return [{"model": model, "task": task, "setting": _setting(results, task), "n_items": n,
                     "n_correct": float(round(acc * n)),
                     "n_tokens": float(count_tokens("", token_count)) if not isinstance(token_count, str) else 1.0}]  # no text: 1 token unless an integer was given
    return []


def _task_of(samples: Path, date: str) -> str:
    name = samples.name
    return name[len("samples_"): name.rindex("_" + date)]


def read_lmeval(paths, token_count: str | int = "words") -> pd.DataFrame:
    """Read lm-eval results/samples files into tidy rows (no compute yet; see module docstring)."""
    from . import expand_paths

    _check_token_count(token_count)
    files = expand_paths(paths, ("results_*.json", "samples_*.jsonl"), "lm-eval results/samples")
    results_files = {f for f in files if f.name.startswith("results") and f.suffix == ".json"}
    sample_files = [f for f in files if f.name.startswith("samples_") and f.suffix == ".jsonl"]
    other = [f for f in files if f not in results_files and f not in sample_files]
    if other:
        raise DataError(f"{other[0]}: not an lm-eval output file (expected results_*.json or samples_<task>_*.jsonl)")
    # pair samples with their run's results file
    by_run: dict[Path, list[Path]] = {r: [] for r in results_files}
    for s in sample_files:
        m = _DATE.search(s.name)
        if not m:
            raise DataError(f"{s}: cannot tell which run it belongs to (expected samples_<task>_<date>.jsonl)")
        r = s.with_name(f"results_{m.group(1)}.json")
        if not r.exists():
            raise DataError(f"{s}: no results_{m.group(1)}.json beside it; keep lm-eval's output folder together")
        by_run.setdefault(r, []).append(s)
    rows: list[dict] = []
    for rfile in sorted(by_run):
        results = _load_json(rfile)
        try:
            model = model_identity(results)
        except DataError as exc:
            raise DataError(f"{rfile}: {exc}") from None
        date = _DATE.search(rfile.name).group(1) if _DATE.search(rfile.name) else None
        samples = by_run[rfile]
        if not samples and rfile in results_files and date:  # the folder: look for this run's samples
            samples = sorted(rfile.parent.glob(f"samples_*_{date}.jsonl"))
        seen = set()
        for s in samples:
            task = _task_of(s, date) if date else s.stem[len("samples_"):]
            seen.add(task)
            rows.extend(_read_samples(s, results, task, model, token_count))
        if rfile in results_files:
            for task in results.get("results") or {}:
                if task not in seen and task in (results.get("configs") or {}):
                    try:
                        rows.extend(_aggregate_from_results(results, task, model, rfile, token_count))
                    except DataError as exc:
                        raise DataError(f"{rfile}: {exc}; pass the results_*.json that lm-eval wrote") from None
    if not rows:
        raise DataError(f"{files[0]}: no per-sample or accuracy results found; run lm-eval with --log_samples")
    return pd.DataFrame(rows)
