"""Model specifications: structure and priors as reviewable TOML data files.

The default lives in ``models/default.toml`` (shipped in the wheel as
``forecaster/_models``). A user passes a name of a shipped spec or a path to an
edited copy.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pymc as pm

from .errors import SpecError

__all__ = ["ModelSpec", "load_spec", "spec_dir"]

REQUIRED_PRIORS = (
    "mu_a", "sigma_a", "mu_b", "sigma_b", "sigma_family", "setting_a", "setting_b",
    "sigma_setting_a", "sigma_setting_b", "sigma_cell", "sigma_item", "item_persistence",
    "em_concentration",
)
#: Priors needed only when a structure switch asks for them (switch -> prior).
OPTIONAL_PRIORS = {"spread_varies": ("spread_slope",), "allocation_effect": ("mu_alloc", "sigma_alloc"),
                   "model_deviation": ("sigma_model",), "em_floor": ("guess_rate",),
                   "family_task_effects": ("sigma_family_task_a", "sigma_family_task_b"), "bend": ("sigma_bend",)}
#: Priors of the additive trend (``trend = "additive"``).
ADDITIVE_PRIORS = ("trend_share", "mu_b_params", "sigma_b_params", "mu_b_tokens", "sigma_b_tokens")
# Priors that are spreads or rates: a fixed value must be positive.
_POSITIVE = {n for n in (*REQUIRED_PRIORS, *ADDITIVE_PRIORS) if n.startswith("sigma")} | {
    "em_concentration", "sigma_family_task_a", "sigma_family_task_b", "sigma_bend"}
#: The one set of structure defaults: the shipped ``models/default.toml`` (read below, after :func:`spec_dir`).
STRUCTURE_DEFAULTS: dict[str, Any] = {}
_CHOICES = {
    "parametrization": {"auto", "centered", "noncentered"},
    "em_likelihood": {"binomial", "betabinomial"},
    "em_expectation": {"spline", "gauss-hermite"},
    "allocation_effect": {True, False, "auto"},
    "model_deviation": {True, False, "auto"},
    "family_task_effects": {True, False, "auto"},
    "model_deviation_split": {True, False},
    "em_floor": {True, False, "auto"},
    "trend": {"loglinear", "additive"},
}
# Parameters of PyMC distributions that are scales or shapes (must be > 0).
_SCALE_PARAMS = {"sigma", "tau", "alpha", "beta", "nu", "lam", "b", "kappa", "scale"}
# Priors that are probabilities: a fixed value must lie in [0, 1).
_PROBABILITY = {"guess_rate"}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file; a model spec is a TOML file (see models/default.toml)") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the model spec ({exc.strerror or type(exc).__name__})") from None


def spec_dir() -> Path:
    """Folder holding the shipped specs (wheel: ``forecaster/_models``; source tree: ``models/``)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "_models", here.parent / "models"):
        if cand.is_dir():
            return cand
    raise SpecError("the shipped model specs are missing from this installation; reinstall forecaster")


def _shipped_structure() -> dict[str, Any]:
    path = spec_dir() / "default.toml"
    try:
        return dict(tomllib.loads(_read_text(path))["structure"])
    except (tomllib.TOMLDecodeError, KeyError):
        raise SpecError(f"{path}: the shipped default spec is broken; reinstall forecaster") from None


