"""Compile a PyMC model for nutpie once, and reuse the compiled code in later processes.

``nutpie.compile_pymc_model`` spends most of its time, in every process, on
work that does not depend on anything but the model: pytensor's gradient and
graph rewrites (~5 s on the demo) and numba compiling nutpie's C-callable
wrappers around the pytensor function (nutpie builds them as closures, which
numba cannot cache). :func:`compile_nutpie` instead writes the wrappers as
plain functions into a generated module file under the cache directory, so
numba's own on-disk cache (``cache=True``) keeps the machine code, and stores
the few facts nutpie needs about the parameter layout next to it. A later
process with the same model graph (same structure and package versions, any
values of the data) loads both and skips pytensor compilation entirely. A first compile inlines
the graph's function into the wrappers (:func:`_inlined`), so numba types and
emits it once: 32 -> 22 s for a new dataset on the demo.

The model's data arrays are not part of the compiled code: the model builder
passes them as ``pm.Data`` (:func:`forecaster.model._data`), the generated
entry points read them at run time through nutpie's ``user_data`` pointer,
and the cache is keyed on a hash of the model's graph with the data arrays as
placeholders (name, dtype, shape), the parameter layout and the package
versions (:func:`model_key`). So new data of the same design (the same cells,
masks and spec; other log-probs, losses or counts) reuse the compiled code of
earlier data: the first fit of such data costs what a warm fit costs. The
start vectors PyMC's initial-point function gives for each seed are stored in
the entry, keyed by the initial-point settings and the data
(:class:`_StoredInitialPoints`), so a warm fit does not build that function.
Nothing fails silently. A damaged or stale entry (unreadable metadata, other
package versions, compiled code that does not load) is removed and compiled
again; anything that keeps the cache from being used (a folder that cannot be
created or written, a folder or entry other users can write, a nutpie without
the internals used here, a model the cache cannot handle, an error while
generating or loading the code) falls back to ``nutpie.compile_pymc_model``.
Either way one line says what happened (``on_problem``, else a
:class:`CompileCacheWarning`); results are identical either way.

The cache executes what it finds in its folder (pickles, generated Python,
numba's cached machine code), so it uses an entry only when no other user can
have written it: the cache folder must belong to you (or root) and be
writable by no one else unless it has the sticky bit (as ``/tmp``); an entry
and everything in it must belong to you (or root), be writable by no one
else, and hold no symbolic links. It creates its folders for its owner only
(``0700``). Models loaded from the cache take new data values with
``with_data`` as nutpie's own do.

Cache location: ``$FORECASTER_CACHE``, else ``$XDG_CACHE_HOME/forecaster``,
else ``~/.cache/forecaster``; ``FORECASTER_CACHE=off`` disables it. At most
:data:`MAX_ENTRIES` models are kept (least recently used are removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["compile_nutpie", "cache_dir", "model_key", "clear_cache", "MAX_ENTRIES", "stats", "CompileCacheWarning"]

#: Bump when the generated code or the stored metadata change.
CACHE_FORMAT = 5
#: Models kept in the cache (least recently used beyond this are removed).
MAX_ENTRIES = 32

#: Counters of this process: ``hits`` (loaded from cache), ``misses`` (compiled and stored), ``fallbacks``.
stats: dict[str, int] = {"hits": 0, "misses": 0, "fallbacks": 0}

_META = "meta.pkl"
#: nutpie's internals the cache builds on (checked first: without them the cache is not used, and says so).
_NUTPIE_API = ("CompiledPyMCModel", "_make_functions", "_prepare_dims_and_coords", "_wrap_with_lock",
               "_rv_dict_to_flat_array_wrapper", "address_as_void_pointer")


class CompileCacheWarning(UserWarning):
    """The compile cache was not used, or an entry of it was replaced (the model was compiled all the same)."""


class _NotUsed(Exception):
    """The cache cannot be used for this compile; the message says why, in one line."""


class _Unsupported(_NotUsed):
    def __init__(self, why: str) -> None:
        super().__init__(f"the model cannot be cached ({why})")


def _one_line(exc: BaseException) -> str:
    """An exception as one short line."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = " ".join(str(exc).split())
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."

_HEADER = '''\
"""Generated by forecaster.compile_cache for model {key}: nutpie's C entry points, cacheable by numba."""
import numba
import numpy as np
from nutpie.compile_pymc import address_as_void_pointer

N_DIM = {n_dim}
N_EXPANDED = {n_expanded}
N_USER = {n_user}
# LOGP_INNER and EXPAND_INNER (pytensor's numba functions of the point and the model's data arrays) are set
# before compiling; a cache hit needs neither. The data arrays come through ``user_data``: an int64 vector
# holding, for each array, its address and then its shape.
'''

