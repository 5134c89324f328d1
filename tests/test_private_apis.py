"""Other packages' private or undocumented APIs that forecaster relies on, one test each, naming the path.

Most of these uses fail softly: ``forecaster.compile_cache`` falls back to ``nutpie.compile_pymc_model`` on any
error (a fit still works, only the cross-process compile cache is lost), ``_outer_opt_levels`` becomes a no-op,
the tail-ESS quantiles fall back to 0.89. So a release that moves one of them would pass the rest of the suite
and cost users minutes per fit in silence; here it fails, with the private path in the message. The tested
versions are the ranges pyproject.toml allows (CI runs the newest releases and the lowest allowed ones).

Private paths and their users:

- forecaster/compile_cache.py: ``nutpie.compile_pymc._make_functions``, ``._prepare_dims_and_coords``,
  ``._wrap_with_lock``, ``._rv_dict_to_flat_array_wrapper``, the fields of ``.CompiledPyMCModel`` and
  ``.address_as_void_pointer`` (imported by the generated module); ``numba.core.codegen.CPUCodeLibrary.
  _optimize_final_module`` with ``numba.core.config.OPT`` and the code library's ``name``; pytensor's compiled
  ``Function.vm.jit_fn`` (its ``py_func`` and the ``jitable_func`` in that function's globals), the graph inputs
  of nutpie's functions (``fn.maker.fgraph.inputs``), the ``numba__fastmath`` / ``numba__cache`` config flags.
- forecaster/expectation.py: ``pytensor.link.numba.dispatch.basic.numba_njit`` and
  ``.register_funcify_default_op_cache_key`` (how the custom Op gets its numba implementation).
- forecaster/fit.py: ``pymc.backends.arviz.patch_nutpie_idata`` (no fallback; it reads nutpie's
  ``sample_stats.attrs["inference_library_settings"]``, written by nutpie >= 0.16.10).
- forecaster/convergence.py: ``arviz_stats.validate.validate_ci_prob``.
- forecaster/cli.py main(): click's ``UsageError``, found through the public ``typer.BadParameter`` (typer >= 0.20
  vendors click as the private ``typer._click``, which forecaster no longer imports).
"""

from __future__ import annotations

import importlib
import inspect
import warnings

import numpy as np
import pytest


def resolve(path: str):
    """The object at dotted ``path`` (module part imported), or a test failure naming the path."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:  # pragma: no cover - the top package is a dependency
        pytest.fail(f"private API {path}: package {parts[0]} cannot be imported")
    for j, attr in enumerate(parts[i:], start=i):
        if not hasattr(obj, attr):
            pytest.fail(f"private API {path} is gone: {'.'.join(parts[:j])} has no attribute {attr!r} "
                        f"(used by forecaster; see tests/test_private_apis.py)")
        obj = getattr(obj, attr)
    return obj


def check_call(path: str, *args, **kwargs) -> None:
    """The call forecaster makes (``args`` positional, ``kwargs`` by name) still binds to ``path``'s signature."""
    fn = resolve(path)
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(f"private API {path} changed its signature to {inspect.signature(fn)}: "
                    f"forecaster calls it with positional {len(args)} and keywords {sorted(kwargs)} ({exc})")


