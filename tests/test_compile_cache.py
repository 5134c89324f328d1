"""The cross-process compile cache for nutpie: hits, identical results, keys follow the data; every fallback
says why in one line (and the fit records it); entries others could have written are refused; ``with_data``
works on models from the cache."""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

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


def _toy_root(toy_model, toy_compiled, tmp_path) -> tuple[Path, Path]:
    """A private cache folder (as the cache makes one: ``0700``) holding a copy of the toy model's entry."""
    _, cache_root = toy_compiled
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    entry = root / cc.model_key(toy_model)
    shutil.copytree(cache_root / entry.name, entry)
    return root, entry


def _compile(model, root, **kw) -> tuple[object, list[str]]:
    """``compile_nutpie`` into ``root``; returns the model and, in order, each problem line and ``"<compile>"``."""
    events: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cc.compile_nutpie(model, cache=root, on_compile=lambda: events.append("<compile>"),
                                on_problem=events.append, **kw)
    return out, events


@pytest.mark.parametrize("damage", ["meta.pkl", "*.nbc", "versions"])
def test_damaged_entry_is_replaced_and_said(toy_model, toy_compiled, tmp_path, damage):
    """An unreadable, stale or undecodable entry is removed and compiled again, and one line says so."""
    first, _ = toy_compiled
    root, entry = _toy_root(toy_model, toy_compiled, tmp_path)
    if damage == "versions":
        meta = pickle.loads((entry / "meta.pkl").read_bytes())
        meta["versions"] = (*meta["versions"][:-1], "nutpie 0.0")
        (entry / "meta.pkl").write_bytes(pickle.dumps(meta))
    else:
        damaged = list(entry.rglob(damage))
        assert damaged
        for f in damaged:
            f.write_bytes(b"garbage")
    _forget_loaded_modules()
    before = dict(cc.stats)
    c, events = _compile(toy_model, root)
    assert cc.stats["misses"] == before["misses"] + 1  # compiled again, into the cache
    assert cc.stats["hits"] == before["hits"] and cc.stats["fallbacks"] == before["fallbacks"]
    want = {"meta.pkl": "was unreadable (meta.pkl: ", "*.nbc": "its compiled code did not load (",
            "versions": "was written for other package versions"}[damage]
    assert len(events) == 2 and events[1] == "<compile>", events
    assert events[0].startswith(f"compile cache entry {entry}") and want in events[0]
    assert events[0].endswith("removed, compiling it again") and "\n" not in events[0]
    x = first.initial_point_func(0) + 0.1
    rc, lp, grad = _logp(c, x)
    assert rc == 0 and np.isfinite(lp)
    assert (rc, lp) == _logp(first, x)[:2]
    _forget_loaded_modules()  # the entry is whole again
    assert _compile(toy_model, root)[1] == []


@pytest.fixture(scope="module")
def toy_fallback(toy_model, tmp_path_factory):
    """The toy model compiled where the cache folder is unusable (a file): nutpie's own compile, which the cache
    falls back to (the reference of the ``with_data`` test), and what was said."""
    blocker = tmp_path_factory.mktemp("blocked") / "file"
    blocker.write_text("not a directory")
    _forget_loaded_modules()
    before = dict(cc.stats)
    c, events = _compile(toy_model, blocker)
    assert cc.stats["fallbacks"] == before["fallbacks"] + 1 and cc.stats["hits"] == before["hits"]
    return c, events, blocker


def test_unusable_cache_dir_falls_back(toy_compiled, toy_fallback):
    """A plain compile when the cache folder is a file: the same model, one line saying why, announced once."""
    first, _ = toy_compiled
    c, events, blocker = toy_fallback
    assert type(c) is nutpie.compile_pymc.CompiledPyMCModel  # nutpie's own
    assert events == [f"compile cache not used: cache folder {blocker} is not a folder; set FORECASTER_CACHE to a "
                      "folder (or 'off')", "<compile>"]  # why, then the compile announces itself, once
    x = first.initial_point_func(0) + 0.1
    assert _logp(c, x)[:2] == _logp(first, x)[:2]


@pytest.fixture
def plain_compile(monkeypatch):
    """``nutpie.compile_pymc_model`` replaced by a stub: the fallback tests check that it is taken and why, and
    ``test_unusable_cache_dir_falls_back`` that what it gives is right."""
    calls = []

    def fake(model, **kw):
        calls.append(model)
        return "plain"

    monkeypatch.setattr(nutpie, "compile_pymc_model", fake)
    return calls