_LOGP = '''

def logp(dim, x_, out_, logp_, user_data_):
    if dim != N_DIM:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_DIM,))
        logp_out = numba.carray(logp_, ())
        ud = numba.carray(user_data_, (N_USER,), np.int64)
{data}
        logp_val, grad = LOGP_INNER(x{args})
        logp_out[()] = logp_val
        out[...] = grad
        if not np.all(np.isfinite(out)):
            return 3
        if not np.isfinite(logp_val):
            return 4
    except Exception:  # noqa: BLE001
        return 1
    return 0
'''

_EXPAND = '''

def expand(dim, expanded, x_, out_, user_data_):
    if dim != N_DIM:
        return -1
    if expanded != N_EXPANDED:
        return -1
    try:
        x = numba.carray(x_, (N_DIM,))
        out = numba.carray(out_, (N_EXPANDED,))
        ud = numba.carray(user_data_, (N_USER,), np.int64)
{data}
        (values,) = EXPAND_INNER(x{args})
        out[...] = values
    except Exception:  # noqa: BLE001
        return -2
    return 0
'''


def _source(key: str, n_dim: int, n_expanded: int, layout: list[tuple[str, str, int]], logp_names: list[str],
            expand_names: list[str]) -> str:
    """The generated module: the two C entry points, reading the data arrays named in ``logp_names`` /
    ``expand_names`` from ``user_data`` (``layout``: name, dtype and ndim of each array, in storage order)."""
    offset, where = 0, {}
    for name, dtype, ndim in layout:
        where[name] = (offset, dtype, ndim)
        offset += 1 + ndim

    def block(names: list[str]) -> tuple[str, str]:
        lines, args = [], ""
        for j, name in enumerate(names):
            o, dtype, ndim = where[name]
            shape = "(" + "".join(f"ud[{o + 1 + d}], " for d in range(ndim)) + ")"
            lines.append(f"        d{j} = numba.carray(address_as_void_pointer(ud[{o}]), {shape}, np.{dtype})")
            args += f", d{j}"
        return "\n".join(lines), args

    logp_data, logp_args = block(logp_names)
    expand_data, expand_args = block(expand_names)
    return (_HEADER.format(key=key, n_dim=n_dim, n_expanded=n_expanded, n_user=max(offset, 1))
            + _LOGP.format(data=logp_data, args=logp_args) + _EXPAND.format(data=expand_data, args=expand_args))


def _data_vars(pm_model: Any) -> dict[str, Any]:
    """The model's data arrays (shared variables) by name."""
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.traversal import graph_inputs

    out: dict[str, Any] = {}
    for v in graph_inputs(_model_outputs(pm_model)):
        if isinstance(v, SharedVariable) and hasattr(v.type, "dtype") and hasattr(v.type, "ndim"):
            if v.name is None or out.get(v.name, v) is not v:
                raise _Unsupported("unnamed or duplicate shared variable")
            out[v.name] = v
    return out


def _pack(arrays: dict[str, np.ndarray], layout: Any) -> np.ndarray:
    """``user_data`` for the entry points: address and shape of each data array, in ``layout`` order (the
    arrays must stay alive as long as it is used)."""
    ud: list[int] = []
    for name, *_ in layout:
        ud += [arrays[name].ctypes.data, *arrays[name].shape]
    return np.array(ud or [0], dtype=np.int64)


def _user_data(pm_model: Any, layout: list[tuple[str, str, int]]) -> tuple[np.ndarray, dict[str, np.ndarray], tuple]:
    """``user_data`` for the entry points, the arrays it points to, and the layout with each array's static
    shape (``None`` where any length goes), which ``with_data`` checks new values against."""
    shared = _data_vars(pm_model)
    arrays, full = {}, []
    for name, dtype, ndim in layout:
        if name not in shared:
            raise _Unsupported(f"data array {name} missing")
        arr = np.ascontiguousarray(shared[name].get_value(borrow=True), dtype=dtype)
        if arr.ndim != ndim:
            raise _Unsupported(f"data array {name} has another shape")
        arrays[name] = arr
        full.append((name, dtype, ndim, tuple(shared[name].type.shape)))
    return _pack(arrays, layout), arrays, tuple(full)


_CACHED_MODEL: Any = None


