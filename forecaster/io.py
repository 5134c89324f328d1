"""Saving and loading fits (netCDF DataTree) and writing output files atomically."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import xarray as xr

from .data import summarize
from .errors import FitFileError, ForecasterError
from .structure import Structure, resolve_structure
from .fit import Diagnostics, FitResult, diagnose, table_from_dataset
from .spec import spec_from_text

__all__ = ["save_fit", "load_fit", "atomic_path"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ForecasterError(f"{path}: folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers that append to an existing file must start from nothing
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Posterior attribute holding a fit's convergence diagnostics (JSON), so loading does not recompute them.
_DIAG_ATTR = "forecaster_diagnostics"


def save_fit(result: FitResult, path: str | Path) -> Path:
    """Write a fit to ``path`` (netCDF via h5netcdf), atomically, with its convergence diagnostics.

    Parameters
    ----------
    result : FitResult
        The fit (:func:`forecaster.fit`).
    path : str or Path
        Output file (``.nc``); written to a temporary file first and moved into place.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tree = result.tree.copy(deep=False)
    tree["posterior"].attrs[_DIAG_ATTR] = json.dumps(dataclasses.asdict(result.diagnostics))
    with atomic_path(path) as tmp:
        tree.to_netcdf(tmp, engine="h5netcdf")
    return path


def _stored_diagnostics(tree: xr.DataTree) -> Diagnostics:
    """The diagnostics saved with the fit (computing them took 0.23 s of loading the demo), else computed."""
    raw = tree["posterior"].attrs.get(_DIAG_ATTR)
    try:
        d = json.loads(str(raw))
        return Diagnostics(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except Exception:  # noqa: BLE001 - absent (older files) or unreadable
        return diagnose(tree)


def load_fit(path: str | Path) -> FitResult:
    """Read a fit written by :func:`save_fit` (or ``forecaster fit``).

    Parameters
    ----------
    path : str or Path
        The ``.nc`` file.

    Returns
    -------
    FitResult
        The posterior, the input table, the spec and the diagnostics stored with it.

    Raises
    ------
    forecaster.errors.FitFileError
        The file is missing, not a netCDF file, or not a complete forecaster fit.
    """
    path = Path(path)
    if not path.is_file():
        raise FitFileError(f"{path}: fit file not found; create one with 'forecaster fit DATA -o {path.name}'")
    try:
        with xr.open_datatree(path, engine="h5netcdf") as dt:
            tree = dt.load()
    except Exception as exc:
        raise FitFileError(f"{path}: not a forecaster fit file ({type(exc).__name__}); pass a .nc written by 'forecaster fit'") from None
    if "forecaster" not in tree.children or "posterior" not in tree.children:
        raise FitFileError(f"{path}: netCDF file lacks the forecaster groups; pass a .nc written by 'forecaster fit'")
    incomplete = f"{path}: not a complete forecaster fit"
    meta = tree["forecaster"].to_dataset()
    missing = [k for k in ("spec_text", "c0") if k not in meta.attrs]
    if missing:
        raise FitFileError(f"{incomplete} (no {', '.join(missing)} in its 'forecaster' group); refit with 'forecaster fit'")
    try:
        table = table_from_dataset(meta)
        spec = spec_from_text(str(meta.attrs["spec_text"]), f"{path} (saved spec)")
        cells = summarize(table, c0=float(meta.attrs["c0"]))
    except ForecasterError as exc:
        raise FitFileError(f"{incomplete}: its saved data or spec do not read back ({str(exc).splitlines()[0]})") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise FitFileError(f"{incomplete}: its saved data lack {exc}; refit with 'forecaster fit'") from None
    post = tree["posterior"]
    trend_vars = ("b_params", "b_tokens", "trend_share") if spec.structure.get("trend") == "additive" else ("b",)
    lost = [v for v in ("a", "sigma_item", *trend_vars) if v not in post]
    if lost:
        raise FitFileError(f"{incomplete}: its posterior lacks {', '.join(lost)}; refit with 'forecaster fit'")
    options = {k[len("option_"):]: v for k, v in meta.attrs.items() if k.startswith("option_")}
    try:  # the structure it was fitted with (files from before it was saved: resolved again from data and spec)
        structure = Structure.from_json(str(meta.attrs["structure"])) if "structure" in meta.attrs else None
    except (ValueError, TypeError) as exc:
        raise FitFileError(f"{incomplete}: its saved structure does not read back ({type(exc).__name__}); "
                           "refit with 'forecaster fit'") from None
    if structure is None and "bend_c" not in post:  # saved before the bend existed: its trend is a straight line
        structure = dataclasses.replace(resolve_structure(cells, spec), bend=False, bend_knots=0)
    return FitResult(tree=tree, data=table, spec=spec, cells=cells, diagnostics=_stored_diagnostics(tree), options=options,
                     structure=structure)
