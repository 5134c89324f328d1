"""Real-data backtest suite: every dataset in ../shared/data as one or more cases, one command, one table.

Regenerate ``docs/backtest_suite.md`` (from the repository root; hours on 2 cores the first time)::

    nice -n 10 .venv/bin/python benchmarks/backtest_suite.py
    .venv/bin/python benchmarks/backtest_suite.py --cases lambada,lu2023      # some cases only
    .venv/bin/python benchmarks/backtest_suite.py --quick                     # tiny smoke run (minutes)
    .venv/bin/python benchmarks/backtest_suite.py --report-only               # rebuild the table from the cache

Every (case, fold, method) result is cached as JSON under ``benchmarks/out/suite/`` (git-ignored; the
``--quick`` run uses ``benchmarks/out/suite-quick/``), keyed by the sampler settings, the model spec's
text and the case's data: a rerun redoes only what is missing or changed (``--force`` redoes all of the
selected cases). The table is always built from the cache, from every case that has results, so a run
of one case refreshes the whole table.

Cases (``CASES``; each fold is ``holdout_largest=N``: within each family hold out the N largest models,
all checkpoints of a model together; fit on the rest; families with N or fewer models stay whole in
training, as pooling data, and are not forecast — see ``_holdout_largest``):

* ``lambada`` (``pythia_evals.csv.gz``): LAMBADA (OpenAI), 0-shot, family ``pythia`` (standard Pile),
  checkpoints from step 13,000 (14 per size, 8 sizes); ``ppl`` -> per-word CE (aggregate ``ce``), ``acc``
  -> exact-match counts over 5153 items. Folds N = 6, 4, 2 (fit on the 2, 4, 6 smallest sizes). Its fits
  are fast, so 2000 draws per chain (at 500 the ESS was 180-270 with R-hat <= 1.024 and no divergences).
* ``pythia-mc`` (``pythia_evals.csv.gz``): the seven multiple-choice tasks of that file (ARC-E, ARC-C,
  LogiQA, PIQA, SciQ, WinoGrande, WSC; ``acc``, 0-shot), final models only: Pythia and Pythia-deduped
  (step 143,000, 8 sizes each), OPT (8), BLOOM (4: bloom-1b7 has no compute in the file). Folds N = 1, 2.
* ``arithmetic`` (``pythia_arithmetic.csv.gz``): two-digit addition and multiplication, ``subtask=ALL``
  (5000 items), 0-, 2-, 8-shot (three of the five shot counts, one setting each), Pythia v0 deduped,
  7 sizes (125M ... 13B) x 6 checkpoints, accuracy only. Answer length assumed 2 tokens (addition) and 3
  (multiplication); the data carry none. Folds N = 1, 3.
* ``lu2023`` (``lu2023_on_emergence.csv.gz``): the five tasks Lu et al. also ran on LLaMA/Falcon
  (commonsense_qa, gsm8k, logical_deduction, social_iqa, tracking_shuffled_objects; exact-match
  accuracy, mean of 3 seeds), prompt ``closed``, 0- and 5-shot. The file has no compute: params and
  training tokens (and compute) come from the package's catalog (``forecaster/catalog.py``) for every
  model it covers: T5, Flan-T5, LLaMA, Alpaca, Falcon(-instruct), GPT-J, GPT-JT, davinci. GPT-2 (catalog:
  parameters only, tokens never published), text-davinci-00x, gpt-4 and code have none and are dropped.
  Instruction-tuned models are their own family (``<family>-instruct``; the importer also gives them
  setting ``+instruct``), so a base model and its instruct variant are never split across train/test.
  Fold N = 1 (most families have two models).
* ``obsscaling-mc`` (``obsscaling_benchmarks.csv.gz``): the four multiple-choice accuracy benchmarks
  (MMLU 5-shot ``acc``, ARC-Challenge 25-shot ``acc_norm``, HellaSwag 10-shot ``acc_norm``, Winogrande
  5-shot ``acc``; ``acc_norm`` is read as the accuracy, the importer otherwise ignores it), every model
  with compute in the file (123 of 148 models, 39 of 47 families; GPT-2, RWKV, Mistral/Mixtral, Qwen2,
  InternLM2, DeciLM, Jamba and Qwen1.5-110B have none). Each benchmark has its own fixed shot count; all
  rows get one setting (a task seen in one setting only would make the task-by-setting shift a copy of
  its intercept and slope). TruthfulQA ``mc2`` (not an accuracy) and XWinograd
  (multilingual variant of Winogrande) are left out. Folds N = 1, 2.
* ``obsscaling-gen`` (same file): the two generative exact-match benchmarks, GSM8K (5-shot) and
  HumanEval (``pass@1``, 164 problems, read as an accuracy). Folds N = 1, 2.
* ``llm-line`` (``llm_line_mc.csv.gz``): five tasks (ARC-E, ARC-C, HellaSwag, PIQA, Winogrande: those
  shared with the other cases), ``acc``, families with several model sizes: Pythia (7), GPT-Neo/J/NeoX
  (5), Mamba (5), Mamba-2 (5). Folds N = 1, 2.
* ``llm-line-ckpt`` (same file, same tasks): the three 1.7B ablation runs (C4, FineWeb-Edu, Pile-deduped),
  every checkpoint (renamed ``run@step<billions of tokens>`` so the model and the split know they are
  checkpoints of one run); rolling origin along training (``folds=2``: fit on checkpoints below the
  1/3 and 2/3 quantiles of compute, forecast the later ones of the same run).

Methods: ``forecaster`` (default spec, or ``--model``), ``logistic`` and ``unpooled`` baselines
(``forecaster.backtest``). Scores: coverage of the central 50/80/90% predictive intervals, CRPS and
median absolute error (percentage points) of held-out accuracies; crossings of ``--threshold``
(median |error| in decades, share of observed crossings inside the 90% interval). Convergence of every
Bayesian fit: max R-hat, min ESS (bulk and tail), divergences. A fold is *not converged* when any of its
Bayesian fits has R-hat > 1.05, ESS < 100 or divergences in more than 1% of its draws (the library's
``Diagnostics.converged``); such folds are named and left out of the
"converged" pooled row (all methods, so methods are compared on the same points) and kept in the
"all folds" row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import importlib  # noqa: E402

bt = importlib.import_module("forecaster.backtest")  # the module (the package re-exports a function of that name)
from forecaster.catalog import resolve  # noqa: E402
from forecaster.data import validate  # noqa: E402
from forecaster.errors import ForecasterError  # noqa: E402
from forecaster.fit import ESS_CONVERGED, RHAT_CONVERGED  # noqa: E402
from forecaster.importers import import_results  # noqa: E402
from forecaster.spec import load_spec  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "out"
#: A fold counts as converged by the library's rule (forecaster.fit.Diagnostics.converged).
RHAT_MAX, ESS_MIN, DIVERGENT_SHARE = RHAT_CONVERGED, ESS_CONVERGED, 0.01


def _code_digest() -> str:
    """Digest of the library's code and shipped specs as this process loaded them: part of every cache key,
    so that a changed model is refit, and shown per case in the table, so that mixed versions are visible."""
    h = hashlib.sha256()
    files = sorted([*(REPO / "forecaster").rglob("*.py"), *(REPO / "forecaster").glob("*.npz"),
                    *(REPO / "forecaster").glob("*.csv"), *(REPO / "models").glob("*.toml")])
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


CODE = _code_digest()

# --------------------------------------------------------------------------- data


def _raw(name: str) -> pd.DataFrame:
    return pd.read_csv(SHARED / name, low_memory=False)


def _import(raw: pd.DataFrame, **options) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "subset.csv"
        raw.to_csv(path, index=False)
        df = import_results("long", [str(path)], **options)
    return validate(df, source="subset", allow_single_compute=True)


def lambada_table(quick: bool = False) -> pd.DataFrame:
    raw = _raw("pythia_evals.csv.gz")
    step = pd.to_numeric(raw.step, errors="coerce")
    raw = raw[(raw.task == "lambada_openai") & (raw.family == "pythia") & (raw.shots.astype(int) == 0)
              & (step >= 13_000)]
    if quick:
        raw = raw[pd.to_numeric(raw.step, errors="coerce").isin([43_000, 143_000])]
    return _import(raw)


PYTHIA_MC = ["arc_easy", "arc_challenge", "logiqa", "piqa", "sciq", "winogrande", "wsc"]


def pythia_mc_table(quick: bool = False) -> pd.DataFrame:
    raw = _raw("pythia_evals.csv.gz")
    step = pd.to_numeric(raw.step, errors="coerce")
    raw = raw[raw.task.isin(PYTHIA_MC[:2] if quick else PYTHIA_MC) & (raw.metric == "acc")
              & (raw.shots.astype(int) == 0) & (step.isna() | (step == 143_000))]
    raw = raw[pd.to_numeric(raw.compute_flops, errors="coerce") > 0]  # bloom-1b7: no compute in the file
    raw = raw.assign(step=np.nan)  # final models: one compute each, no checkpoint suffix
    return _import(raw)


def arithmetic_table(quick: bool = False) -> pd.DataFrame:
    raw = _raw("pythia_arithmetic.csv.gz")
    shots = [8] if quick else [0, 2, 8]
    raw = raw[(raw.subtask == "ALL") & raw.shots.astype(int).isin(shots)]
    return _import(raw, n_tokens={"arith_addition": 2, "arith_multiplication": 3})


LU_TASKS = ["commonsense_qa", "gsm8k", "logical_deduction", "social_iqa", "tracking_shuffled_objects"]


def lu_table(quick: bool = False) -> pd.DataFrame:
    raw = _raw("lu2023_on_emergence.csv.gz")
    raw = raw[raw.task.isin(LU_TASKS[:2] if quick else LU_TASKS) & (raw.metric == "exact_match_accuracy")
              & raw.shots.astype(int).isin([0, 5]) & raw.setting.str.contains(r"prompt=closed;", regex=True)]
    # compute, params and tokens from the package's catalog (the file has parameter counts only)
    cat = {m: resolve(m) for m in raw.model.unique()}
    known = {m: e for m, e in cat.items() if e is not None and e.compute and e.params and e.tokens}
    raw = raw[raw.model.isin(known)].copy()
    raw["params"] = raw.model.map(lambda m: known[m].params)
    raw["train_tokens"] = raw.model.map(lambda m: known[m].tokens)
    raw["compute_flops"] = raw.model.map(lambda m: known[m].compute)
    instr = raw.setting.str.contains("instruction_tuned=True")
    raw.loc[instr, "family"] = raw.loc[instr, "family"] + "-instruct"
    return _import(raw)


OBS_MC = {"MMLU": "acc", "ARC-C": "acc_norm", "HellaSwag": "acc_norm", "Winograd": "acc"}
OBS_GEN = {"GSM8K": "acc", "HumanEval": "pass@1"}


def _obsscaling(tasks: dict, quick: bool) -> pd.DataFrame:
    raw = _raw("obsscaling_benchmarks.csv.gz")
    raw = raw[[tasks.get(t) == m for t, m in zip(raw.task, raw.metric)]].copy()
    raw = raw[pd.to_numeric(raw.compute_flops, errors="coerce") > 0]
    if quick:
        raw = raw[raw.family.isin(["Pythia", "OPT", "Llama", "Qwen1.5"])]
    raw["metric"] = "acc"  # acc_norm / pass@1 read as the accuracy (the importer ignores other names)
    # each benchmark has one fixed protocol (shot count): one setting for all, or the task-by-setting
    # shift would duplicate each task's intercept and slope
    raw["shots"] = 0
    return _import(raw)


def obs_mc_table(quick: bool = False) -> pd.DataFrame:
    return _obsscaling(OBS_MC, quick)


def obs_gen_table(quick: bool = False) -> pd.DataFrame:
    return _obsscaling(OBS_GEN, quick)


LINE_TASKS = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande"]


def _line(quick: bool) -> pd.DataFrame:
    raw = _raw("llm_line_mc.csv.gz")
    return raw[raw.task.isin(LINE_TASKS[:2] if quick else LINE_TASKS) & (raw.metric == "acc")].copy()


def line_table(quick: bool = False) -> pd.DataFrame:
    raw = _line(quick)
    raw = raw[~raw.family.str.startswith("hf-ablation")]
    if quick:
        raw = raw[raw.family.isin(["pythia", "mamba"])]
    return _import(raw)


def line_ckpt_table(quick: bool = False) -> pd.DataFrame:
    raw = _line(quick)
    raw = raw[raw.family.str.startswith("hf-ablation")].copy()
    # "run@115B" -> model "run", step 115: the importer names it "run@step115" (one model, many checkpoints)
    parts = raw.model.str.extract(r"^(.*)@(\d+)B$")
    raw["model"], raw["step"] = parts[0], parts[1].astype(int)
    if quick:
        raw = raw[raw.family == "hf-ablation-c4"]
    return _import(raw)


CASES = {
    "lu2023": dict(table=lu_table, holdout_largest=[1], quick=[1],
                   data="lu2023_on_emergence", tasks=", ".join(LU_TASKS) + " (exact match; prompt closed; 0/5-shot)",
                   split="hold out each family's largest (N=1); compute from the catalog"),
    "lambada": dict(table=lambada_table, holdout_largest=[6, 4, 2], quick=[6], draws=2000,
                    data="pythia_evals", tasks="LAMBADA 0-shot (acc + ppl), Pythia, 14 checkpoints x 8 sizes",
                    split="hold out the 6, 4, 2 largest sizes (fit on 2, 4, 6)"),
    "obsscaling-gen": dict(table=obs_gen_table, holdout_largest=[1, 2], quick=[1],
                           data="obsscaling_benchmarks", tasks="GSM8K (5-shot), HumanEval (pass@1) (123 models, 39 families)",
                           split="hold out each family's 1, 2 largest (families with more models)"),
    "pythia-mc": dict(table=pythia_mc_table, holdout_largest=[1, 2], quick=[1],
                      data="pythia_evals", tasks="7 MC tasks (acc, 0-shot), final Pythia, Pythia-dedup, OPT, BLOOM",
                      split="hold out each family's 1, 2 largest"),
    "llm-line": dict(table=line_table, holdout_largest=[1, 2], quick=[1],
                     data="llm_line_mc", tasks="ARC-E, ARC-C, HellaSwag, PIQA, Winogrande; Pythia, GPT-Neo, Mamba, Mamba-2",
                     split="hold out each family's 1, 2 largest"),
    "arithmetic": dict(table=arithmetic_table, holdout_largest=[1, 3], quick=[3],
                       data="pythia_arithmetic", tasks="2-digit addition, multiplication (ALL), 0/2/8-shot, 6 ckpts x 7 sizes",
                       split="hold out the 1, 3 largest sizes"),
    "obsscaling-mc": dict(table=obs_mc_table, holdout_largest=[1, 2], quick=[1],
                          data="obsscaling_benchmarks", tasks="MMLU, ARC-C, HellaSwag, Winogrande (123 models, 39 families)",
                          split="hold out each family's 1, 2 largest (families with more models)"),
    "llm-line-ckpt": dict(table=line_ckpt_table, folds=2, quick=1,
                          data="llm_line_mc", tasks="same 5 tasks; 3 ablation runs (1.7B), all checkpoints",
                          split="rolling origin along training: folds=2 (compute quantiles 1/3, 2/3)"),
}


# --------------------------------------------------------------------------- splits


def _holdout_largest(data: pd.DataFrame, n: int) -> bt.Split:
    """Like ``forecaster.backtest.split_holdout_largest``, but a family with ``n`` or fewer (base) models is
    kept whole in training (pooling data, not forecast) instead of refusing the split."""
    base = data["model"].map(bt.base_model)
    top = data.assign(_base=base).groupby(["family", "_base"])["compute"].max().reset_index()
    held, kept = set(), []
    for fam, g in top.groupby("family"):
        if len(g) <= n:
            kept.append(fam)
            continue
        held |= {(fam, b) for b in g.sort_values("compute", ascending=False)["_base"].iloc[:n]}
    mask = pd.Series([(f, b) in held for f, b in zip(data["family"], base)], index=data.index)
    split = bt._split_by_mask(data, mask, f"holdout-largest {n}")
    split.kept_whole = sorted(kept)
    return split


_PICK: dict = {"fold": None}


def _make_splits(data, *, holdout_above=None, holdout_largest=None, folds=None):
    """Replacement of ``forecaster.backtest.make_splits``: one ``holdout_largest`` value (see above), or one
    fold (``_PICK``) of ``folds=K``, so that every fold is its own cached run."""
    if holdout_largest is None:
        splits = _orig_make_splits(data, holdout_above=holdout_above, holdout_largest=None, folds=folds)
        return splits if _PICK["fold"] is None else [splits[_PICK["fold"]]]
    s = _holdout_largest(data, int(holdout_largest))
    bt._check_split(s, data)
    return [s]


_orig_make_splits = bt.make_splits


def _fold_specs(case: dict, quick: bool) -> list[tuple[str, dict]]:
    """(fold label, backtest split kwargs) of a case."""
    if "folds" in case:
        k = case["quick"] if quick else case["folds"]
        return [(f"folds{k}-{j}", {"folds": k, "_fold": j}) for j in range(k)]
    ns = case["quick"] if quick else case["holdout_largest"]
    return [(f"holdout{n}", {"holdout_largest": int(n)}) for n in ns]


# --------------------------------------------------------------------------- running + cache


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
    return h.hexdigest()[:16]


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else (None if v != v else ("inf" if v > 0 else "-inf"))
    return v


def _from_json(v):
    return np.inf if v == "inf" else (-np.inf if v == "-inf" else (np.nan if v is None else v))


def run_fold(name: str, case: dict, table: pd.DataFrame, label: str, split_kw: dict, method: str, args,
             cache_dir: Path) -> dict:
    """One (case, fold, method): cached JSON, or run and cache it."""
    spec_text = load_spec(args.model).text if method == "forecaster" else (
        load_spec("unpooled").text if method == "unpooled" else "")
    sampler = (args.draws, args.tune, args.chains, args.seed) if method != "logistic" else ()
    data_key = _digest(pd.util.hash_pandas_object(table, index=False).sum(), len(table))
    key = _digest(label, sorted(split_kw.items()), method, sampler, spec_text, args.threshold, data_key, CODE)
    path = cache_dir / name / f"{label}.{method}.json"
    if path.exists() and not args.force:
        rec = json.loads(path.read_text())
        if rec.get("key") == key:
            return rec
    kw = {k: v for k, v in split_kw.items() if not k.startswith("_")}
    t0 = time.perf_counter()
    bt.make_splits = _make_splits
    _PICK["fold"] = split_kw.get("_fold")
    try:
        res = bt.backtest(table, methods=[method], threshold=args.threshold, seed=args.seed, draws=args.draws,
                          tune=args.tune, chains=args.chains, model=args.model, **kw)
    finally:
        bt.make_splits = _orig_make_splits
        _PICK["fold"] = None
    wall = time.perf_counter() - t0
    fi = 0  # one split per call
    pts = res.points[res.points.fold == fi]
    cr = res.crossings[res.crossings.fold == fi] if len(res.crossings) else res.crossings
    split = res.splits[fi]
    if "holdout_largest" in kw:
        split["kept_whole"] = _holdout_largest(table, kw["holdout_largest"]).kept_whole
    rec = {
        "key": key, "case": name, "fold": label, "method": method, "wall_s": wall, "code": CODE,
        "spec": _digest(spec_text) if spec_text else None, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {"draws": args.draws, "tune": args.tune, "chains": args.chains, "seed": args.seed,
                     "model": args.model or "default", "threshold": args.threshold},
        "split": split, "n_table_rows": int(len(table)),
        "diagnostics": res.diagnostics.get(str(fi), {}).get(method),
        "notes": list(res.notes),
        "points": [{k: _jsonable(v) for k, v in r.items()} for r in pts.to_dict("records")],
        "crossings": [{k: _jsonable(v) for k, v in r.items()} for r in cr.to_dict("records")],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(rec), indent=1, allow_nan=False))
    tmp.replace(path)
    return rec


def run_case(name: str, args, cache_dir: Path, methods: list[str]) -> None:
    case = CASES[name]
    args = argparse.Namespace(**vars(args))
    if args.draws is None:
        args.draws = case.get("draws", 500)
    t0 = time.perf_counter()
    table = case["table"](quick=args.quick)
    folds = _fold_specs(case, args.quick)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {len(table)} rows, {table.task.nunique()} tasks, "
          f"{table.family.nunique()} families, {table.model.nunique()} models; folds "
          f"{', '.join(f for f, _ in folds)}", flush=True)
    for label, kw in folds:
        for m in methods:
            t1 = time.perf_counter()
            try:
                rec = run_fold(name, case, table, label, kw, m, args, cache_dir)
            except ForecasterError as exc:
                print(f"  {label} {m}: refused: {exc}", flush=True)
                continue
            d = rec.get("diagnostics") or {}
            conv = "" if not d else (f"; R-hat {d['max_rhat']:.3f}, ESS {min(d['min_ess_bulk'], d['min_ess_tail']):.0f}, "
                                     f"div {d['divergences']}")
            print(f"  {label} {m}: {len(rec['points'])} points, fit {rec['wall_s']:.0f} s "
                  f"(this call {time.perf_counter() - t1:.0f} s){conv}", flush=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


# --------------------------------------------------------------------------- report


def converged(d: dict | None, n_samples: int) -> bool:
    """The library's rule (``forecaster.fit.Diagnostics.converged``): R-hat, ESS and the share of divergences."""
    if not d:
        return True
    rh = d.get("max_rhat")
    ess = min(x for x in (d.get("min_ess_bulk"), d.get("min_ess_tail")) if x is not None)
    return (rh is not None and rh <= RHAT_MAX and ess >= ESS_MIN
            and int(d.get("divergences", 0)) <= DIVERGENT_SHARE * n_samples)


