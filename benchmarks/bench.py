"""Speed figures (printed, not asserted): demo fit cold/warm, forecast from a saved fit, ESS/s, items-per-cell scaling.

Run: .venv/bin/python benchmarks/bench.py  (targets on 2 cores: demo fit < 12 s cold, < 5 s warm; forecast < 1 s)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import forecaster as fc
t_import = time.perf_counter() - t0
data = fc.demo_data()
t1 = time.perf_counter()
res = fc.fit(data, seed=1, sampler=sys.argv[1])
t_fit = time.perf_counter() - t1
fc.save_fit(res, sys.argv[2])
print(f"{t_import:.2f} {t_fit:.2f} {res.diagnostics.min_ess_bulk:.0f}")
"""


def fit_in_fresh_process(sampler: str, out: Path) -> tuple[float, float, float]:
    r = subprocess.run([sys.executable, "-c", CHILD, sampler, str(out)], capture_output=True, text=True, check=True)
    imp, fit_s, ess = map(float, r.stdout.split()[-3:])
    return imp, fit_s, ess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samplers", default="nutpie,pymc")
    ap.add_argument("--scaling", action="store_true", help="also time fits as items per cell grow 10x")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("demo fit (4 chains x 1000 draws + 1000 tune, fresh process each):")
    for sampler in args.samplers.split(","):
        cold = fit_in_fresh_process(sampler, tmp / "fit.nc")
        warm = fit_in_fresh_process(sampler, tmp / "fit.nc")
        print(f"  {sampler:7s} cold: import {cold[0]:.1f} s + fit {cold[1]:.1f} s; warm: import {warm[0]:.1f} s + "
              f"fit {warm[1]:.1f} s; min bulk ESS {warm[2]:.0f} -> {warm[2] / warm[1]:.0f} ESS/s")

    import forecaster as fc

    t0 = time.perf_counter()
    res = fc.load_fit(tmp / "fit.nc")
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    fc.forecast(res, metric="exact_match", threshold=0.5, budget=1e24, at=[1e22, 1e24])
    t_fc = time.perf_counter() - t0
    print(f"forecast from saved fit: load {t_load:.2f} s + forecast {t_fc:.2f} s "
          f"({res.diagnostics.n_samples} draws x {len(res.cells.tasks)} tasks x 4 combos)")

    if args.scaling:
        from forecaster.simulate import TaskTruth, simulate

        print("fit time as items per cell grow (per-item data, 4 tasks x 6 models, nutpie, 2 x 500):")
        for n_items in (50, 500, 5000):
            tasks = [TaskTruth(f"t{i}", a=0.2 * i, b=-0.4, kind="item") for i in range(4)]
            sc = simulate(tasks, n_items=n_items, seed=1)
            t0 = time.perf_counter()
            table = fc.validate(sc.data)
            t_val = time.perf_counter() - t0
            t0 = time.perf_counter()
            fc.fit(table, seed=1, draws=500, tune=500, chains=2)
            print(f"  {n_items:5d} items/cell ({len(sc.data):7d} rows): validate {t_val:.2f} s, "
                  f"fit {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
