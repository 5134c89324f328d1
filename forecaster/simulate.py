"""Deterministic synthetic scenarios with known truth (Schaeffer et al. 2023 with item heterogeneity).

Each item ``i`` of task ``t`` evaluated on model ``m`` has per-token cross-entropy

    log CE = a_t + a_family + da_setting + (b_t + db_setting) * (log10 C - c0) + u_i + e_im

with persistent item difficulty ``u_i ~ N(0, sqrt(rho) * sigma_item)`` and item-by-model
noise ``e_im ~ N(0, sqrt(1 - rho) * sigma_item)``. A k-token answer has log-prob
``-k * CE`` and is an exact match with probability ``exp(-k * CE)``.

The embedded demo dataset (:func:`demo_data`) is one such scenario; the test
suite uses :func:`simulate` to check parameter recovery and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["TaskTruth", "Scenario", "simulate", "demo_scenario", "demo_data"]


@dataclass(frozen=True)
class TaskTruth:
    name: str
    a: float  # log CE of the typical item at 10**c0 FLOPs
    b: float  # change of log CE per decade of compute
    sigma_item: float = 1.0
    persistence: float = 0.7
    k: int = 5
    kind: str = "item"  # "item" (per-item logprob + correct), "aggregate" (ce + n_correct), "accuracy"
    guess_rate: float = 0.0  # exact-match floor: an answer is right by luck with this probability


@dataclass
class Scenario:
    data: pd.DataFrame
    tasks: list[TaskTruth]
    family_offsets: dict[str, float]
    setting_effects: dict[str, tuple[float, float]]  # setting -> (da, db)
    c0: float
    extra: dict = field(default_factory=dict)

    def truth_mu(self, task: str, family: str, setting: str, log10_compute) -> np.ndarray:
        """True log CE of the typical item (the trend, no cell deviation)."""
        tt = next(x for x in self.tasks if x.name == task)
        da, db = self.setting_effects.get(setting, (0.0, 0.0))
        return tt.a + self.family_offsets[family] + da + (tt.b + db) * (np.asarray(log10_compute) - self.c0)

    def truth_line(self, task: str, family: str, setting: str) -> tuple[float, float, float]:
        """(intercept, slope, sigma_item) of the true log-CE trend at ``x - c0``."""
        tt = next(x for x in self.tasks if x.name == task)
        da, db = self.setting_effects.get(setting, (0.0, 0.0))
        return tt.a + self.family_offsets[family] + da, tt.b + db, tt.sigma_item


def simulate(
    tasks: list[TaskTruth],
    *,
    family_offsets: dict[str, float] | None = None,
    setting_effects: dict[str, tuple[float, float]] | None = None,
    log10_compute: dict[str, list[float]] | None = None,
    n_items: int = 200,
    c0: float = 20.0,
    sigma_cell: float = 0.0,
    seed: int = 0,
) -> Scenario:
    """Simulate a tidy table with known truth.

    Parameters
    ----------
    tasks : list of TaskTruth
    family_offsets : dict family -> intercept offset (default one family ``sim``).
    setting_effects : dict setting -> (da, db) (default one setting ``0-shot``).
    log10_compute : dict family -> list of log10 compute of its models.
    n_items : items per task (the same items at every model).
    c0 : centre of the truth's log10 compute.
    sigma_cell : sd of cell deviations from the trend.
    seed : random seed (the output is a deterministic function of all arguments).
    """
    rng = np.random.default_rng(seed)
    family_offsets = family_offsets or {"sim": 0.0}
    setting_effects = setting_effects or {"0-shot": (0.0, 0.0)}
    log10_compute = log10_compute or {f: [18.0, 18.5, 19.0, 19.5, 20.0, 20.5] for f in family_offsets}
    rows = []
    for tt in tasks:
        u = rng.normal(0.0, np.sqrt(tt.persistence) * tt.sigma_item, n_items)
        u -= u.mean()
        for fam, off in family_offsets.items():
            for x in log10_compute[fam]:
                model = f"{fam}-{x:g}"
                for setting, (da, db) in setting_effects.items():
                    mu = tt.a + off + da + (tt.b + db) * (x - c0) + rng.normal(0.0, sigma_cell)
                    e = rng.normal(0.0, np.sqrt(1.0 - tt.persistence) * tt.sigma_item, n_items)
                    ce = np.exp(mu + u + e)
                    correct = rng.random(n_items) < tt.guess_rate + (1.0 - tt.guess_rate) * np.exp(-tt.k * ce)
                    base = {"family": fam, "model": model, "task": tt.name, "setting": setting,
                            "compute": float(10.0**x)}
                    if tt.kind == "item":
                        for i in range(n_items):
                            rows.append({**base, "item": f"{tt.name}-{i}", "n_tokens": tt.k,
                                         "logprob": -tt.k * ce[i], "correct": int(correct[i])})
                    elif tt.kind == "aggregate":
                        rows.append({**base, "n_items": n_items, "n_tokens": tt.k, "ce": float(ce.mean()),
                                     "n_correct": int(correct.sum())})
                    elif tt.kind == "accuracy":
                        rows.append({**base, "n_items": n_items, "n_tokens": tt.k,
                                     "accuracy": float(correct.mean())})
                    else:
                        raise ValueError(f"unknown kind {tt.kind!r}")
    cols = ["family", "model", "task", "setting", "compute", "item", "n_tokens", "logprob", "correct",
            "n_items", "ce", "n_correct", "accuracy"]
    df = pd.DataFrame(rows)
    df = df[[c for c in cols if c in df.columns]]
    return Scenario(df, list(tasks), dict(family_offsets), dict(setting_effects), c0)


def demo_scenario() -> Scenario:
    """The embedded demo: 4 tasks (flat and steep; per-item, aggregate and accuracy-only), 2 families, 2 settings."""
    tasks = [
        TaskTruth("arith-steep", a=0.3, b=-0.55, sigma_item=0.8, k=4, kind="item"),
        TaskTruth("qa-flat", a=-0.6, b=-0.18, sigma_item=1.2, k=3, kind="item"),
        TaskTruth("copy-agg", a=-0.2, b=-0.35, sigma_item=1.0, k=6, kind="aggregate"),
        TaskTruth("logic-acc", a=0.4, b=-0.45, sigma_item=0.9, k=2, kind="accuracy"),
    ]
    return simulate(
        tasks,
        family_offsets={"alpha": 0.1, "beta": -0.1},
        setting_effects={"0-shot": (0.0, 0.0), "5-shot": (-0.3, -0.04)},
        log10_compute={"alpha": [18.0, 18.6, 19.2, 19.8, 20.4], "beta": [18.3, 19.0, 19.7, 20.4]},
        n_items=60,
        c0=19.5,
        sigma_cell=0.05,
        seed=20231,
    )


def demo_data() -> pd.DataFrame:
    """The embedded default dataset used by ``forecaster demo`` (deterministic)."""
    return demo_scenario().data