STRUCTURE_DEFAULTS.update(_shipped_structure())


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model specification: structure switches and priors as values."""

    name: str
    structure: dict[str, Any]
    priors: dict[str, dict[str, Any]]
    text: str = field(repr=False, default="")

    def prior(self, name: str, *, dims=None, shape=None, rv_name: str | None = None) -> Any:
        """Create the PyMC random variable for prior ``name`` (named ``rv_name``, default ``name``) in the current model."""
        p = dict(self.priors[name])
        label = rv_name or name
        if "value" in p:  # a fixed value (no pooling): kept in the posterior as a constant
            import pytensor.tensor as pt

            val = pt.as_tensor(float(p["value"]))
            if dims is not None:
                n = len(pm.modelcontext(None).coords[dims])
                val = pt.fill(pt.zeros(n), val)
            elif shape is not None:
                val = pt.fill(pt.zeros(shape), val)
            return pm.Deterministic(label, val, dims=dims)
        dist = p.pop("dist")
        kw: dict[str, Any] = {}
        if dims is not None:
            kw["dims"] = dims
        if shape is not None:
            kw["shape"] = shape
        return getattr(pm, dist)(label, **p, **kw)

    def prior_params(self, name: str) -> dict[str, Any]:
        p = dict(self.priors[name])
        p.pop("dist", None)
        return p


def _parse(text: str, where: str) -> ModelSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where}: not valid TOML ({exc}); fix the syntax") from None
    structure = dict(STRUCTURE_DEFAULTS)
    for key, val in raw.get("structure", {}).items():
        if key not in STRUCTURE_DEFAULTS:
            raise SpecError(f"{where}: unknown [structure] key '{key}'; known: {', '.join(STRUCTURE_DEFAULTS)}")
        if key in _CHOICES and (val not in _CHOICES[key] or (isinstance(val, int) and not isinstance(val, bool))):
            raise SpecError(f"{where}: [structure] {key} = {val!r}; choose one of {sorted(_CHOICES[key], key=str)}")
        default = STRUCTURE_DEFAULTS[key]
        if key == "bend_spacing":
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val <= 5:
                raise SpecError(f"{where}: [structure] bend_spacing = {val!r}; give decades of compute in (0, 5], e.g. 0.5")
            structure[key] = float(val)
            continue
        if key in ("auto_slope_se_ratio", "auto_cell_se_ratio"):
            if val is not False and (isinstance(val, bool) or not isinstance(val, (int, float)) or not val > 0):
                raise SpecError(f"{where}: [structure] {key} = {val!r}; give a number > 0 (e.g. 0.5), or false")
            structure[key] = val
            continue
        if key not in _CHOICES and isinstance(default, bool) and not isinstance(val, bool):
            raise SpecError(f"{where}: [structure] {key} = {val!r}; write true or false")
        if key not in _CHOICES and isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise SpecError(f"{where}: [structure] {key} = {val!r}; give a whole number >= 1")
        structure[key] = val
    priors = raw.get("priors", {})
    for name in REQUIRED_PRIORS:
        if name not in priors:
            raise SpecError(f"{where}: [priors] lacks '{name}'; copy it from the default spec")
    for switch, names in OPTIONAL_PRIORS.items():
        for name in names:
            if structure[switch] and name not in priors:
                raise SpecError(f"{where}: [structure] {switch} = {structure[switch]!r} needs a prior '{name}'; "
                                "copy it from the default spec")
    if structure["trend"] == "additive":
        for name in ADDITIVE_PRIORS:
            if name not in priors:
                raise SpecError(f"{where}: [structure] trend = \"additive\" needs a prior '{name}'; "
                                "copy it from the default spec")
    known = REQUIRED_PRIORS + tuple(n for names in OPTIONAL_PRIORS.values() for n in names) + ADDITIVE_PRIORS
    for name, p in priors.items():
        if name not in known:
            raise SpecError(f"{where}: unknown prior '{name}'; known: {', '.join(known)}")
        if isinstance(p, dict) and set(p) == {"value"}:
            if not isinstance(p["value"], (int, float)) or isinstance(p["value"], bool):
                raise SpecError(f"{where}: prior '{name}' = {{ value = ... }} needs a number, got {p['value']!r}")
            if name in _POSITIVE and not p["value"] > 0:
                raise SpecError(f"{where}: prior '{name}' is a spread or rate; its fixed value must be > 0")
            if name in _PROBABILITY and not 0 <= p["value"] < 1:
                raise SpecError(f"{where}: prior '{name}' is a probability; its fixed value must lie in [0, 1)")
            continue
        if not isinstance(p, dict) or "dist" not in p:
            raise SpecError(f"{where}: prior '{name}' needs a table with 'dist', e.g. {{ dist = \"Normal\", mu = 0, sigma = 1 }}")
        dist = getattr(pm, str(p["dist"]), None)
        if dist is None or not isinstance(dist, type) or not issubclass(dist, pm.Distribution):
            raise SpecError(f"{where}: prior '{name}' names unknown distribution {p['dist']!r}; use a PyMC name such as Normal")
        params = {k: v for k, v in p.items() if k != "dist"}
        allowed = {
            n for n, par in inspect.signature(dist.dist).parameters.items()
            if par.kind not in (par.VAR_KEYWORD, par.VAR_POSITIONAL)
        } - {"cls", "args", "kwargs"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise SpecError(
                f"{where}: prior '{name}' has bad parameters ({', '.join(unknown)} not a parameter of "
                f"{p['dist']}; it takes {', '.join(sorted(allowed))})"
            )
        for pname, pval in params.items():
            if not isinstance(pval, (int, float)) or isinstance(pval, bool) or not np.isfinite(pval):
                raise SpecError(f"{where}: prior '{name}': {pname} = {pval!r} must be a finite number")
            if pname in _SCALE_PARAMS and not pval > 0 and not (pname == "alpha" and p["dist"] == "SkewNormal"):
                raise SpecError(f"{where}: prior '{name}': {pname} = {pval!r} is a scale or shape; it must be > 0")
        if "lower" in params and "upper" in params and not params["lower"] < params["upper"]:
            raise SpecError(f"{where}: prior '{name}': lower must be < upper")
        try:
            dist.dist(**params)
        except Exception as exc:  # wrong parameter names or values
            raise SpecError(f"{where}: prior '{name}' has bad parameters ({exc}); check the PyMC docs for {p['dist']}") from None
    name = raw.get("meta", {}).get("name", Path(where).stem)
    return ModelSpec(name=name, structure=structure, priors={k: dict(v) for k, v in priors.items()}, text=text)


def load_spec(model: str | Path | None = None) -> ModelSpec:
    """Load a spec by shipped name (``"default"``) or by path to a TOML file.

    A spec whose ``[meta]`` says ``extends = "<shipped name>"`` lists only what differs from that spec
    (one line per key, e.g. ``trend = "additive"`` under ``[structure]``); it is read as the shipped spec's
    text with those lines put in place (:func:`_extend`), so the spec a fit stores is complete.

    Parameters
    ----------
    model : str or Path, optional
        Shipped name (``"default"``, ``"additive"``, ``"unpooled"``) or path to a ``.toml`` spec; default
        ``"default"``.

    Returns
    -------
    ModelSpec

    Raises
    ------
    forecaster.errors.SpecError
        Unknown name, unreadable file, or a spec that fails its checks (one line saying which).
    """
    if model is None:
        model = "default"
    p = Path(model)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SpecError(f"{p}: model spec file not found; pass a shipped name ({_names()}) or a path to a .toml file")
        return _parse(_extend(_read_text(p), str(p)), str(p))
    cand = spec_dir() / f"{model}.toml"
    if not cand.is_file():
        raise SpecError(f"unknown model '{model}'; shipped models: {_names()}, or pass a path to a .toml file")
    return _parse(_extend(_read_text(cand), str(cand)), str(cand))


_SECTION = re.compile(r"^\[(\w+)\]\s*$")
_KEY = re.compile(r"^([A-Za-z_]\w*)\s*=")


def _key_lines(lines: list[str]) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Where each ``key = ...`` line of each section is, and the line after each section's last key line."""
    keys, ends, section = {}, {}, ""
    for i, line in enumerate(lines):
        if m := _SECTION.match(line):
            section = m.group(1)
        elif (m := _KEY.match(line)) and section:
            keys[(section, m.group(1))] = i
            ends[section] = i + 1
    return keys, ends