def _n_samples(fit_row) -> int:
    """Draws the kept fit has (a remedy may have drawn more than the settings asked for)."""
    d, st = fit_row.get("diag") or {}, fit_row["settings"]
    return int(d.get("n_samples") or int(st.get("draws", 0)) * int(st.get("chains", 0)))


def load_cache(cache_dir: Path, cases: list[str]) -> list[dict]:
    recs = []
    for name in cases:
        for p in sorted((cache_dir / name).glob("*.json")):
            recs.append(json.loads(p.read_text()))
    return recs


def _scores(points: pd.DataFrame) -> dict:
    if points.empty:
        return {}
    s = bt.score_points(points)
    s["n"] = len(points)
    return s


def _cross(cr: pd.DataFrame) -> dict:
    if cr.empty:
        return {"n_groups": 0, "n_obs": 0}
    seen = cr[cr.observed_log10_compute.notna()]
    err = np.abs(seen.error_decades.astype(float).to_numpy())
    return {"n_groups": len(cr), "n_obs": len(seen), "cross_err": float(np.median(err)) if len(err) else np.nan,
            "cross_cov90": float(np.mean(seen.covered.astype(bool))) if len(seen) else np.nan}


def _f(v, spec=".2f"):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float) and np.isinf(v):
        return "∞"
    return format(v, spec)