def _assert_fell_back(events: list[str], before: dict, calls: list, *parts: str) -> str:
    assert cc.stats["fallbacks"] == before["fallbacks"] + 1 and cc.stats["hits"] == before["hits"]
    assert len(calls) == 1
    # one line, and one compile notice: the line first, unless it failed while compiling into the cache
    assert len(events) == 2 and events.count("<compile>") == 1, events
    line = next(e for e in events if e != "<compile>")
    assert (events[0] == "<compile>") == ("compiling the model into the cache" in line), events
    assert line.startswith("compile cache not used: ") and "\n" not in line
    for part in parts:
        assert part in line, line
    return line


def _other_uid() -> int:
    if not hasattr(os, "chown") or os.getuid() != 0:
        pytest.skip("needs root to give a file to another user")
    return 54321


def _sticky(path: Path) -> None:
    os.chmod(path, 0o1777)


_UNSAFE = {
    # what is done to the copied entry (or its folder) -> what the line says
    "root group-writable": (lambda root, entry: os.chmod(root, 0o770), "writable by group (mode 770)"),
    "root world-writable": (lambda root, entry: os.chmod(root, 0o707), "writable by others (mode 707)"),
    "root of another user": (lambda root, entry: os.chown(root, _other_uid(), -1), "belongs to uid 54321"),
    "entry writable": (lambda root, entry: os.chmod(entry, 0o777), "writable by group and others"),
    "meta group-writable": (lambda root, entry: os.chmod(entry / "meta.pkl", 0o660), "meta.pkl is writable by group"),
    "module of another user": (lambda root, entry: os.chown(next(entry.glob("*.py")), _other_uid(), -1),
                               "belongs to uid 54321"),
    "numba file world-writable": (lambda root, entry: os.chmod(next(entry.rglob("*.nbi")), 0o646),
                                  "writable by others"),
    "symbolic link": (lambda root, entry: os.symlink("/etc/hostname", entry / "init-0.npy"), "is a symbolic link"),
    "entry of another user in a sticky folder": (
        lambda root, entry: (_sticky(root), os.chown(entry, _other_uid(), -1)), "belongs to uid 54321"),
}


@pytest.mark.parametrize("case", list(_UNSAFE))
def test_entries_others_could_write_are_refused(toy_model, toy_compiled, tmp_path, plain_compile, case):
    """The cache runs pickles and code from its folder: nothing of an entry another user could have written (or
    whose folder another user could write) is loaded; a plain compile, and one line says why and what to do."""
    root, entry = _toy_root(toy_model, toy_compiled, tmp_path)
    damage, says = _UNSAFE[case]
    damage(root, entry)
    _forget_loaded_modules()
    before = dict(cc.stats)
    compiled, events = _compile(toy_model, root)
    assert compiled == "plain"
    line = _assert_fell_back(events, before, plain_compile, says)
    if case in ("root group-writable", "root world-writable"):
        assert line.endswith(f"run 'chmod go-w {root}'")
    assert not [n for n in sys.modules if n.startswith("_forecaster_nutpie_")]  # its module was not run
    assert (entry / "meta.pkl").exists()  # and it was left as it was


def test_numba_cache_folder_elsewhere_is_checked(toy_model, toy_compiled, tmp_path, plain_compile, monkeypatch):
    """With ``NUMBA_CACHE_DIR`` numba keeps the entry's machine code there: that folder is checked too."""
    from numba.core import caching, config

    root, entry = _toy_root(toy_model, toy_compiled, tmp_path)
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "numba"))
    [where] = cc._numba_dirs(entry, entry.name)
    locator = getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator
    assert locator(lambda: None, str(next(entry.glob("*.py")))).get_cache_path() == str(where)  # numba's own
    where.mkdir(parents=True)
    os.chmod(where, 0o777)
    _forget_loaded_modules()
    before = dict(cc.stats)
    _, events = _compile(toy_model, root)
    _assert_fell_back(events, before, plain_compile, f"cache entry {where} is writable by group and others")


def test_sticky_shared_folder_is_used(toy_model, toy_compiled, tmp_path):
    """A folder anyone may write with the sticky bit (as /tmp) is fine: others cannot replace your entries."""
    root, _ = _toy_root(toy_model, toy_compiled, tmp_path)
    _sticky(root)
    _forget_loaded_modules()
    before = dict(cc.stats)
    _, events = _compile(toy_model, root)
    assert events == [] and cc.stats["hits"] == before["hits"] + 1


