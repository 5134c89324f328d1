"""Speed figures (printed, not asserted): demo fit cold/warm, forecast from a saved fit, ESS/s, items-per-cell scaling.

Run: .venv/bin/python benchmarks/bench.py  (targets on 2 cores: demo fit < 12 s cold, < 5 s warm; forecast < 1 s)

Each fit runs in a fresh Python process. "Cold, all caches empty" starts with a new
``FORECASTER_CACHE`` and a new pytensor compile directory (pytensor's numba
kernels compile from scratch: a first install); "new values" fits
the demo with its log-probs moved by up to 1% in the caches of the first run (the same
design: the compiled code of the demo applies, with the new data read at run time);
"cold, new design" fits those data without the demo's first model in an empty
``FORECASTER_CACHE`` (nothing compiled for this model applies; pytensor's per-op
kernels are the user's); "warm" is a later fresh process with the caches of the first.
Import time is reported apart from fit time. ``--repeat N`` repeats the warm
fit and reports the minimum (timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import forecaster as fc
import forecaster.compile_cache as cc
t_import = time.perf_counter() - t0
spent = {"compile": 0.0}
_compile = cc.compile_nutpie
def timed_compile(*a, **k):
    t = time.perf_counter()
    try:
        return _compile(*a, **k)
    finally:
        spent["compile"] += time.perf_counter() - t
cc.compile_nutpie = timed_compile
sampler, out, draws, tune, salt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
data = fc.demo_data()
if salt:  # new values: the demo's log-probs moved by up to 1%, relative (the demo's design)
    import numpy as np
    data["logprob"] = data["logprob"] * (1 + 1e-2 * np.random.default_rng(abs(salt)).random(len(data)))
if salt < 0:  # new design as well: without the demo's first model (other cells)
    data = data[data.model != sorted(data.model.unique())[0]]
t1 = time.perf_counter()
res = fc.fit(data, seed=1, sampler=sampler, draws=draws, tune=tune)
t_fit = time.perf_counter() - t1
fc.save_fit(res, out)
post = res.tree["posterior"]
d = res.diagnostics
print(json.dumps(dict(
    import_s=t_import, fit_s=t_fit, compile_s=spent["compile"], sample_s=float(post.attrs.get("sampling_time", "nan")),
    cache=dict(cc.stats), ess=min(d.min_ess_bulk, d.min_ess_tail), rhat=d.max_rhat, div=d.divergences,
)))
"""


