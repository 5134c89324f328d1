"""The cross-process compile cache for nutpie: hits, identical results, clean fallback, keys follow the data."""

from __future__ import annotations

import ctypes
import sys
import warnings

import numpy as np
import pytest

nutpie = pytest.importorskip("nutpie")

from forecaster import compile_cache as cc  # noqa: E402
from forecaster.data import summarize  # noqa: E402
from forecaster.model import build_model  # noqa: E402
from forecaster.spec import load_spec  # noqa: E402


def _forget_loaded_modules() -> None:
    """A new process has no generated module loaded yet: simulate that."""
    for name in [n for n in sys.modules if n.startswith("_forecaster_nutpie_")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def small_model(demo_table):
    """The demo's model on two of its tasks: the real graph, which the equivalence tests need (~30 s to compile)."""
    tasks = sorted(demo_table.task.unique())[:2]
    return build_model(summarize(demo_table[demo_table.task.isin(tasks)]), load_spec(None))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fc-cache")


@pytest.fixture(scope="module")
def compiled(small_model, cache_root):
    """(first compile, second compile) of the same model in one cache directory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = dict(cc.stats)
        notices = []
        first = cc.compile_nutpie(small_model, cache=cache_root, on_compile=lambda: notices.append("first"))
        assert cc.stats["misses"] == before["misses"] + 1
        _forget_loaded_modules()
        second = cc.compile_nutpie(small_model, cache=cache_root, on_compile=lambda: notices.append("second"))
    before["notices"] = notices
    return first, second, before


def _logp(compiled_model, x: np.ndarray) -> tuple[int, float, np.ndarray]:
    """Call the C log-density of a compiled model at ``x``."""
    fn = compiled_model.compiled_logp_func.ctypes
    x = np.ascontiguousarray(x, dtype=float)
    grad = np.zeros_like(x)
    logp = np.zeros(())
    dptr = ctypes.POINTER(ctypes.c_double)
    rc = fn(len(x), x.ctypes.data_as(dptr), grad.ctypes.data_as(dptr), logp.ctypes.data_as(dptr),
            compiled_model.user_data.ctypes.data)
    return rc, float(logp), grad


def test_second_compile_hits_cache(compiled):
    first, second, before = compiled
    assert cc.stats["hits"] == before["hits"] + 1
    assert cc.stats["fallbacks"] == before["fallbacks"]
    assert second.compiled_logp_func._cache_hits == 1
    assert second.n_dim == first.n_dim and second.shapes == first.shapes
    # the compile announced itself (the CLI says why a first fit takes long); the cache hit did not
    assert before["notices"] == ["first"]


@pytest.fixture(scope="module")
def reference(small_model):
    """The same model compiled by nutpie itself (under the same numba flags: no fastmath)."""
    import pytensor

    with warnings.catch_warnings(), pytensor.config.change_flags(numba__fastmath=False):
        warnings.simplefilter("ignore")
        return nutpie.compile_pymc_model(small_model)


def test_cached_logp_matches_nutpie(reference, compiled):
    first, second, _ = compiled
    ref = reference
    x = ref.initial_point_func(0) + 0.1
    rc, lp, grad = _logp(ref, x)
    assert rc == 0 and np.isfinite(lp)
    for c in (first, second):
        rc2, lp2, grad2 = _logp(c, x)
        assert rc2 == 0
        assert lp2 == lp
        np.testing.assert_array_equal(grad2, grad)


def test_same_seed_same_draws(reference, compiled):
    _, second, _ = compiled
    ref = reference
    kw = dict(draws=30, tune=30, chains=2, cores=1, seed=11, progress_bar=False)
    a = nutpie.sample(ref, **kw)
    b = nutpie.sample(second, **kw)
    assert set(a.posterior.data_vars) == set(b.posterior.data_vars)
    for name in a.posterior.data_vars:
        assert a.posterior[name].dims == b.posterior[name].dims
        np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values)


@pytest.fixture(scope="module")
def toy_model():
    """A toy model with one data array: the cache's mechanics (corruption, fallback) do not depend on the
    model, and it compiles in seconds where the demo's two tasks take ~30 s."""
    import pymc as pm

    with pm.Model() as m:
        y = pm.Data("data_y", np.array([0.3, -1.2, 0.8, 2.0]))
        mu = pm.Normal("mu", 0, 1)
        s = pm.HalfNormal("s", 1)
        pm.Normal("obs", mu, s, observed=y)
    return m


@pytest.fixture(scope="module")
def toy_compiled(toy_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-cache")
    _forget_loaded_modules()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = dict(cc.stats)
        compiled = cc.compile_nutpie(toy_model, cache=root)
    assert cc.stats["misses"] == before["misses"] + 1
    return compiled, root


@pytest.mark.parametrize("damage", ["meta.pkl", "*.nbc"])
def test_corrupt_cache_recovers(toy_model, toy_compiled, tmp_path, damage):
    import shutil

    first, cache_root = toy_compiled
    key = cc.model_key(toy_model)
    shutil.copytree(cache_root / key, tmp_path / key)
    damaged = list((tmp_path / key).rglob(damage))
    assert damaged
    for f in damaged:
        f.write_bytes(b"garbage")
    _forget_loaded_modules()
    before = dict(cc.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = cc.compile_nutpie(toy_model, cache=tmp_path)
    assert cc.stats["hits"] + cc.stats["misses"] + cc.stats["fallbacks"] == sum(before.values()) + 1
    assert cc.stats["hits"] == before["hits"]
    x = first.initial_point_func(0) + 0.1
    rc, lp, grad = _logp(c, x)
    assert rc == 0 and np.isfinite(lp)
    assert (rc, lp) == _logp(first, x)[:2]


def test_unusable_cache_dir_falls_back(toy_model, toy_compiled, tmp_path):
    first, _ = toy_compiled
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _forget_loaded_modules()
    before = dict(cc.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        notices = []
        c = cc.compile_nutpie(toy_model, cache=blocker, on_compile=lambda: notices.append(1))
    assert cc.stats["fallbacks"] == before["fallbacks"] + 1
    assert notices == [1]  # the fallback compile announces itself, once
    x = first.initial_point_func(0) + 0.1
    assert _logp(c, x)[:2] == _logp(first, x)[:2]


def _two_tasks(demo_table):
    tasks = sorted(demo_table.task.unique())[:2]
    return demo_table[demo_table.task.isin(tasks)].copy()


def test_key_follows_design_not_values(demo_table, small_model):
    """The key changes with the model's graph (cells, spec), not with the values of its data arrays."""
    sub = _two_tasks(demo_table)
    key = cc.model_key(small_model)
    assert cc.model_key(build_model(summarize(sub), load_spec(None))) == key
    other = sub.copy()
    other.loc[other.index[0], "logprob"] -= 0.5  # one item's score: a value
    assert cc.model_key(build_model(summarize(other), load_spec(None))) == key
    fewer = sub[sub.model != sub.model.iloc[0]]  # one model fewer: other cells
    assert cc.model_key(build_model(summarize(fewer), load_spec(None))) != key
    changed = load_spec(None)
    changed.priors["sigma_cell"] = {"dist": "HalfNormal", "sigma": 0.2}
    assert cc.model_key(build_model(summarize(sub), changed)) != key


def test_new_values_reuse_the_compiled_code(demo_table, small_model, compiled, cache_root, reference):
    """Data of the same design with other values hit the cache, and the code reads *their* values: the log
    density equals nutpie's own compiled code given those data (``with_data``), bit for bit, and differs from
    the first data's."""
    other_table = _two_tasks(demo_table)
    other_table["logprob"] = other_table["logprob"] * 1.01
    other = build_model(summarize(other_table), load_spec(None))
    before = dict(cc.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hit = cc.compile_nutpie(other, cache=cache_root)
    assert cc.stats["hits"] == before["hits"] + 1 and cc.stats["misses"] == before["misses"]
    new_values = {name: v.get_value() for name, v in cc._data_vars(other).items()}
    changed = [n for n, v in cc._data_vars(small_model).items() if not np.array_equal(v.get_value(), new_values[n])]
    assert changed  # the log-prob sums moved
    ref = reference.with_data(**{n: new_values[n] for n in changed})
    x = reference.initial_point_func(0) + 0.1
    rc, lp, grad = _logp(ref, x)
    rc2, lp2, grad2 = _logp(hit, x)
    assert rc == rc2 == 0 and lp2 == lp
    np.testing.assert_array_equal(grad2, grad)
    assert _logp(compiled[0], x)[1] != lp
    # the start vectors are those PyMC gives for this model (stored per data, since they may depend on them)
    meta = {"shape_info": hit.shape_info, "n_free_vars": len(other.free_RVs)}
    want = cc._flat_initial_point_fn(cc._initial_point_fn(other, None, None), meta)(5)
    np.testing.assert_array_equal(hit.initial_point_func(5), want)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FORECASTER_CACHE", str(tmp_path))
    assert cc.cache_dir() == tmp_path
    monkeypatch.setenv("FORECASTER_CACHE", "off")
    assert cc.cache_dir() is None


_CHILD = r"""
import sys, warnings
import numpy as np
warnings.simplefilter("ignore")
import nutpie
from forecaster import compile_cache as cc
from forecaster.data import summarize, validate
from forecaster.model import build_model
from forecaster.simulate import demo_data
from forecaster.spec import load_spec
data = validate(demo_data(), source="demo")
data = data[data.task.isin(sorted(data.task.unique())[:2])]
compiled = cc.compile_nutpie(build_model(summarize(data), load_spec(None)), cache=sys.argv[2])
trace = nutpie.sample(compiled, draws=100, tune=100, chains=2, cores=1, seed=4, progress_bar=False)
np.save(sys.argv[1], trace.posterior["mu_cell"].values)
print(cc.stats["hits"], cc.stats["misses"])
"""


@pytest.mark.slow
def test_first_and_later_process_give_the_same_draws(compiled, cache_root, tmp_path):
    """The process that compiled and filled the cache and a later process loading the code from it sample
    identically (same seed). With numba's fastmath they once did not: the last bits of the log density
    differed, and NUTS turned that into other chains."""
    import os
    import subprocess

    first = compiled[0]
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "later.npy"), str(cache_root)],
                       env=dict(os.environ), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "0"]  # loaded from the cache, nothing compiled
    here = nutpie.sample(first, draws=100, tune=100, chains=2, cores=1, seed=4, progress_bar=False)
    np.testing.assert_array_equal(here.posterior["mu_cell"].values, np.load(tmp_path / "later.npy"))


def test_model_digest_follows_data_and_spec(demo_table):
    """The fit's cache key (a digest of what the pure builder uses) changes with the data and the spec."""
    from forecaster.model import model_digest

    tasks = sorted(demo_table.task.unique())[:2]
    sub = demo_table[demo_table.task.isin(tasks)].copy()
    spec = load_spec(None)
    base = model_digest(summarize(sub), spec)
    assert model_digest(summarize(sub.copy()), load_spec(None)) == base
    other = sub.copy()
    other.loc[other.index[0], "logprob"] -= 0.5  # one item's score
    assert model_digest(summarize(other), spec) != base
    changed = load_spec(None)
    changed.priors["sigma_cell"] = {"dist": "HalfNormal", "sigma": 0.2}
    assert model_digest(summarize(sub), changed) != base


def test_initial_points_stored_per_seed(reference, compiled, cache_root, small_model):
    """A cache hit returns PyMC's start vectors, keeps them per seed, and reads them back without PyMC; the
    compiling process stores the vectors it uses too."""
    first, second, _ = compiled
    entry = cache_root / cc.model_key(small_model)
    np.testing.assert_array_equal(first.initial_point_func(9), reference.initial_point_func(9))
    settings = cc._initial_settings(small_model, None, None)
    assert settings != cc._initial_settings(small_model, None, None, inputs="other data")
    assert cc._StoredInitialPoints(entry, None, settings).path(9).is_file()
    for seed in (3, 4):
        np.testing.assert_array_equal(second.initial_point_func(seed), reference.initial_point_func(seed))
    assert len(list(entry.glob("init-*.npy"))) >= 2

    def must_not_build():
        raise AssertionError("built the initial-point function although the vector was stored")

    stored = cc._StoredInitialPoints(entry, must_not_build, settings)
    np.testing.assert_array_equal(stored(3), reference.initial_point_func(3))
    # other settings (an override) are another key: not read from these files
    other = cc._StoredInitialPoints(entry, must_not_build, cc._initial_settings(small_model, {"sigma_item": [1.0, 1.0]}, None))
    with pytest.raises(AssertionError, match="built the initial-point function"):
        other(3)


def test_graph_function_is_inlined_into_the_entry_points():
    """pytensor's graph function is handed to the entry points as an inlined dispatcher (typed and emitted
    once; see ``_inlined``), with or without pytensor's wrapper; anything without a Python function behind it
    is returned as it is."""
    from types import SimpleNamespace

    import pytensor
    import pytensor.tensor as pt

    x = pt.dvector("x")
    f = pytensor.function([x], [(x**2).sum(), 2 * x], mode="NUMBA")
    inner = cc._inlined(f)
    assert inner is not f.vm.jit_fn
    assert inner.targetoptions.get("inline") == "always"
    v = np.arange(3.0)
    got, want = inner(v), f.vm.jit_fn(v)
    assert got[0] == want[0] == 5.0
    np.testing.assert_array_equal(got[1], want[1])

    # pytensor's numba cache off: no wrapper, the graph's function itself is inlined
    with pytensor.config.change_flags(numba__cache=False):
        g = pytensor.function([x], [(x**2).sum()], mode="NUMBA")
    inner = cc._inlined(g)
    assert inner.targetoptions.get("inline") == "always" and inner.py_func is g.vm.jit_fn.py_func
    assert inner(v)[0] == 5.0
    opaque = SimpleNamespace(vm=SimpleNamespace(jit_fn=object()))
    assert cc._inlined(opaque) is opaque.vm.jit_fn
