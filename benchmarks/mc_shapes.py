"""Which curve does multiple-choice accuracy follow in log compute? Straight lines, per task and family.

On the llm-line multiple-choice tasks (ARC-E/C, HellaSwag, PIQA, Winogrande; Pythia, GPT-Neo, Mamba,
Mamba-2; ``acc``), a straight line in log10 compute is fitted, per (task, family), to three transforms
of accuracy, each the curve of one observation model with a latent linear in log compute:

* ``exact-match``: log(-log acc), accuracy exp(-CE) with log CE linear (the exact-match model without
  item spread or floor);
* ``above-chance logistic``: log((acc - 1/n) / (1 - acc)), a logistic from the chance floor 1/n;
* ``gold-vs-wrong``: log of the margin d at which E_z[Phi(z + d)^(n-1)] = acc, the chance that the gold
  option outscores n - 1 wrong ones (floor 1/n reached only at d = 0), with log d linear.

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
    d = pd.read_csv(DATA)
    d = d[(d.metric == "acc") & d.task.isin(list(N_CHOICES)) & ~d.family.str.startswith("hf-ablation")]
    for held in (0, 1, 2):
        errs: dict[str, list[float]] = {}
        for (task, _), g in d.groupby(["task", "family"]):
            g = g.sort_values("compute_flops")
            x, y, n = np.log10(g.compute_flops.to_numpy()), g.value.to_numpy(), N_CHOICES[task]
            fit = slice(None, len(x) - held) if held else slice(None)
            test = slice(len(x) - held, None) if held else slice(None)
            out = forecasts(x[fit], y[fit], x[test], n)
            if len(out) < 3:  # compare the three on the same points
                continue
            for name, p in out.items():
                errs.setdefault(name, []).extend(100 * np.abs(p - y[test]))
        what = "in sample" if not held else f"{held} largest held out"
        print(f"{what}: accuracy |error| (pp), mean / median over (task, family) points")
        for name, e in errs.items():
            print(f"  {name:22s} {np.mean(e):6.2f} / {np.median(e):5.2f}  ({len(e)} points)")


if __name__ == "__main__":
    main()