def _cached_model_class() -> Any:
    """nutpie's ``CompiledPyMCModel`` for code from the cache: data arrays by name, passed through ``user_data`` as
    :func:`_pack` lays them out, so ``with_data`` (new values of the model's data, same compiled code) is its own."""
    global _CACHED_MODEL
    if _CACHED_MODEL is not None:
        return _CACHED_MODEL
    from nutpie.compile_pymc import CompiledPyMCModel

    @dataclasses.dataclass(frozen=True)
    class CachedPyMCModel(CompiledPyMCModel):
        #: (name, dtype, ndim, static shape) of each data array, in ``user_data`` order.
        data_layout: tuple = ()

        def with_data(self, **updates: Any) -> Any:
            """The same compiled model reading other values of its data arrays (as nutpie's ``with_data``)."""
            shared = dict(self.shared_data)
            known = {name: (dtype, ndim, static) for name, dtype, ndim, static in self.data_layout}
            for name, value in updates.items():
                if name not in known:
                    raise KeyError(f"Unknown shared variable: {name} (the model's data arrays: {', '.join(known)})")
                dtype, ndim, static = known[name]
                new = np.array(value, dtype=dtype, order="C", copy=True)
                if new.ndim != ndim:
                    raise ValueError(f"Shared variable {name} must have rank {ndim}")
                if any(s is not None and s != n for s, n in zip(static, new.shape)):
                    raise ValueError(f"Shared variable {name} must have shape {static}, got {new.shape}")
                new.flags.writeable = False
                shared[name] = new
            return dataclasses.replace(self, shared_data=shared, user_data=_pack(shared, self.data_layout))

    CachedPyMCModel.__module__ = __name__
    CachedPyMCModel.__qualname__ = "CachedPyMCModel"
    globals()["CachedPyMCModel"] = _CACHED_MODEL = CachedPyMCModel
    return CachedPyMCModel


def cache_dir() -> Path | None:
    """The cache directory (``None`` when disabled with ``FORECASTER_CACHE=off``)."""
    env = os.environ.get("FORECASTER_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "forecaster"


def _versions() -> tuple[str, ...]:
    import numba
    import nutpie
    import pymc
    import pytensor

    return (
        f"format={CACHE_FORMAT}", sys.version, np.__version__, numba.__version__, pytensor.__version__,
        pymc.__version__, nutpie.__version__,
    )


def _model_outputs(pm_model: Any) -> list:
    """The model's random variables, deterministics, potentials and observed values: its whole graph."""
    return [*pm_model.basic_RVs, *pm_model.deterministics, *pm_model.potentials,
            *[pm_model.rvs_to_values[rv] for rv in pm_model.observed_RVs]]


def model_key(pm_model: Any) -> str:
    """Hash of what the compiled code depends on: the model's graph with its data arrays as placeholders (name,
    dtype, shape; not values), the parameter layout, the package versions.

    PyMC derives the log density and the trace function from that graph, so two models with the same key
    compile to the same code; their data arrays (``pm.Data``) are read at run time.
    """
    from .expectation import table_id

    free = [(rv.name, pm_model.rvs_to_values[rv].name, str(pm_model.rvs_to_transforms.get(rv))) for rv in pm_model.free_RVs]
    h = hashlib.sha256()
    for part in (_versions(), free, bool(pm_model.check_bounds), table_id()):
        h.update(repr(part).encode())
    h.update(_graph_bytes(_model_outputs(pm_model)))
    return h.hexdigest()[:32]


def _data_digest(pm_model: Any) -> str:
    """Hash of the values of the model's data arrays (the start vectors depend on them)."""
    h = hashlib.sha256()
    for name, v in sorted(_data_vars(pm_model).items()):
        arr = np.ascontiguousarray(v.get_value(borrow=True))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _describe(obj: Any, depth: int = 0) -> str:
    """Stable text of an op or op parameter (no memory addresses, no process-dependent names)."""
    from pytensor.graph.basic import Variable

    if isinstance(obj, np.ndarray) and obj.dtype == object:  # e.g. NoneConst: describe the objects, not pointers
        return f"objects({obj.shape},{_describe(obj.tolist(), depth + 1)})"
    if isinstance(obj, np.ndarray):
        return f"array({obj.dtype.str},{obj.shape},{hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()})"
    if isinstance(obj, (str, int, float, bool, type(None), np.generic, np.dtype)):
        return repr(obj)
    if isinstance(obj, (tuple, list)):
        return "(" + ",".join(_describe(o, depth + 1) for o in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_describe(k, depth + 1)}:{_describe(v, depth + 1)}" for k, v in obj.items()) + "}"
    if isinstance(obj, Variable):
        raise _Unsupported("graph variable inside an op")
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    props = getattr(obj, "__props__", None)
    if props is not None and depth < 8:
        return f"{name}{{{','.join(f'{p}={_describe(getattr(obj, p), depth + 1)}' for p in props)}}}"
    return f"{name}<{obj}>"


