"""Which curve does multiple-choice accuracy follow in log compute? Straight lines, per task and family.

On the llm-line multiple-choice tasks (ARC-E/C, HellaSwag, PIQA, Winogrande; Pythia, GPT-Neo, Mamba,
Mamba-2; ``acc``), a straight line in log10 compute is fitted, per (task, family), to three transforms
of accuracy, each the curve of one observation model with a latent linear in log compute:

* ``exact-match``: log(-log acc), accuracy exp(-CE) with log CE linear (the exact-match model without
  item spread or floor);
* ``above-chance logistic``: log((acc - 1/n) / (1 - acc)), a logistic from the chance floor 1/n;
* ``gold-vs-wrong``: log of the margin d at which E_z[Phi(z + d)^(n-1)] = acc, the chance that the gold
  option outscores n - 1 wrong ones (floor 1/n reached only at d = 0), with log d linear.

And one forecast through the task loss the file also holds (``gold_ce_nats_per_token``, the gold
option's cross-entropy per token): ``via gold CE``, a straight line of log gold CE in log10 compute per
(task, family), read as accuracy through a line of logit(acc) in log gold CE per task, fitted on the
training models of every family (the smooth quantity forecast, then the metric; Schaeffer et al. 2023);
``link, observed CE`` reads the held-out models' own loss through that line (the route's floor of error).

It prints the accuracy error of each line in sample, and when the family's 1 or 2 largest models are
held out (fit on the rest). Run from the repository root::

    .venv/bin/python benchmarks/mc_shapes.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import norm

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_line_mc.csv.gz"
N_CHOICES = {"arc_easy": 4, "arc_challenge": 4, "hellaswag": 4, "piqa": 2, "winogrande": 2}
_Z, _W = np.polynomial.hermite_e.hermegauss(40)
_W = _W / _W.sum()


def gold_vs_wrong(d: np.ndarray, n: int) -> np.ndarray:
    """Accuracy when the gold option's score is d above n - 1 wrong ones, all with unit normal noise."""
    d = np.atleast_1d(d)
    return (_W * norm.cdf(_Z + d[:, None]) ** (n - 1)).sum(axis=1)


def _margin(p: float, n: int) -> float:
    return brentq(lambda d: gold_vs_wrong(np.array([d]), n)[0] - p, -5.0, 30.0)


def forecasts(x: np.ndarray, y: np.ndarray, xh: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Each transform's straight line through (x, y), read back as accuracy at xh."""
    above = y > 1 / n + 0.005  # the chance-based transforms need accuracy above chance
    out = {}
    c = np.polyfit(x, np.log(-np.log(y)), 1)
    out["exact-match"] = np.exp(-np.exp(np.polyval(c, xh)))
    if above.sum() >= 2:
        c = np.polyfit(x[above], np.log((y[above] - 1 / n) / (1 - y[above])), 1)
        out["above-chance logistic"] = 1 / n + (1 - 1 / n) / (1 + np.exp(-np.polyval(c, xh)))
        c = np.polyfit(x[above], np.log([_margin(p, n) for p in y[above]]), 1)
        out["gold-vs-wrong"] = gold_vs_wrong(np.exp(np.polyval(c, xh)), n)
    return out


def main() -> None:
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this benchmark reads ../shared/data")
    raw = pd.read_csv(DATA)
    raw = raw[raw.task.isin(list(N_CHOICES)) & ~raw.family.str.startswith("hf-ablation")]
    d = raw.pivot_table(index=["task", "family", "model", "compute_flops"], columns="metric", values="value")
    d = d.reset_index().rename(columns={"gold_ce_nats_per_token": "gold_ce"}).dropna(subset=["acc", "gold_ce"])
    for held in (0, 1, 2):
        # each family's `held` largest models are the test set, for every line and for the loss-to-accuracy map
        rank = d.groupby(["task", "family"]).compute_flops.rank(ascending=False, method="first")
        train = d[rank > held] if held else d
        link = {t: np.polyfit(np.log(g.gold_ce), np.log(g.acc / (1 - g.acc)), 1) for t, g in train.groupby("task")}
        errs: dict[str, list[float]] = {}
        for (task, _), g in d.groupby(["task", "family"]):
            g = g.sort_values("compute_flops")
            x, y, n = np.log10(g.compute_flops.to_numpy()), g.acc.to_numpy(), N_CHOICES[task]
            fit = slice(None, len(x) - held) if held else slice(None)
            test = slice(len(x) - held, None) if held else slice(None)
            out = forecasts(x[fit], y[fit], x[test], n)
            if len(out) < 3:  # compare the methods on the same points
                continue
            c = np.polyfit(x[fit], np.log(g.gold_ce.to_numpy()[fit]), 1)
            out["via gold CE"] = 1 / (1 + np.exp(-np.polyval(link[task], np.polyval(c, x[test]))))
            if held:  # the link alone: the held-out models' own loss read as accuracy (the best the route can do)
                out["link, observed CE"] = 1 / (1 + np.exp(-np.polyval(link[task], np.log(g.gold_ce.to_numpy()[test]))))
            for name, p in out.items():
                errs.setdefault(name, []).extend(100 * np.abs(p - y[test]))
        what = "in sample" if not held else f"{held} largest held out"
        print(f"{what}: accuracy |error| (pp), mean / median over (task, family) points")
        for name, e in errs.items():
            print(f"  {name:22s} {np.mean(e):6.2f} / {np.median(e):5.2f}  ({len(e)} points)")


if __name__ == "__main__":
    main()