# the calls as forecaster makes them (placeholders for the values)
CALLS = {
    "nutpie.compile_pymc._make_functions": (
        ("model",), dict(mode="NUMBA", compute_grad=True, join_expanded=True, pymc_initial_point_fn=None)),
    "nutpie.compile_pymc._prepare_dims_and_coords": (("model", "shape_info", "reparameterized_names"), {}),
    "nutpie.compile_pymc._wrap_with_lock": (("fn",), {}),
    "nutpie.compile_pymc._rv_dict_to_flat_array_wrapper": (("fn",), dict(names=[], shapes=[])),
    "nutpie.compile_pymc.CompiledPyMCModel": ((), dict(
        _n_dim=1, dims={}, _coords={}, _shapes={}, compiled_logp_func=None, compiled_expand_func=None,
        initial_point_func=None, shared_data={}, shared_var_keys={}, user_data=None, n_expanded=1, shape_info=None,
        logp_func=None, expand_func=None, reparameterized_names=[])),
    "pymc.backends.arviz.patch_nutpie_idata": (("idata", "model"), dict(sampling_time=1.0)),
    "pymc.initial_point.make_initial_point_fn": ((), dict(
        model=None, overrides=None, default_strategy="support_point", jitter_rvs=set(), return_transformed=True)),
    "pytensor.link.numba.dispatch.basic.register_funcify_default_op_cache_key": (("Op",), {}),
    "arviz_stats.validate.validate_ci_prob": ((None,), {}),
}


@pytest.mark.parametrize("path", sorted(CALLS))
def test_private_callable_still_takes_forecasters_call(path):
    args, kwargs = CALLS[path]
    check_call(path, *args, **kwargs)


@pytest.mark.parametrize("path", [
    "nutpie.compile_pymc.address_as_void_pointer",  # in the generated module's numba code
    "pytensor.link.numba.dispatch.basic.numba_njit",
    "pytensor.graph.traversal.graph_inputs",
    "pytensor.graph.traversal.io_toposort",
    "pytensor.compile.sharedvalue.SharedVariable",
])
def test_private_name_exists(path):
    assert resolve(path) is not None


def test_arviz_stats_default_ci_prob():
    p = resolve("arviz_stats.validate.validate_ci_prob")(None)
    assert 0 < float(p) < 1, f"private API arviz_stats.validate.validate_ci_prob(None) returned {p!r}, not a probability"