def _graph_bytes(outputs: list) -> bytes:
    """Canonical text of a graph: ops with their parameters, types, constants' data and names, in topological order.

    Unlike a pickle it leaves out what depends on the process or the caller (pytensor's automatic
    names, creation stack traces in tags, caches kept on constants).
    """
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import io_toposort

    index: dict[Any, int] = {}
    lines: list[str] = []

    def ref(v: Any) -> int:
        if v not in index:
            index[v] = len(index)
            if isinstance(v, Constant):
                lines.append(f"c{index[v]} {v.type} {_describe(np.asarray(v.data))}")
            else:
                lines.append(f"i{index[v]} {v.type} {v.name!r} owner={v.owner is not None}")
        return index[v]

    for node in io_toposort([], outputs):
        args = [ref(i) for i in node.inputs]
        outs = []
        for o in node.outputs:
            index[o] = len(index)
            outs.append(f"{index[o]}:{o.type}:{o.name!r}")
        lines.append(f"{_describe(node.op)} {args} -> {outs}")
    lines.append(f"out {[ref(o) for o in outputs]}")
    return "\n".join(lines).encode()


def _c_signatures() -> tuple[Any, Any]:
    from numba import types

    logp_sig = types.int64(
        types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.CPointer(types.double),
        types.voidptr,
    )
    expand_sig = types.int64(
        types.uint64, types.uint64, types.CPointer(types.double), types.CPointer(types.double), types.voidptr,
    )
    return logp_sig, expand_sig