def _frames(recs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    pts, crs, fits = [], [], []
    for r in recs:
        for p in r["points"]:
            pts.append({**{k: _from_json(v) for k, v in p.items()}, "case": r["case"], "fold_label": r["fold"]})
        for c in r["crossings"]:
            crs.append({**{k: _from_json(v) for k, v in c.items()}, "case": r["case"], "fold_label": r["fold"]})
        fits.append({"case": r["case"], "fold": r["fold"], "method": r["method"], "wall_s": r["wall_s"],
                     "diag": r.get("diagnostics"), "split": r["split"], "notes": r.get("notes", []),
                     "settings": r["settings"], "code": r.get("code") or "?"})
    cols_p = ["case", "fold_label", "method"]
    cols_c = ["case", "fold_label", "method", "observed_log10_compute", "error_decades", "covered"]
    return (pd.DataFrame(pts) if pts else pd.DataFrame(columns=cols_p),
            pd.DataFrame(crs) if crs else pd.DataFrame(columns=cols_c), pd.DataFrame(fits))


def _row(label: str, method: str, p: pd.DataFrame, c: pd.DataFrame, extra: str = "") -> str:
    s, x = _scores(p), _cross(c)
    if not s:
        return f"| {label} | {method} | 0 | – | – | – | – | – | – | – | – |{extra}"
    return (f"| {label} | {method} | {s['n']} | {_f(s['coverage50'])} | {_f(s['coverage80'])} | {_f(s['coverage90'])} "
            f"| {_f(s['crps'])} | {_f(s['mae'])} | {x['n_obs']}/{x['n_groups']} | {_f(x.get('cross_err'))} "
            f"| {_f(x.get('cross_cov90'))} |{extra}")


HEAD = ("| case | method | points | cov. 50% | cov. 80% | cov. 90% | CRPS (pp) | median abs. err. (pp) "
        "| crossings seen | crossing \\|err\\| (decades) | crossing in 90% |")
SEP = "|---|---|---|---|---|---|---|---|---|---|---|"


def report(recs: list[dict], methods: list[str], args, cases: list[str], elapsed: dict) -> str:
    pts, crs, fits = _frames(recs)
    methods = [m for m in methods if m in set(fits.method)] if len(fits) else methods
    # a fold is not converged when any of its Bayesian fits is not
    bad = {}
    for _, f in fits.iterrows():
        if f["diag"] and not converged(f["diag"], _n_samples(f)):
            d = f["diag"]
            worst = next((m.group(1) for n in f["notes"] for m in [re.search(
                rf"the {f['method']} fit did not converge[^(]*\(max R-hat [0-9.]+ \(([^)]*)\)", n)] if m), "?")
            why = [f"R-hat {d['max_rhat']:.3f} ({worst})" if d["max_rhat"] > RHAT_MAX else "",
                   f"ESS {min(d['min_ess_bulk'], d['min_ess_tail']):.0f}"
                   if min(d["min_ess_bulk"], d["min_ess_tail"]) < ESS_MIN else "",
                   f"{d['divergences']} divergences" if d["divergences"] > DIVERGENT_SHARE * _n_samples(f) else ""]
            bad.setdefault((f["case"], f["fold"]), []).append(f"{f['method']} ({', '.join(w for w in why if w)})")
    ok_mask = lambda df: np.array([(c, fl) not in bad for c, fl in zip(df["case"], df["fold_label"])], bool)  # noqa: E731
    settings = fits["settings"].iloc[0] if len(fits) else {}
    out = ["# Real-data backtest suite", "",
           "Forecasts of held-out larger models on every real dataset in `../shared/data`, scored against what "
           "those models actually did. This file is generated; do not edit it by hand.", "",
           "## How to regenerate", "",
           "```",
           "nice -n 10 .venv/bin/python benchmarks/backtest_suite.py                 # all cases -> this file",
           "nice -n 10 .venv/bin/python benchmarks/backtest_suite.py --cases lambada  # refit one case, rebuild the table",
           ".venv/bin/python benchmarks/backtest_suite.py --report-only               # rebuild from the cache only",
           ".venv/bin/python benchmarks/backtest_suite.py --quick                     # smoke run -> benchmarks/out/suite-quick.md",
           "```", "",
           "Each (case, fold, method) result is cached as JSON in `benchmarks/out/suite/` (git-ignored), keyed by "
           "the data, split, sampler settings and model spec: after a change to the model, the next run refits "
           "everything (`--force` refits regardless); other options: `--methods`, `--draws`, `--tune`, `--chains`, "
           "`--model SPEC`, `--out FILE`. The case definitions (data subsets, tasks, splits, assumptions) are in "
           "the docstring of `benchmarks/backtest_suite.py`; the table below summarises them. Column *code*: "
           "digest of `forecaster/` and `models/` when the case was fit (`?`: not recorded); cases fit with "
           "different code are not comparable.", "",
           f"Settings: seed {settings.get('seed')}, model `{settings.get('model')}`, threshold "
           f"{settings.get('threshold')}, chains x draws (tune) per case below; "
           f"2 CPU cores shared with other jobs, `nice -n 10`. Scores in percentage points (pp), crossing errors in "
           f"decades of compute. A fold counts as converged when every Bayesian fit in it has R-hat ≤ {RHAT_MAX}, "
           f"ESS (bulk and tail) ≥ {ESS_MIN} and divergences in at most {100 * DIVERGENT_SHARE:g}% of its draws "
           "(`Diagnostics.converged`).", ""]
    out += ["## Cases", "", "| case | data | tasks / models | split | folds | chains x draws (tune) | code | time (s) |",
            "|---|---|---|---|---|---|---|---|"]
    for name in cases:
        c = CASES[name]
        f = fits[fits.case == name] if len(fits) else fits
        if f.empty:
            continue
        t = f.wall_s.sum()
        sset = sorted({f"{x['chains']} x {x['draws']} ({x['tune']})" for x, m in zip(f.settings, f.method)
                       if x and m != "logistic"})
        out.append(f"| {name} | `{c['data']}` | {c['tasks']} | {c['split']} | {', '.join(sorted(set(f.fold)))} "
                   f"| {', '.join(sset)} | {', '.join(sorted(set(f.code)))} "
                   f"| {t:.0f} ({', '.join(f'{m} {f[f.method == m].wall_s.sum():.0f}' for m in methods if (f.method == m).any())}) |")
    for title, use_ok in (("converged folds only", True), ("all folds, converged or not", False)):
        out += ["", f"## Scores per case ({title})", "", HEAD, SEP]
        for name in cases:
            for m in methods:
                if not len(pts) or not ((fits.case == name) & (fits.method == m)).any():
                    continue
                p = pts[(pts.case == name) & (pts.method == m)]
                c = crs[(crs.case == name) & (crs.method == m)] if len(crs) else crs
                if use_ok:
                    p = p[ok_mask(p)] if len(p) else p
                    c = c[ok_mask(c)] if len(c) else c
                    if p.empty:
                        out.append(f"| {name} | {m} | no converged fold | | | | | | | | |")
                        break
                out.append(_row(name, m, p, c))
    out += ["", "## Pooled over cases", "", HEAD, SEP]
    for lab, use_ok in (("converged folds", True), ("all folds", False)):
        for m in methods:
            p = pts[pts.method == m] if len(pts) else pts
            c = crs[crs.method == m] if len(crs) else crs
            if use_ok:
                p = p[ok_mask(p)] if len(p) else p
                c = c[ok_mask(c)] if len(c) else c
            out.append(_row(lab, m, p, c))
    # unweighted mean of the per-case scores (all folds), so that the big cases do not dominate
    for m in methods:
        per = [_scores(pts[(pts.case == name) & (pts.method == m)]) for name in cases] if len(pts) else []
        per = [x for x in per if x]
        if per:
            mean = {k: float(np.mean([x[k] for x in per])) for k in ("coverage50", "coverage80", "coverage90", "crps", "mae")}
            out.append(f"| all folds, mean of {len(per)} cases | {m} | {sum(x['n'] for x in per)} "
                       f"| {_f(mean['coverage50'])} | {_f(mean['coverage80'])} | {_f(mean['coverage90'])} "
                       f"| {_f(mean['crps'])} | {_f(mean['mae'])} | | | |")
    out += ["", "Pooled: every held-out point of every case and fold counts once (coverage and CRPS are means, the "
            "error a median over points; crossings a median over groups), so large cases weigh more; the *mean of cases* rows average the per-case scores instead. Methods that score different points (the logistic baseline scores fewer) are compared on the same points in the next table.", ""]
    if "logistic" in methods and len(pts):
        # the logistic baseline needs >= 2 training compute levels per (task, family, setting): it scores fewer
        # points; compare every method on the points it did score
        key = ["case", "fold_label", "task", "family", "setting", "model"]
        lk = set(map(tuple, pts[pts.method == "logistic"][key].itertuples(index=False, name=None)))
        same = pts[[tuple(r) in lk for r in pts[key].itertuples(index=False, name=None)]]
        ck = ["case", "fold_label", "task", "family", "setting"]
        lc = set(map(tuple, crs[crs.method == "logistic"][ck].itertuples(index=False, name=None))) if len(crs) else set()
        same_c = crs[[tuple(r) in lc for r in crs[ck].itertuples(index=False, name=None)]] if len(crs) else crs
        out += ["## Same points as the logistic baseline", "",
                "The logistic baseline is fit per (task, family, setting) and needs two training compute levels "
                "there, so it forecasts fewer points (none for a family with one training model). Every method "
                "on exactly the points (and crossing groups) the logistic baseline scored (per case: all folds):", "", HEAD, SEP]
        for name in cases + ["pooled (converged folds)", "pooled (all folds)"]:
            for m in methods:
                pooled = name.startswith("pooled")
                p = same[same.method == m] if pooled else same[(same.case == name) & (same.method == m)]
                c = (same_c[same_c.method == m] if pooled else
                     same_c[(same_c.case == name) & (same_c.method == m)]) if len(same_c) else same_c
                if "converged" in name:
                    p = p[ok_mask(p)] if len(p) else p
                    c = c[ok_mask(c)] if len(c) else c
                if len(p) or pooled:
                    out.append(_row(name, m, p, c))
        out.append("")
    out += ["## Per fold", "", "| case | fold | method | points | cov. 90% | CRPS (pp) | median abs. err. (pp) "
            "| max R-hat | min ESS (bulk/tail) | divergences | converged | fit time (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in cases:
        f = fits[fits.case == name] if len(fits) else fits
        for _, r in f.sort_values(["fold", "method"]).iterrows() if len(f) else []:
            p = pts[(pts.case == name) & (pts.fold_label == r["fold"]) & (pts.method == r["method"])]
            s = _scores(p)
            d = r["diag"]
            dtxt = (f"| {d['max_rhat']:.3f} | {d['min_ess_bulk']:.0f}/{d['min_ess_tail']:.0f} | {d['divergences']} "
                    f"| {'yes' if converged(d, _n_samples(r)) else '**no**'} ") if d else "| – | – | – | – "
            out.append(f"| {name} | {r['fold']} | {r['method']} | {s.get('n', 0)} | {_f(s.get('coverage90'))} "
                       f"| {_f(s.get('crps'))} | {_f(s.get('mae'))} {dtxt}| {r['wall_s']:.0f} |")
    out += ["", "## Convergence problems", ""]
    if bad:
        for (c, fl), ms in sorted(bad.items()):
            out.append(f"- {c} / {fl}: {'; '.join(ms)}")
        out += ["", "These folds are left out of the *converged* rows (for every method, so that methods are "
                "compared on the same points) and kept in the *all folds* rows."]
    else:
        out.append("- none")
    out += ["", "## Splits and notes", ""]
    for name in cases:
        f = fits[fits.case == name] if len(fits) else fits
        for fl in sorted(set(f.fold)) if len(f) else []:
            sp = f[f.fold == fl].iloc[0]["split"]
            kept = sp.get("kept_whole") or []
            out.append(f"- **{name} / {fl}**: {sp['n_train_rows']} training rows, {sp['n_test_rows']} held-out rows; "
                       f"held out: {', '.join(sp['test_models'])}"
                       + (f"; families kept whole in training (too few models): {', '.join(kept)}" if kept else ""))
            notes = dict.fromkeys(n for _, r in f[f.fold == fl].iterrows() for n in r["notes"])
            for n in notes:
                out.append(f"  - {n[:400]}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of: {', '.join(CASES)}")
    ap.add_argument("--methods", default="forecaster,logistic,unpooled")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: small subsets, one fold, 2x50 draws")
    ap.add_argument("--draws", type=int, default=None,
                    help="draws per chain (default 500; a case may set more: lambada 2000, whose fits are fast "
                    "and whose ESS at 500 fell short of 400 while R-hat and divergences were fine)")
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--model", default=None, help="spec of the forecaster method (default: the default spec)")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default docs/backtest_suite.md; "
                    "with --quick benchmarks/out/suite-quick.md)")
    ap.add_argument("--force", action="store_true", help="ignore cached results of the selected cases")
    ap.add_argument("--cache", type=Path, default=None, help="cache folder (default benchmarks/out/suite, "
                    "with --quick benchmarks/out/suite-quick)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the table from the cache; fit nothing")
    args = ap.parse_args(argv)
    if args.quick:
        args.draws, args.tune, args.chains = 50, 50, 2
    if not SHARED.exists():
        print(f"real data not found at {SHARED}", file=sys.stderr)
        return 2
    sel = list(CASES) if not args.cases else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in sel if c not in CASES]
    if unknown:
        print(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cache_dir = args.cache or OUT / ("suite-quick" if args.quick else "suite")
    out = args.out or (OUT / "suite-quick.md" if args.quick else REPO / "docs" / "backtest_suite.md")
    elapsed = {}
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not args.report_only:
        for name in sel:
            t0 = time.perf_counter()
            run_case(name, args, cache_dir, methods)
            elapsed[name] = time.perf_counter() - t0
    # the table covers every case with cached results (not only the selected ones)
    have = [c for c in CASES if (cache_dir / c).exists() and any((cache_dir / c).glob("*.json"))]
    recs = load_cache(cache_dir, have)
    all_methods = [m for m in ("forecaster", "logistic", "unpooled") if any(r["method"] == m for r in recs)]
    md = report(recs, all_methods, args, have, elapsed)
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