def test_fallback_reasons(toy_model, toy_compiled, tmp_path, plain_compile, monkeypatch):
    """Each way the cache can be unusable gives a plain compile and one line saying why."""
    def fails(*_a, **_k):
        raise RuntimeError("boom\nsecond line of the error")

    cases = []
    parent = tmp_path / "a-file"
    parent.write_text("")
    cases.append((parent / "cache", None, "creating the cache folder", "failed (Not a directory: "))

    def readonly(mp):
        real = os.access
        mp.setattr(os, "access", lambda p, mode, **kw: False if Path(p).name == "empty" else real(p, mode, **kw))
    cases.append((tmp_path / "empty", readonly, "cache folder", "is not writable by you"))
    cases.append((tmp_path / "c1", lambda mp: mp.setattr(cc, "_NUTPIE_API", (*cc._NUTPIE_API, "_gone")),
                  f"nutpie {nutpie.__version__} lacks nutpie.compile_pymc._gone, which the cache builds on"))
    cases.append((tmp_path / "c2", lambda mp: mp.setattr(cc, "model_key", fails),
                  "hashing the model failed (RuntimeError: boom second line of the error)"))
    cases.append((tmp_path / "c3", lambda mp: mp.setattr(cc, "_source", fails),
                  "compiling the model into the cache entry", "failed (RuntimeError: boom second line"))
    root, _ = _toy_root(toy_model, toy_compiled, tmp_path)
    cases.append((root, lambda mp: mp.setattr(cc, "_assemble", fails),
                  "loading the cache entry", "failed (RuntimeError: boom"))
    (tmp_path / "empty").mkdir(mode=0o700)
    for case_root, patch, *says in cases:
        with monkeypatch.context() as mp:
            if patch is not None:
                patch(mp)
            _forget_loaded_modules()
            before, n = dict(cc.stats), len(plain_compile)
            compiled, events = _compile(toy_model, case_root)
            assert compiled == "plain"
            _assert_fell_back(events, before, plain_compile[n:], *says)


def test_model_the_cache_cannot_handle(tmp_path, plain_compile):
    """A shared variable that is not a named data array: not cacheable, said so, compiled the plain way."""
    import pymc as pm
    import pytensor

    with pm.Model() as m:
        mu = pm.Normal("mu", 0, 1)
        pm.Potential("pull", -((mu - pytensor.shared(np.array(0.5))) ** 2))
    before = dict(cc.stats)
    _, events = _compile(m, tmp_path)
    _assert_fell_back(events, before, plain_compile,
                      "the model cannot be cached (unnamed or duplicate shared variable)")


def test_without_a_listener_problems_are_warnings(tmp_path, toy_model, plain_compile, monkeypatch):
    """Called without ``on_problem``, each line is a :class:`CompileCacheWarning`; a cache turned off is silent."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(cc.CompileCacheWarning, match=r"^compile cache not used: cache folder .* is not a folder"):
        cc.compile_nutpie(toy_model, cache=blocker)
    monkeypatch.setenv("FORECASTER_CACHE", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error", cc.CompileCacheWarning)
        assert cc.compile_nutpie(toy_model) == "plain"


def test_fit_records_why_the_cache_was_not_used(toy_model, toy_compiled, tmp_path, monkeypatch):
    """The fit says why (its ``status`` line, which the CLI prints on stderr, else a warning) and keeps it in its
    diagnostics' notes, which travel with the saved fit (``forecaster summary`` prints them)."""
    import dataclasses
    import json

    from forecaster import io as fio
    from forecaster.fit import COMPILE_NOTICE, _sample_nutpie, _tidy_tree, diagnose

    monkeypatch.setattr(nutpie, "compile_pymc_model", lambda *a, **k: toy_compiled[0])  # the same code, quicker
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FORECASTER_CACHE", str(blocker))
    why = f"compile cache not used: cache folder {blocker} is not a folder; set FORECASTER_CACHE to a folder (or 'off')"
    kw = dict(draws=10, tune=10, chains=1, random_seed=1, target_accept=0.8, progressbar=False)
    said = []
    idata = _sample_nutpie(toy_model, {}, set(toy_model.free_RVs), kw, status=said.append)
    assert said == [why, COMPILE_NOTICE]
    tree = _tidy_tree(idata)
    d = diagnose(tree)
    assert why in d.notes
    tree["posterior"].attrs[fio._DIAG_ATTR] = json.dumps(dataclasses.asdict(d))
    assert fio._stored_diagnostics(tree).notes == d.notes  # as save_fit / load_fit keep them
    with pytest.warns(UserWarning, match="compile cache not used: cache folder"):
        _sample_nutpie(toy_model, {}, set(toy_model.free_RVs), kw)