def _write_new(path: Path, data: bytes) -> None:
    """Write ``path`` atomically, never replacing an existing file (a concurrent writer may have won)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _load_module(entry: Path, key: str) -> ModuleType:
    name = f"_forecaster_nutpie_{key}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, entry / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def _cfuncs(mod: ModuleType) -> tuple[Any, Any]:
    """numba C callbacks of the generated module (loaded from numba's cache when it has them)."""
    import numba

    logp_sig, expand_sig = _c_signatures()
    with warnings.catch_warnings(), _outer_opt_levels({"logp": 1, "expand": 0}):
        warnings.simplefilter("ignore", numba.NumbaWarning)
        return numba.cfunc(logp_sig, cache=True)(mod.logp), numba.cfunc(expand_sig, cache=True)(mod.expand)


@contextlib.contextmanager
def _outer_opt_levels(levels: dict[str, int]):
    """LLVM's module optimization at ``levels[name]`` for the numba libraries named ``name`` finalized in this block.

    Those are the two C entry points, into which the graph's function is inlined (:func:`_inlined`); the
    model's kernels (pytensor's per-op functions, compiled and cached on their own) keep numba's default
    ``-O3``. The log density at ``-O1``: the inlined glue between kernels gets the cheap cleanups (measured
    on the demo: gradient 25 us as with ``-O3``, 29 us at ``-O0``); the trace function, called once per
    kept draw, at ``-O0``. ``NUMBA_OPT=0`` for everything compiles the kernels unoptimized too: a gradient
    14x slower. Without the numba internals this relies on, a no-op.
    """
    try:
        from numba.core import codegen, config
        lib_cls = codegen.CPUCodeLibrary
        orig = lib_cls._optimize_final_module
        opt = type(config.OPT)
    except Exception:  # noqa: BLE001
        yield
        return

    def optimize(self):
        level = levels.get(self.name.split(".")[-1])
        if level is None:
            return orig(self)
        saved = config.OPT
        config.OPT = opt(level)
        try:
            return orig(self)
        finally:
            config.OPT = saved

    lib_cls._optimize_final_module = optimize
    try:
        yield
    finally:
        lib_cls._optimize_final_module = orig


def _inlined(fn: Any) -> Any:
    """pytensor's numba function of a compiled graph, as a dispatcher numba inlines into its caller.

    pytensor's ``fn.vm.jit_fn`` wraps the graph's function in a second dispatcher (cached by pytensor
    under a key that includes every constant, so new data never hits it). Calling it from the C entry point
    made numba type, optimize at ``-O3`` and emit machine code for the graph's function three times (the
    function, pytensor's wrapper, the entry point): 22 s of a new dataset's compile on the demo. Inlined at
    numba's IR level, it is typed and emitted once, inside the entry point (10-13 s). Without pytensor's
    numba cache there is no wrapper and the graph's function itself is inlined; anything without a Python
    function behind it is returned as it is.
    """
    import numba

    jit = fn.vm.jit_fn
    outer = getattr(jit, "py_func", None)
    # with pytensor's numba cache on, ``outer`` only calls ``jitable_func``; with it off, it is the graph's function
    inner = getattr(getattr(outer, "__globals__", {}).get("jitable_func"), "py_func", None)
    py_func = inner if callable(inner) else outer
    if not callable(py_func):
        return jit
    return numba.njit(py_func, inline="always")


def _assemble(pm_model: Any, meta: dict, logp_c: Any, expand_c: Any, initial_point_fn: Any,
              logp_pt: Any = None, expand_pt: Any = None) -> Any:
    from nutpie.compile_pymc import _prepare_dims_and_coords

    user_data, arrays, layout = _user_data(pm_model, meta["layout"])
    shape_info = meta["shape_info"]
    dims, coords = _prepare_dims_and_coords(pm_model, shape_info, meta["reparameterized_names"])
    return _cached_model_class()(
        _n_dim=meta["n_dim"],
        dims=dims,
        _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp_c,
        compiled_expand_func=expand_c,
        initial_point_func=initial_point_fn,
        shared_data=arrays,  # kept alive here: user_data holds their addresses
        shared_var_keys={},
        user_data=user_data,
        n_expanded=meta["n_expanded"],
        shape_info=shape_info,
        logp_func=logp_pt,
        expand_func=expand_pt,
        reparameterized_names=meta["reparameterized_names"],
        data_layout=layout,
    )


def _initial_point_fn(pm_model: Any, initial_points: dict | None, jitter_rvs: set | None) -> Any:
    """nutpie's seeded initial-point function (as in ``nutpie.compile_pymc_model``)."""
    from nutpie.compile_pymc import _wrap_with_lock
    from pymc.initial_point import make_initial_point_fn

    return _wrap_with_lock(make_initial_point_fn(
        model=pm_model, overrides=initial_points, default_strategy="support_point",
        jitter_rvs=set(pm_model.free_RVs) if jitter_rvs is None else jitter_rvs, return_transformed=True,
    ))


def _flat_initial_point_fn(pymc_fn: Any, meta: dict) -> Any:
    """Seed -> flat start vector of the free parameters (the layout nutpie's ``_make_functions`` uses)."""
    from nutpie.compile_pymc import _rv_dict_to_flat_array_wrapper

    names, _, shapes = meta["shape_info"]
    n = meta["n_free_vars"]
    return _rv_dict_to_flat_array_wrapper(pymc_fn, names=list(names[:n]), shapes=list(shapes[:n]))


def _prune(root: Path, keep: Path) -> None:
    """Remove the least recently used entries beyond :data:`MAX_ENTRIES` (those another process removes first,
    or that cannot be removed, are left alone)."""
    entries = []
    for p in root.iterdir():
        with contextlib.suppress(OSError):
            if p != keep and not p.is_symlink() and p.is_dir():
                entries.append((p.stat().st_mtime, p))
    for _, p in sorted(entries)[: max(0, len(entries) + 1 - MAX_ENTRIES)]:
        shutil.rmtree(p, ignore_errors=True)


def _compile_and_store(pm_model: Any, entry: Path, key: str, pymc_ip_fn: Any, settings: str) -> Any:
    from nutpie.compile_pymc import _make_functions

    n_dim, n_expanded, logp_pt, expand_pt, ip_fn, shape_info, reparam = _make_functions(
        pm_model, mode="NUMBA", compute_grad=True, join_expanded=True, pymc_initial_point_fn=pymc_ip_fn,
    )
    # the data arrays each function reads, in the order its graph takes them (after the point)
    logp_names = [v.name for v in logp_pt.maker.fgraph.inputs[1:]]
    expand_names = [v.name for v in expand_pt.maker.fgraph.inputs[1:]]
    shared = _data_vars(pm_model)
    if any(n not in shared for n in logp_names + expand_names):
        raise _Unsupported("a function input is not a data array of the model")
    layout = [(n, str(np.dtype(shared[n].type.dtype)), int(shared[n].type.ndim)) for n in sorted(set(logp_names + expand_names))]
    entry.mkdir(mode=0o700, exist_ok=True)
    (entry / "__pycache__").mkdir(mode=0o700, exist_ok=True)  # numba's cache files, made before numba makes it
    name = f"_forecaster_nutpie_{key}"
    _write_new(entry / f"{name}.py", _source(key, n_dim, n_expanded, layout, logp_names, expand_names).encode())
    mod = _load_module(entry, key)
    mod.LOGP_INNER = _inlined(logp_pt)
    mod.EXPAND_INNER = _inlined(expand_pt)
    logp_c, expand_c = _cfuncs(mod)
    for top in (entry, *_numba_dirs(entry, key)):
        _owner_only(top)  # numba writes its files as the umask says: a later load must not refuse them
    meta = dict(
        versions=_versions(), n_dim=n_dim, n_expanded=n_expanded, shape_info=shape_info,
        reparameterized_names=reparam, n_free_vars=len(pm_model.free_RVs), layout=layout,
    )
    _write_new(entry / _META, pickle.dumps(meta, protocol=5))
    stats["misses"] += 1
    # the start vectors of this process's seeds are stored too, so the next process need not build the function
    stored_ip = _StoredInitialPoints(entry, lambda: ip_fn, settings)
    return _assemble(pm_model, meta, logp_c, expand_c, stored_ip, logp_pt, expand_pt)


def _discard(entry: Path, key: str) -> None:
    """Remove a damaged cache entry (and its module from this process)."""
    sys.modules.pop(f"_forecaster_nutpie_{key}", None)
    shutil.rmtree(entry, ignore_errors=True)


def _uid() -> int | None:
    """This process's user id (``None`` where there are no POSIX owners and modes: nothing to check)."""
    getuid = getattr(os, "getuid", None)
    return None if getuid is None else getuid()


def _writers(mode: int) -> str:
    return " and ".join(who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit)


def _check_root(root: Path) -> None:
    """Raise :class:`_NotUsed` unless only you (or root) can change what the cache folder holds.

    A folder writable by others is acceptable with the sticky bit (as ``/tmp``): others cannot then rename or
    remove your entries, and one they made belongs to them, which :func:`_check_entry` refuses.
    """
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise _NotUsed(f"cache folder {root} is not a folder; set FORECASTER_CACHE to a folder (or 'off')")
    uid = _uid()
    if uid is None:
        return
    if st.st_uid not in (uid, 0):
        raise _NotUsed(f"cache folder {root} belongs to uid {st.st_uid}, not to you (uid {uid}), and its code would "
                       "run as you; set FORECASTER_CACHE to a folder of yours")
    writers = _writers(st.st_mode)
    if writers and not st.st_mode & stat.S_ISVTX:
        raise _NotUsed(f"cache folder {root} is writable by {writers} (mode {stat.S_IMODE(st.st_mode):o}), who could "
                       f"plant code that runs as you; run 'chmod go-w {root}'")


def _numba_dirs(entry: Path, key: str) -> list[Path]:
    """numba's cache folder for the generated module when it is not inside the entry (``NUMBA_CACHE_DIR``)."""
    try:
        from numba.core import config
        from numba.core.caching import _CacheLocator

        if config.CACHE_DIR:
            py_file = str(entry / f"_forecaster_nutpie_{key}.py")
            return [Path(config.CACHE_DIR) / _CacheLocator.get_suitable_cache_subpath(py_file)]
    except Exception:  # noqa: BLE001 - numba's layout changed: its folder is not checked (nor found)
        pass
    return []


def _check_entry(entry: Path, key: str) -> None:
    """Raise :class:`_NotUsed` if anything in the entry (or numba's files for it) could have been written by another
    user: not yours (or root's), writable by group or others, or a symbolic link."""
    uid = _uid()
    if uid is None:
        return
    for top in (entry, *_numba_dirs(entry, key)):
        stack = [top]
        while stack:
            path = stack.pop()
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # numba's folder not made yet; a temporary file gone
                continue
            if stat.S_ISLNK(st.st_mode):
                why = "is a symbolic link"
            elif st.st_uid not in (uid, 0):
                why = f"belongs to uid {st.st_uid}, not to you (uid {uid})"
            elif _writers(st.st_mode):
                why = f"is writable by {_writers(st.st_mode)} (mode {stat.S_IMODE(st.st_mode):o})"
            else:
                if stat.S_ISDIR(st.st_mode):
                    stack.extend(Path(e.path) for e in os.scandir(path))
                continue
            raise _NotUsed(f"cache entry {path} {why}, so its code is not run; delete {top} to have it rebuilt")


def _owner_only(top: Path) -> None:
    """Take group's and others' write permission off your files under ``top`` (numba writes its cache files as
    the umask says; with ``umask 002`` a later process would refuse them)."""
    uid = _uid()
    if uid is None:
        return
    for path in (top, *top.rglob("*")):
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if st.st_uid == uid and _writers(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def _check_api() -> None:
    """Raise :class:`_NotUsed` when nutpie lacks an internal the cache builds on."""
    import nutpie
    import nutpie.compile_pymc as cp

    missing = [name for name in _NUTPIE_API if not hasattr(cp, name)]
    if missing:
        raise _NotUsed(f"nutpie {getattr(nutpie, '__version__', '?')} lacks nutpie.compile_pymc."
                       f"{', '.join(missing)}, which the cache builds on")


class _StoredInitialPoints:
    """nutpie's seeded start-vector function, with each seed's start vector kept in the cache entry.

    PyMC's initial-point function (support points of the priors, the overrides, U(-1, 1) jitter) takes
    ~0.5 s to build and compile, a tenth of a warm demo fit, yet a fit asks it for a handful of vectors that
    depend only on the model, the overrides, the jittered variables and the seed. Those are the key of a small
    file per seed; the function is built only when a vector is missing, and the vectors are the ones it
    returns, so the draws are the same either way.
    """

    def __init__(self, entry: Path, make_fn: Any, settings: str) -> None:
        import threading

        self.entry, self.make_fn, self.settings = entry, make_fn, settings
        self.fn = None
        self.lock = threading.Lock()

    def path(self, seed: Any) -> Path:
        h = hashlib.sha256(f"{self.settings}|{seed!r}".encode()).hexdigest()[:24]
        return self.entry / f"init-{h}.npy"

    def __call__(self, seed: Any = None) -> np.ndarray:
        with self.lock:
            p = self.path(seed) if seed is not None else None
            if p is not None:
                try:
                    return np.load(p, allow_pickle=False)
                except Exception:  # noqa: BLE001 - missing or damaged: recompute
                    pass
            if self.fn is None:
                self.fn = self.make_fn()
            value = np.ascontiguousarray(self.fn(seed), dtype=np.float64)
            if p is not None:
                try:
                    buf = io.BytesIO()
                    np.save(buf, value, allow_pickle=False)
                    _write_new(p, buf.getvalue())
                except Exception:  # noqa: BLE001 - a read-only cache still works
                    pass
            return value


def _initial_settings(pm_model: Any, initial_points: dict | None, jitter_rvs: set | None,
                      inputs: str | None = None) -> str:
    """Text identifying the initial-point settings (overrides with their values, jittered variables) and the data
    (``inputs``, else a hash of the model's data arrays): start vectors depend on the data too (centered cells
    start at their trend)."""
    h = hashlib.sha256(f"data:{inputs or _data_digest(pm_model)}|".encode())
    for name, val in sorted((initial_points or {}).items(), key=lambda kv: str(kv[0])):
        arr = np.ascontiguousarray(np.asarray(val, dtype=np.float64))
        h.update(f"{name}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    jit = sorted(rv.name for rv in (set(pm_model.free_RVs) if jitter_rvs is None else jitter_rvs))
    h.update(repr(jit).encode())
    return h.hexdigest()


def _load(pm_model: Any, entry: Path, key: str, make_ip_fn: Any, report: Callable[[str], None]) -> Any | None:
    """The compiled model from the cache entry, or ``None`` (entry incomplete; or stale or damaged: removed, and
    ``report`` told why)."""
    again = "removed, compiling it again"
    try:
        meta = pickle.loads((entry / _META).read_bytes())
    except FileNotFoundError:
        return None  # another process may be writing it
    except Exception as exc:  # noqa: BLE001 - unreadable
        _discard(entry, key)
        report(f"compile cache entry {entry} was unreadable ({_META}: {_one_line(exc)}): {again}")
        return None
    if not isinstance(meta, dict) or meta.get("versions") != _versions():
        _discard(entry, key)
        report(f"compile cache entry {entry} was written for other package versions: {again}")
        return None
    try:
        # without LOGP_INNER/EXPAND_INNER in the module this succeeds only from numba's cache
        logp_c, expand_c = _cfuncs(_load_module(entry, key))
        ip_fn = make_ip_fn(meta)
    except Exception as exc:  # noqa: BLE001
        _discard(entry, key)
        report(f"compile cache entry {entry}: its compiled code did not load ({_one_line(exc)}): {again}")
        return None
    compiled = _assemble(pm_model, meta, logp_c, expand_c, ip_fn)
    stats["hits"] += 1
    with contextlib.suppress(OSError):  # recently used (a read-only cache still works)
        os.utime(entry)
    return compiled


def compile_nutpie(
    pm_model: Any,
    *,
    initial_points: dict | None = None,
    jitter_rvs: set | None = None,
    cache: Path | str | None = None,
    inputs: str | None = None,
    on_compile: Callable[[], None] | None = None,
    on_problem: Callable[[str], None] | None = None,
) -> Any:
    """``nutpie.compile_pymc_model(pm_model, initial_points=..., jitter_rvs=...)``, cached across processes.

    Parameters
    ----------
    pm_model : pymc.Model
        The model.
    initial_points, jitter_rvs
        As in ``nutpie.compile_pymc_model``.
    cache : path, optional
        Cache directory (default: :func:`cache_dir`).
    inputs : str, optional
        Digest of what a pure builder made ``pm_model`` from (:func:`forecaster.model.model_digest`): names
        the data the stored start vectors belong to (default: a hash of the model's data arrays).
    on_compile : callable, optional
        Called once, without arguments, before the model is compiled (a cache miss, or a fallback); not on a
        cache hit. The CLI uses it to say why the first fit of a design takes long.
    on_problem : callable, optional
        Receives one line of text (before the compile, unless compiling into the cache is what failed)
        whenever the cache is not used although it is on
        (``"compile cache not used: <why>"``; the model is then compiled by ``nutpie.compile_pymc_model``), or
        an entry of it was damaged or stale and is replaced (``"compile cache entry <path> ...: removed,
        compiling it again"``). Without it, each such line is a :class:`CompileCacheWarning`. Turning the cache
        off (``FORECASTER_CACHE=off``) is not a problem: no line.

    Returns
    -------
    nutpie.compile_pymc.CompiledPyMCModel

    Notes
    -----
    Compiled without numba's fastmath: with it, the code compiled in the
    process that fills the cache and the code later processes load from it
    differed in the last bits of the log density (10 of 3,000 random points on
    the demo, 1e-12), and NUTS amplified that into different draws, so the
    same data and seed gave a different forecast on a first and a second run.
    Without fastmath they are bit-identical; the gradient costs the same.
    """
    import pytensor

    def report(line: str) -> None:
        if on_problem is not None:
            on_problem(line)
        else:
            warnings.warn(line, CompileCacheWarning, stacklevel=3)

    with pytensor.config.change_flags(numba__fastmath=False):
        return _compile_nutpie(pm_model, initial_points, jitter_rvs, cache, inputs, _once(on_compile), report)


def _once(fn: Callable[[], None] | None) -> Callable[[], None]:
    """``fn`` called at most once (a compile that fails in the cache and falls back announces itself once)."""
    done = []

    def call() -> None:
        if fn is not None and not done:
            done.append(True)
            fn()

    return call


def _compile_nutpie(pm_model: Any, initial_points: dict | None, jitter_rvs: set | None,
                    cache: Path | str | None, inputs: str | None, on_compile: Callable[[], None],
                    report: Callable[[str], None]) -> Any:
    import nutpie

    root = Path(cache).expanduser() if cache is not None else cache_dir()
    if root is not None:
        try:
            return _compile_cached(pm_model, root, initial_points, jitter_rvs, inputs, on_compile, report)
        except Exception as exc:  # noqa: BLE001 - any cache problem: compile the ordinary way, and say why
            why = str(exc) if isinstance(exc, _NotUsed) else f"unexpected {_one_line(exc)}"
            report(f"compile cache not used: {why}")
    stats["fallbacks"] += 1
    on_compile()
    return nutpie.compile_pymc_model(pm_model, initial_points=initial_points, jitter_rvs=jitter_rvs)


@contextlib.contextmanager
def _step(what: str):
    """Any failure inside as :class:`_NotUsed` saying ``what`` failed, and how."""
    try:
        yield
    except _NotUsed:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _NotUsed(f"{what} failed ({_one_line(exc)})") from exc


def _compile_cached(pm_model: Any, root: Path, initial_points: dict | None, jitter_rvs: set | None,
                    inputs: str | None, on_compile: Callable[[], None], report: Callable[[str], None]) -> Any:
    """The compiled model from the cache entry of ``pm_model``'s key, else compiled and stored there; raises
    :class:`_NotUsed` (saying why) when the cache cannot be used."""
    _check_api()
    with _step(f"creating the cache folder {root}"):
        if not root.exists():
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_root(root)
    with _step("hashing the model"):
        key = model_key(pm_model)
        settings = _initial_settings(pm_model, initial_points, jitter_rvs, inputs)
    entry = root / key

    def make_ip_fn(meta: dict) -> _StoredInitialPoints:
        return _StoredInitialPoints(entry, lambda: _flat_initial_point_fn(
            _initial_point_fn(pm_model, initial_points, jitter_rvs), meta), settings)

    compiled = None
    if os.path.lexists(entry):
        _check_entry(entry, key)  # nothing of it runs unless only you can have written it
        with _step(f"loading the cache entry {entry}"):
            compiled = _load(pm_model, entry, key, make_ip_fn, report) if entry.is_dir() else None
    if compiled is None:
        if not os.access(root, os.W_OK | os.X_OK):
            raise _NotUsed(f"cache folder {root} is not writable by you; set FORECASTER_CACHE to a folder of yours")
        with _step(f"writing to the cache folder {root}"):
            _prune(root, entry)
        on_compile()
        with _step(f"compiling the model into the cache entry {entry}"):
            compiled = _compile_and_store(pm_model, entry, key, _initial_point_fn(pm_model, initial_points, jitter_rvs),
                                          settings)
    return compiled


def clear_cache(cache: Path | str | None = None) -> None:
    """Remove the cache directory (default: :func:`cache_dir`)."""
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)

