"""Backtests on real Pythia results (../shared/data): the README's "Backtests on real models" table.

Two backtests, each scoring the forecaster, the logistic baseline and the
unpooled model on the same split:

1. **LAMBADA 0-shot** (``pythia_evals.csv.gz``, family ``pythia`` = standard
   Pile, not deduped; ``acc`` -> exact-match counts, ``ppl`` -> per-word CE):
   checkpoints from step 10,000 on (the first thousands of steps are warm-up,
   not a power law). Fit on all checkpoints of 70M and 160M
   (``holdout_largest=6``), forecast every checkpoint of 410M ... 12B.
   ``lambada-sweep``: the same data, a rolling origin by model size
   (``holdout_largest=[6, 5, 4, 3]``: fit on the smallest 2, 3, 4, 5 sizes).
2. **Two-digit addition, 8-shot** (``pythia_arithmetic.csv.gz``,
   ``arith_addition``, ``subtask=ALL``, 5000 items; Pythia v0 deduped, six
   checkpoints each; accuracy only). Fit on 125M ... 1.3B
   (``holdout_largest=3``), forecast 2.7B, 6.7B and 13B. Answer length: 2
   tokens (sums up to 198; an assumption, the data carry no token counts).

Run (from the repository root; several minutes on 2 cores)::

    .venv/bin/python benchmarks/backtest_pythia.py                # both, prints markdown tables
    .venv/bin/python benchmarks/backtest_pythia.py --only lambada --draws 300 --out /tmp/bt
    .venv/bin/python benchmarks/backtest_pythia.py --model additive     # the additive (two power laws) trend

With ``--out DIR`` it also writes ``<name>.json`` (the ``forecaster backtest
--format json`` object) and ``<name>.png`` (calibration + predictions) there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forecaster.backtest import backtest  # noqa: E402
from forecaster.data import validate  # noqa: E402
from forecaster.importers import import_results  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _import(raw: pd.DataFrame, **options) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "subset.csv"
        raw.to_csv(path, index=False)
        df = import_results("long", [str(path)], **options)
    return validate(df, source="subset", allow_single_compute=True)


def lambada_table(min_step: int = 10_000) -> pd.DataFrame:
    raw = pd.read_csv(SHARED / "pythia_evals.csv.gz", low_memory=False)
    raw = raw[(raw.task == "lambada_openai") & (raw.family == "pythia") & (raw.shots.astype(int) == 0)
              & (pd.to_numeric(raw.step, errors="coerce") >= min_step)]
    return _import(raw)


def addition_table() -> pd.DataFrame:
    raw = pd.read_csv(SHARED / "pythia_arithmetic.csv.gz", low_memory=False)
    raw = raw[(raw.task == "arith_addition") & (raw.shots.astype(int) == 8) & (raw.subtask == "ALL")]
    return _import(raw, n_tokens={"arith_addition": 2})


CASES = {
    "lambada": dict(table=lambada_table, holdout_largest=6,
                    fit="Pythia 70M, 160M (14 checkpoints each, step >= 13k)",
                    predict="410M, 1B, 1.4B, 2.8B, 6.9B, 12B (14 checkpoints each)"),
    "lambada-sweep": dict(table=lambada_table, holdout_largest=[6, 5, 4, 3],
                          fit="the smallest 2, 3, 4, 5 Pythia sizes (one fold each; all checkpoints, step >= 13k)",
                          predict="the larger sizes of each fold"),
    "addition": dict(table=addition_table, holdout_largest=3,
                     fit="Pythia v0 deduped 125M, 350M, 800M, 1.3B (6 checkpoints each)",
                     predict="2.7B, 6.7B, 13B (6 checkpoints each)"),
}


def _fmt(v, spec=".2f"):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float) and np.isinf(v):
        return "not reached" if v > 0 else "already"
    return format(v, spec)


def crossing_markdown(result) -> str:
    lines = ["| method | task / family / setting | observed log10 C | predicted q05 / q50 / q95 | covered |",
             "|---|---|---|---|---|"]
    for _, r in result.crossings.iterrows():
        obs = r["observed_log10_compute"]
        lines.append(
            f"| {r['method']} | {r['task']} / {r['family']} / {r['setting']} | "
            f"{_fmt(obs) if obs is not None and obs == obs else 'not crossed'} | "
            f"{_fmt(r['log10_compute_q05'])} / {_fmt(r['log10_compute_q50'])} / {_fmt(r['log10_compute_q95'])} | "
            f"{'–' if r['covered'] is None or r['covered'] != r['covered'] else ('yes' if r['covered'] else 'no')} |")
    return "\n".join(lines)


def readme_table(result) -> str:
    """The README's table: scores per method with its (single) crossing forecast; else scores + crossings."""
    c = result.crossings
    if c.empty or c.groupby("method").size().max() != 1:
        return result.markdown() + "\n\n" + crossing_markdown(result)
    t = result.scores.merge(c, on="method", how="left")
    lines = ["| method | points | cov. 50% | cov. 80% | cov. 90% | CRPS (pp) | median abs. err. (pp) "
             "| crossing forecast q05 / q50 / q95 (log10 FLOPs) | crossing error (decades) | covered |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        err = r["error_decades"]
        err_s = "–" if err != err else ("> 13" if np.isinf(err) else f"{err:+.2f}")
        cov = r["covered"]
        cov_s = "–" if cov is None or cov != cov else ("yes" if cov else "no")
        lines.append(
            f"| {r['method']} | {int(r['n_points'])} | {_fmt(r['coverage50'])} | {_fmt(r['coverage80'])} "
            f"| {_fmt(r['coverage90'])} | {_fmt(r['crps'])} | {_fmt(r['mae'])} "
            f"| {_fmt(r['log10_compute_q05'])} / {_fmt(r['log10_compute_q50'])} / {_fmt(r['log10_compute_q95'])} "
            f"| {err_s} | {cov_s} |")
    obs = c["observed_log10_compute"].iloc[0]
    lines.append("")
    lines.append(f"observed crossing: {'not crossed' if obs is None or obs != obs else f'10^{obs:.2f} FLOPs'}")
    return "\n".join(lines)


def fold_markdown(result) -> str:
    """Scores per fold and method, then pooled over folds."""
    lines = ["| fit on | method | points | cov. 50% | cov. 80% | cov. 90% | CRPS (pp) | median abs. err. (pp) |",
             "|---|---|---|---|---|---|---|---|"]
    rows = [(result.splits[int(r["fold"])]["label"], r) for _, r in result.fold_scores.iterrows()]
    rows += [("all folds pooled", r) for _, r in result.scores.iterrows()]
    for label, r in rows:
        lines.append(f"| {label} | {r['method']} | {int(r['n_points'])} | {_fmt(r['coverage50'])} "
                     f"| {_fmt(r['coverage80'])} | {_fmt(r['coverage90'])} | {_fmt(r['crps'])} | {_fmt(r['mae'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(CASES), action="append")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--model", default=None, help="spec of the forecaster method: shipped name or path "
                    "(default: the default spec; e.g. additive)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not SHARED.exists():
        print(f"real data not found at {SHARED}", file=sys.stderr)
        return 2
    for name in args.only or list(CASES):
        case = CASES[name]
        table = case["table"]()
        t0 = time.perf_counter()
        res = backtest(table, holdout_largest=case["holdout_largest"], threshold=args.threshold, seed=args.seed,
                       draws=args.draws, tune=args.tune, chains=args.chains, model=args.model)
        wall = time.perf_counter() - t0
        print(f"\n## {name}: fit on {case['fit']}; forecast {case['predict']}"
              + (f" (forecaster: model {args.model})" if args.model else ""))
        print(f"({len(table)} rows; draws {args.draws}, tune {args.tune}, chains {args.chains}, seed {args.seed}; "
              f"wall {wall:.0f} s: " + ", ".join(f"{k.split('/')[1]} {v:.0f} s" for k, v in res.timings.items())
              + ")\n")
        print(fold_markdown(res) if len(res.splits) > 1 else readme_table(res))
        for fold, d in res.diagnostics.items():
            for m, dd in d.items():
                print(f"\n{m} fit: max R-hat {dd['max_rhat']:.3f}, min ESS bulk {dd['min_ess_bulk']:.0f}, "
                      f"divergences {dd['divergences']}")
        for n in res.notes:
            print(f"note: {n}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(res.to_json_dict(), indent=1, allow_nan=False))
            from forecaster.backtest_plots import plot_backtest

            plot_backtest(res).savefig(args.out / f"{name}.png", dpi=110, bbox_inches="tight")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