def test_cache_is_private_under_a_permissive_umask(toy_model, tmp_path):
    """Folders the cache makes are its owner's only, and numba's files (written as the umask says) lose group
    and others' write permission, so a later process (``umask 002``: group-writable files) does not refuse them."""
    root = tmp_path / "new" / "cache"
    old = os.umask(0o002)
    try:
        _forget_loaded_modules()
        _, events = _compile(toy_model, root)
    finally:
        os.umask(old)
    assert events == ["<compile>"]
    assert (root.stat().st_mode & 0o777) == 0o700
    for p in [root, *root.rglob("*")]:
        assert not p.stat().st_mode & 0o022, p
    _forget_loaded_modules()
    before = dict(cc.stats)
    assert _compile(toy_model, root)[1] == [] and cc.stats["hits"] == before["hits"] + 1


def test_with_data_on_a_model_from_the_cache(toy_model, toy_compiled, toy_fallback, tmp_path):
    """``with_data`` on a model loaded from the cache: the log density and gradient at a point equal those of
    nutpie's own compile given the same new data (other values, another length), bit for bit; the model it came
    from is unchanged; a wrong rank or name is refused, as nutpie refuses it."""
    first, _ = toy_compiled
    toy_reference = toy_fallback[0]  # compiled by nutpie (no fastmath, as the cache compiles)
    root, _ = _toy_root(toy_model, toy_compiled, tmp_path)
    _forget_loaded_modules()
    before = dict(cc.stats)
    hit, events = _compile(toy_model, root)
    assert events == [] and cc.stats["hits"] == before["hits"] + 1
    x = toy_reference.initial_point_func(0) + 0.1
    lp0 = _logp(hit, x)
    for new in ([1.5, -0.2, 0.1, 3.0], [0.0, 1.0, 2.0, 3.0, 4.0, -5.0]):
        ref = toy_reference.with_data(data_y=np.array(new))
        got = hit.with_data(data_y=np.array(new))
        rc, lp, grad = _logp(ref, x)
        rc2, lp2, grad2 = _logp(got, x)
        assert rc == rc2 == 0 and lp2 == lp and lp != lp0[1]
        np.testing.assert_array_equal(grad2, grad)
        assert got.shared_data["data_y"].tolist() == new
    assert _logp(hit, x)[1] == lp0[1] == _logp(first, x)[1]
    with pytest.raises(ValueError, match="must have rank 1"):
        hit.with_data(data_y=np.ones((2, 2)))
    with pytest.raises(KeyError, match="Unknown shared variable: nope"):
        hit.with_data(nope=np.ones(3))
    # and it samples
    trace = nutpie.sample(hit.with_data(data_y=np.array([5.0, 5.2, 4.9, 5.1])), draws=50, tune=50, chains=1,
                          seed=1, progress_bar=False)
    assert float(trace.posterior["mu"].mean()) > 3


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
    # the model the first data loaded from the cache, given the new values with ``with_data``: the same
    via = compiled[1].with_data(**{n: new_values[n] for n in changed})
    rc3, lp3, grad3 = _logp(via, x)
    assert rc3 == 0 and lp3 == lp
    np.testing.assert_array_equal(grad3, grad)
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


def test_cli_fit_prints_why_the_cache_was_not_used(demo_table, tmp_path, monkeypatch):
    """``forecaster fit`` prints the line on stderr as it happens, before the compile notice."""
    from typer.testing import CliRunner

    from forecaster.cli import app
    from forecaster.errors import ForecasterError
    from forecaster.fit import COMPILE_NOTICE

    def stop(*_a, **_k):
        raise ForecasterError("stop after the compile notice")

    monkeypatch.setattr(nutpie, "compile_pymc_model", stop)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FORECASTER_CACHE", str(blocker))
    src = tmp_path / "two-tasks.csv"
    _two_tasks(demo_table).to_csv(src, index=False)
    res = CliRunner().invoke(app, ["fit", str(src), "-o", str(tmp_path / "fit.nc")])
    assert res.exit_code == 2, res.output
    why = f"compile cache not used: cache folder {blocker} is not a folder; set FORECASTER_CACHE to a folder (or 'off')"
    assert f"{why}\n{COMPILE_NOTICE}\n" in res.stderr