def fit_in_fresh_process(sampler: str, out: Path, env: dict, draws: int, tune: int, salt: int = 0) -> dict:
    """One demo fit in a new interpreter (``salt`` > 0: new values, < 0: new design); timings and diagnostics."""
    r = subprocess.run([sys.executable, "-c", CHILD, sampler, str(out), str(draws), str(tune), str(salt)],
                       capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def fresh_cache_env(root: Path) -> dict:
    """Environment with empty forecaster and pytensor (numba) caches under ``root``."""
    env = dict(os.environ)
    env["FORECASTER_CACHE"] = str(root / "forecaster")
    flags = [f for f in env.get("PYTENSOR_FLAGS", "").split(",") if f and not f.startswith("base_compiledir")]
    env["PYTENSOR_FLAGS"] = ",".join([*flags, f"base_compiledir={root / 'pytensor'}"])
    return env


def line(label: str, r: dict) -> str:
    return (f"    {label}: import {r['import_s']:.1f} s | fit {r['fit_s']:.1f} s (compile {r['compile_s']:.1f} s, "
            f"sample {r['sample_s']:.1f} s) | min ESS {r['ess']:.0f}, R-hat {r['rhat']:.3f}, {r['div']} div "
            f"-> {r['ess'] / r['fit_s']:.0f} ESS/s | cache {r['cache']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samplers", default="nutpie", help="comma-separated: nutpie,pymc,numpyro")
    ap.add_argument("--repeat", type=int, default=3, help="warm fits per sampler (minimum and median reported)")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--scaling", action="store_true", help="also time fits as items per cell grow 10x")
    ap.add_argument("--only-scaling", action="store_true", help="time only the fits as items per cell grow")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fc-bench-"))
    import forecaster as fc  # the fits themselves run in fresh processes; this one loads, forecasts and scales

    try:
        if not args.only_scaling:
            print(f"demo fit (4 chains x {args.draws} draws + {args.tune} tune, fresh process each, "
                  f"{os.cpu_count()} cores):")
            for sampler in args.samplers.split(","):
                env = fresh_cache_env(tmp / sampler)
                cold = fit_in_fresh_process(sampler, tmp / "fit.nc", env, args.draws, args.tune)
                salt = time.time_ns() % 2**31 + 1
                # new values, the demo's design: the demo's compiled code applies
                new_values = fit_in_fresh_process(sampler, tmp / "other.nc", env, args.draws, args.tune, salt=salt)
                # new design: pytensor's per-op kernels as the user has them, nothing compiled for this model
                env_model = dict(os.environ, FORECASTER_CACHE=str(tmp / sampler / "forecaster-2"))
                cold_model = fit_in_fresh_process(sampler, tmp / "other.nc", env_model, args.draws, args.tune,
                                                  salt=-salt)
                warm = [fit_in_fresh_process(sampler, tmp / "fit.nc", env, args.draws, args.tune)
                        for _ in range(max(1, args.repeat))]
                print(f"  {sampler}")
                print(line("cold, all caches empty", cold))
                print(line("new values, the demo's design (its code cached)", new_values))
                print(line("cold, new design (pytensor's kernels cached)", cold_model))
                print(line(f"warm (min of {len(warm)})", min(warm, key=lambda r: r["fit_s"])))
                times = sorted(r["fit_s"] for r in warm)
                print(f"    warm fit times: {', '.join(f'{t:.2f}' for t in times)} s (median {np.median(times):.2f} s)")

            t0 = time.perf_counter()
            res = fc.load_fit(tmp / "fit.nc")
            t_load = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fc.forecast(res, metric="exact_match", threshold=0.5, budget=1e24, at=[1e22, 1e24])
                times.append(time.perf_counter() - t0)
            print(f"forecast from saved fit: load {t_load:.2f} s + forecast {min(times):.2f} s (min of 3; "
                  f"{res.diagnostics.n_samples} draws x {len(res.cells.tasks)} tasks)")

        if args.scaling or args.only_scaling:
            import forecaster.compile_cache as cc
            from forecaster.simulate import TaskTruth, simulate

            print("fit time as items per cell grow 10x (per-item data, 4 tasks x 6 models, nutpie, 2 x 500; "
                  "each fit twice, in this process: the first may compile, the second is warm):")
            for n_items in (50, 500, 5000):
                # slopes that differ by task and cells that deviate from the trend (a truth with neither sits
                # at the funnel's neck: 41 divergences at 500 items/cell, 161 leapfrog steps at 5000)
                tasks = [TaskTruth(f"t{i}", a=0.2 * i, b=b, kind="item")
                         for i, b in enumerate((-0.3, -0.4, -0.5, -0.35))]
                sc = simulate(tasks, n_items=n_items, seed=1, sigma_cell=0.1)
                t0 = time.perf_counter()
                table = fc.validate(sc.data)
                t_val = time.perf_counter() - t0
                fits = []
                for _ in range(2):
                    misses = cc.stats["misses"]
                    t0 = time.perf_counter()
                    res = fc.fit(table, seed=1, draws=500, tune=500, chains=2)
                    fits.append((time.perf_counter() - t0, cc.stats["misses"] > misses,
                                 float(res.tree["posterior"].attrs.get("sampling_time", "nan"))))
                (t1, compiled, _), (t2, _, s2) = fits
                d = res.diagnostics
                steps = float(res.tree["sample_stats"]["n_steps"].mean())
                print(f"  {n_items:5d} items/cell ({len(sc.data):7d} rows): validate {t_val:.2f} s, "
                      f"fit {t1:.1f} s{' (compiled)' if compiled else ''}, again {t2:.1f} s (sampling {s2:.1f} s, "
                      f"{steps:.0f} leapfrog steps per draw; R-hat {d.max_rhat:.3f}, ESS {d.min_ess_bulk:.0f}, "
                      f"{d.divergences} div)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