def test_typer_usage_error_through_public_api():
    """cli.main() catches click's UsageError, taken from typer.BadParameter's bases; an unknown option raises it."""
    import typer

    from forecaster.cli import app

    found = [c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"]
    assert found, (f"typer.BadParameter is no longer a click UsageError (bases {typer.BadParameter.__mro__}): "
                   "forecaster.cli.main() cannot tell usage errors apart")
    with pytest.raises(found[0]) as info:
        app(args=["--no-such-option"], standalone_mode=False)
    exc = info.value
    assert exc.exit_code == 2 and exc.format_message() and hasattr(exc, "ctx")
    # typer < 0.18 with click >= 8.3 passed a missing argument to the command as None instead
    with pytest.raises(found[0]) as info:
        app(args=["forecast"], standalone_mode=False)
    assert "Missing argument" in info.value.format_message(), (
        f"typer {typer.__version__}: a missing argument is not a usage error ({info.value.format_message()!r})")


def test_numba_final_module_hook(monkeypatch):
    """``_outer_opt_levels`` sets ``numba.core.config.OPT`` per library while
    ``numba.core.codegen.CPUCodeLibrary._optimize_final_module`` runs, matching the library's ``name`` on its last
    dotted part (the function's name); without these it silently does nothing."""
    import numba
    from numba import types

    from forecaster import compile_cache as cc

    codegen = resolve("numba.core.codegen")
    config = resolve("numba.core.config")
    resolve("numba.core.codegen.CPUCodeLibrary._optimize_final_module")
    resolve("numba.core.config.OPT")
    seen = []
    orig = codegen.CPUCodeLibrary._optimize_final_module
    opt_before = int(config.OPT)

    def spy(self):
        seen.append((self.name, int(config.OPT)))
        return orig(self)

    monkeypatch.setattr(codegen.CPUCodeLibrary, "_optimize_final_module", spy)

    def probe_final_module_hook(x):
        return x + 1.0

    with cc._outer_opt_levels({"probe_final_module_hook": 0}):
        assert codegen.CPUCodeLibrary._optimize_final_module is not spy, (
            "forecaster.compile_cache._outer_opt_levels did not patch "
            "numba.core.codegen.CPUCodeLibrary._optimize_final_module (numba internals moved)")
        f = numba.cfunc(types.double(types.double))(probe_final_module_hook)
    assert codegen.CPUCodeLibrary._optimize_final_module is spy
    assert f.ctypes(1.0) == 2.0
    mine = [opt for name, opt in seen if name.split(".")[-1] == "probe_final_module_hook"]
    assert mine, (f"no numba code library named ...probe_final_module_hook was finalized (names: "
                  f"{[n for n, _ in seen]}): the library 'name' that _outer_opt_levels matches changed")
    assert mine == [0] * len(mine), f"numba.core.config.OPT was {mine} in the hook, not the level set (0)"
    assert int(config.OPT) == opt_before  # restored after the block


def test_pytensor_numba_function_internals():
    """``Function.vm.jit_fn`` (a numba dispatcher with ``py_func``) and, with pytensor's numba cache on, the graph's
    function as ``jitable_func`` in that function's globals: what ``compile_cache._inlined`` inlines."""
    import pytensor
    import pytensor.tensor as pt

    for flag in ("numba__fastmath", "numba__cache"):
        assert hasattr(pytensor.config, flag), f"pytensor.config.{flag} is gone (forecaster.compile_cache sets it)"
    x = pt.dvector("x")
    with pytensor.config.change_flags(numba__cache=True):
        f = pytensor.function([x], [(x**2).sum()], mode="NUMBA")
    jit = getattr(getattr(f, "vm", None), "jit_fn", None)
    assert jit is not None, "pytensor Function.vm.jit_fn is gone (forecaster.compile_cache._inlined)"
    outer = getattr(jit, "py_func", None)
    assert callable(outer), "pytensor Function.vm.jit_fn.py_func is gone (forecaster.compile_cache._inlined)"
    inner = getattr(outer.__globals__.get("jitable_func"), "py_func", None)
    assert callable(inner), ("pytensor Function.vm.jit_fn.py_func.__globals__['jitable_func'].py_func is gone: "
                             "compile_cache._inlined would inline pytensor's wrapper, not the graph's function")


@pytest.fixture(scope="module")
def tiny_model():
    import pymc as pm

    with pm.Model() as model:
        y = pm.Data("y_obs", np.array([0.1, -0.3, 0.5, 0.2]))
        mu = pm.Normal("mu", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        pm.Normal("y", mu, sigma, observed=y)
    return model


def test_nutpie_make_functions_output(tiny_model):
    """What compile_cache reads from ``nutpie.compile_pymc._make_functions``: seven results, pytensor functions
    whose graph inputs after the point are the model's named data arrays, nutpie's shape info."""
    from pymc.initial_point import make_initial_point_fn

    make_functions = resolve("nutpie.compile_pymc._make_functions")
    ip = make_initial_point_fn(model=tiny_model, return_transformed=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = make_functions(tiny_model, mode="NUMBA", compute_grad=True, join_expanded=True, pymc_initial_point_fn=ip)
    assert isinstance(out, tuple) and len(out) == 7, (
        f"private API nutpie.compile_pymc._make_functions returns {type(out).__name__} of {len(out)}, not 7 results "
        "(n_dim, n_expanded, logp_fn, expand_fn, initial_point_fn, shape_info, reparameterized_names)")
    n_dim, n_expanded, logp_fn, expand_fn, _, shape_info, reparam = out
    assert n_dim == 2 and n_expanded >= 2
    for name, fn in (("logp", logp_fn), ("expand", expand_fn)):
        inputs = [v.name for v in fn.maker.fgraph.inputs[1:]]
        assert set(inputs) <= {"y_obs"}, f"nutpie's {name} function takes {inputs} after the point, not data arrays"
    names, _, shapes = shape_info
    assert len(names) == len(shapes) >= 2 and isinstance(reparam, list)
    dims, coords = resolve("nutpie.compile_pymc._prepare_dims_and_coords")(tiny_model, shape_info, reparam)
    flat = resolve("nutpie.compile_pymc._rv_dict_to_flat_array_wrapper")(
        resolve("nutpie.compile_pymc._wrap_with_lock")(ip), names=list(names[:2]), shapes=list(shapes[:2]))
    assert np.asarray(flat(1)).shape == (2,)


def test_cached_compile_samples_and_patches(tiny_model, tmp_path):
    """The whole cached path on a tiny model: no fallback to nutpie.compile_pymc_model, then nutpie.sample and
    ``pymc.backends.arviz.patch_nutpie_idata`` as fit.py calls them."""
    import nutpie

    from forecaster import compile_cache as cc

    before = dict(cc.stats)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = cc.compile_nutpie(tiny_model, cache=tmp_path)
    assert cc.stats["fallbacks"] == before["fallbacks"], (
        "forecaster.compile_cache fell back to nutpie.compile_pymc_model: one of nutpie.compile_pymc's private "
        "functions, CompiledPyMCModel or numba/pytensor internals changed (see the other tests here); warnings: "
        f"{[str(w.message)[:200] for w in caught]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = nutpie.sample(compiled, draws=20, tune=20, chains=1, seed=1, progress_bar=False)
    patch = resolve("pymc.backends.arviz.patch_nutpie_idata")
    try:
        patch(idata, tiny_model, sampling_time=0.5)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"private API pymc.backends.arviz.patch_nutpie_idata failed on nutpie {nutpie.__version__}'s "
                    f"output ({type(exc).__name__}: {exc}); it reads sample_stats.attrs['inference_library_settings']")
    assert idata.posterior.attrs.get("sampling_time") == 0.5
    assert idata.posterior["mu"].shape == (1, 20)


# --- dependency declarations (pyproject.toml) --------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, list[str]]:
    """Requirement strings of pyproject.toml by group ("" for [project] dependencies, else the extra's name)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {"": project["dependencies"], **project.get("optional-dependencies", {})}


def _split(req: str) -> tuple[str, str]:
    import re

    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", req)
    assert m, req
    return _norm(m.group(1)), m.group(3)


def test_every_import_is_declared():
    """Every third-party module imported by forecaster/, tests/ and benchmarks/ (lazy imports included) belongs to a
    package pyproject.toml declares (dependencies or an extra)."""
    import ast
    import importlib.metadata as md
    import sys

    declared = {_split(r)[0] for reqs in _declared().values() for r in reqs}
    dists = md.packages_distributions()
    missing = {}
    for folder in ("forecaster", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in ("forecaster", "conftest") or top.startswith("_"):
                        continue
                    if (REPO / folder / f"{top}.py").exists():  # a sibling module (benchmarks' scripts)
                        continue
                    owners = {_norm(d) for d in dists.get(top, [top])}
                    if not owners & declared:
                        missing.setdefault(top, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_lowest_constraints_pin_every_lower_bound():
    """.ci/lowest-constraints.txt (CI's lowest-versions run) pins each requirement of [project] dependencies and the
    test extra at its lower bound, and nothing else."""
    import re

    def key(v: str) -> tuple[int, ...]:
        parts = [int(p) for p in re.findall(r"\d+", v)]
        while parts and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    want = {}
    for req in _declared()[""] + _declared()["test"]:
        name, spec = _split(req)
        low = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
        assert low, f"pyproject.toml: {req!r} has no lower bound (>=)"
        want[name] = low.group(1)
    have = {}
    for line in (REPO / ".ci" / "lowest-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f".ci/lowest-constraints.txt: {line!r} is not NAME==VERSION"
            have[_norm(name)] = version.strip()
    assert sorted(have) == sorted(want), f"constraints {sorted(have)} != pyproject {sorted(want)}"
    differ = {n: (want[n], have[n]) for n in want if key(want[n]) != key(have[n])}
    assert not differ, f"lower bound in pyproject.toml != pin in .ci/lowest-constraints.txt: {differ}"