def _extend(text: str, where: str) -> str:
    """The complete text of a spec that ``extends`` a shipped one (else ``text`` as it is): the shipped spec's
    text, each key the overlay sets replaced by (or, if new, added as) the overlay's line, under the overlay's
    own leading comments."""
    try:
        base_name = tomllib.loads(text).get("meta", {}).get("extends")
    except tomllib.TOMLDecodeError:
        return text  # _parse names the syntax error
    if base_name is None:
        return text
    base = spec_dir() / f"{base_name}.toml"
    if not isinstance(base_name, str) or not base.is_file():
        raise SpecError(f"{where}: extends unknown model {base_name!r}; shipped models: {_names()}")
    base_text = _read_text(base)
    base_raw = tomllib.loads(base_text)
    if base_raw.get("meta", {}).get("extends"):
        raise SpecError(f"{where}: extends {base_name!r}, which extends another spec; extend a complete spec")
    lines, out = text.splitlines(), base_text.splitlines()
    keys, _ = _key_lines(lines)
    head = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
    for (section, key), i in sorted(keys.items(), key=lambda kv: kv[1]):
        if (section, key) == ("meta", "extends"):
            continue
        at, ends = _key_lines(out)
        if (section, key) in at:
            out[at[(section, key)]] = lines[i]
        elif section in ends:
            out.insert(ends[section], lines[i])
        else:
            out += ["", f"[{section}]", lines[i]]
    merged = "\n".join(lines[:head] + out) + "\n"
    try:
        same = tomllib.loads(merged) == _overlaid(base_raw, tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        same = False
    if not same:
        raise SpecError(f"{where}: write each key that differs from {base_name!r} on one line (key = value)")
    return merged


def _overlaid(base: dict, over: dict) -> dict:
    """What the extended spec must parse to: ``base`` with ``over``'s keys set, section by section."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, vals in over.items():
        out.setdefault(section, {}).update({k: v for k, v in vals.items() if (section, k) != ("meta", "extends")})
    return out


def spec_from_text(text: str, where: str = "<saved spec>") -> ModelSpec:
    """Parse a spec from its TOML text (used when loading a saved fit)."""
    return _parse(text, where)


def _names() -> str:
    try:
        return ", ".join(sorted(p.stem for p in spec_dir().glob("*.toml")))
    except SpecError:
        return "(none)"
