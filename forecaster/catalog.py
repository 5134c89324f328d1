"""Training compute of public model families, and the user's compute table.

Evaluation logs rarely carry training compute. :func:`lookup` answers from the
built-in catalog ``catalog.csv`` (shipped next to this module): one row per
released model with ``params``, ``tokens`` (training tokens), ``compute``
(training FLOPs, where a source states it; otherwise ``6 * params * tokens``)
and a ``source`` column citing the paper or model card. Families covered:
Pythia (all sizes, standard and deduped, v0 names, and every training
checkpoint: ``pythia-1b@step43000`` or revision ``step43000`` means
``43000 * 2,097,152`` tokens), GPT-2 (parameters only: its training tokens were
never published, so its compute is unknown), GPT-3, OPT, BLOOM, LLaMA 1/2/3,
Falcon, T5/Flan-T5, OLMo, Qwen/Qwen2/Qwen2.5, GPT-J, and a few instruction-tuned
derivatives (which carry their base model's pretraining compute).

Names are matched case-insensitively after dropping an organisation prefix
(``EleutherAI/pythia-70m`` -> ``pythia-70m``) and Hugging Face cache prefixes
(``models--llama/7B`` -> ``llama-7b``). Nothing is ever guessed: an unknown
name gives ``None`` and the importers then raise a
:class:`~forecaster.errors.DataError` naming the model and asking for
``--compute-table``.

A compute table (:func:`read_compute_table`) is a CSV with a ``model`` column
and either ``compute`` or both ``params`` and ``tokens`` (optionally
``revision`` or ``step``); it takes precedence over the catalog.
"""

from __future__ import annotations

import csv
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from .errors import DataError

__all__ = [
    "Entry", "CATALOG_PATH", "lookup", "normalize", "split_revision", "family_of", "catalog_rows",
    "read_compute_table", "resolve", "fill_compute",
]

CATALOG_PATH = Path(__file__).with_name("catalog.csv")


class Entry(NamedTuple):
    """What is known about one model's training: any of params/tokens/compute may be None."""

    params: float | None
    tokens: float | None
    compute: float | None
    source: str


_REV = re.compile(r"(?:global_)?step-?(\d+)(?:-tokens\d+[bm]?)?", re.IGNORECASE)


def split_revision(name: str, revision: str | None = None) -> tuple[str, int | None]:
    """``'pythia-1b@step43000'`` -> ``('pythia-1b', 43000)``; a separate ``revision`` wins.

    Accepted checkpoint spellings: ``NAME@step43000``, ``NAME,revision=step43000``
    and ``revision='step43000'`` (also ``global_step43000``, ``step43000-tokens182B``).
    Revisions that are not training steps (``main``, a commit hash) give step ``None``.
    """
    name = str(name).strip()
    rev_in_name = None
    m = re.search(r"(?:@|,\s*revision=)([^,@]*)$", name)
    if m:
        rev_in_name = m.group(1).strip()
        name = name[: m.start()].strip()
    step = None
    for rev in (revision, rev_in_name):
        if rev is not None and str(rev).strip():
            mm = _REV.fullmatch(str(rev).strip())
            if mm:
                step = int(mm.group(1))
                break
    return name, step


def normalize(name: str) -> str:
    """Catalog key of a model name: lower case, no organisation or HF cache prefix."""
    s = str(name).strip().lower()
    s = s.removeprefix("models--")
    s = s.replace("--", "/")
    parts = [p for p in s.split("/") if p]
    if not parts:
        return s
    last = parts[-1]
    if len(parts) >= 2 and re.fullmatch(r"\d+(\.\d+)?[bm]", last):  # models--llama/7B -> llama-7b
        last = f"{parts[-2]}-{last}"
    return last


def _num(v: str) -> float | None:
    v = (v or "").strip()
    return float(v) if v else None


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict]:
    table: dict[str, dict] = {}
    with open(CATALOG_PATH, newline="") as f:
        for row in csv.DictReader(f):
            rec = {
                "model": row["model"],
                "family": row["family"],
                "params": _num(row["params"]),
                "tokens": _num(row["tokens"]),
                "compute": _num(row["compute"]),
                "tokens_per_step": _num(row["tokens_per_step"]),
                "source": row["source"],
            }
            for key in [row["model"], *[a for a in row["aliases"].split("|") if a]]:
                table[normalize(key)] = rec
    return table


def catalog_rows() -> list[dict]:
    """The distinct catalog entries (for listing and tests)."""
    seen, out = set(), []
    for rec in _catalog().values():
        if rec["model"] not in seen:
            seen.add(rec["model"])
            out.append(rec)
    return out


def family_of(model_name: str) -> str | None:
    """Catalog family of a model name (``None`` when unknown)."""
    rec = _catalog().get(normalize(split_revision(model_name)[0]))
    return rec["family"] if rec else None


def _compute(params: float | None, tokens: float | None, compute: float | None) -> float | None:
    if compute is not None:
        return compute
    if params is not None and tokens is not None:
        return 6.0 * params * tokens
    return None


def lookup(model_name: str, revision: str | None = None) -> Entry | None:
    """Training params, tokens, compute (FLOPs) and source of a public model, or ``None``.

    ``model_name`` may carry an organisation prefix and a checkpoint
    (``EleutherAI/pythia-410m@step43000``, or pass ``revision='step43000'``).
    A checkpoint of a family without a known tokens-per-step gives ``None``.
    ``compute`` is ``None`` where only the parameter count is known (GPT-2).
    """
    base, step = split_revision(model_name, revision)
    rec = _catalog().get(normalize(base))
    if rec is None:
        return None
    params, tokens, compute, source = rec["params"], rec["tokens"], rec["compute"], rec["source"]
    if step is not None:
        tps = rec["tokens_per_step"]
        if tps is None:
            return None
        tokens = step * tps
        compute = None
        source = f"{source}; checkpoint step {step} x {tps:,.0f} tokens/step"
    return Entry(params, tokens, _compute(params, tokens, compute), source)


class ComputeTable(dict):
    """``{model key: Entry}`` read from a user CSV; ``families`` holds its optional ``family`` column."""

    families: dict[str, str]


def read_compute_table(path: str | Path) -> ComputeTable:
    """Read a user compute table: CSV with ``model`` and ``compute`` or ``params`` + ``tokens``.

    Keys are both the exact model string and its normalized catalog key (with
    ``@step<N>`` appended when a ``revision``/``step`` column names a checkpoint).
    """
    p = Path(path)
    try:
        exists = p.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte in it
        raise DataError(f"{p}: compute table cannot be opened ({getattr(exc, 'strerror', None) or exc}); "
                        "check the --compute-table path") from None
    if not exists:
        raise DataError(f"{p}: compute table not found; check the --compute-table path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass the compute table's CSV file to --compute-table")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{p}: compute table cannot be read as CSV ({exc}); save it as UTF-8 CSV") from None
    except OSError as exc:  # no permission to read it, ...
        raise DataError(f"{p}: compute table cannot be opened ({exc.strerror or exc}); "
                        "check the --compute-table path") from None
    if not rows:
        raise DataError(f"{p}: compute table is empty; give a header 'model,compute' (or 'model,params,tokens') and rows")
    names = [str(c).strip().lower() for c in reader.fieldnames or [] if c]
    dup = next((c for c in names if names.count(c) > 1), None)
    if dup is not None:  # csv.DictReader would keep the last of them silently
        raise DataError(f"{p}: compute table has column {dup!r} {names.count(dup)} times; keep one")
    cols = set(names)
    if "model" not in cols or not ("compute" in cols or {"params", "tokens"} <= cols):
        raise DataError(
            f"{p}: compute table needs columns 'model' and 'compute' (training FLOPs), or 'model', 'params' and "
            f"'tokens'; found {sorted(cols)}"
        )
    out = ComputeTable()
    out.families = {}
    seen: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(rows, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        model = row.get("model", "")
        if not model:
            raise DataError(f"{p}, line {i}: empty 'model'; name the model as it appears in the results")
        try:
            params, tokens, compute = (_num(row.get(c, "")) for c in ("params", "tokens", "compute"))
        except ValueError:
            raise DataError(f"{p}, line {i}: params/tokens/compute must be plain numbers (e.g. 1.2e21)") from None
        c = _compute(params, tokens, compute)
        if c is None or not math.isfinite(c) or c <= 0:
            raise DataError(
                f"{p}, line {i}: model {model!r} needs compute > 0, or params and tokens > 0; fill them in"
            )
        entry = Entry(params, tokens, c, f"compute table {p.name}")
        rev = row.get("revision") or (f"step{row['step']}" if row.get("step") else "")
        if (model, rev) in seen:  # which row would win is not the user's intent to guess
            raise DataError(f"{p}, line {i}: model {model!r}{f' at {rev}' if rev else ''} is listed twice (also on "
                            f"line {seen[model, rev]}); keep one row per model")
        seen[model, rev] = i
        base, step = split_revision(model, rev or None)
        out[model] = entry
        if row.get("family"):
            out.families[model] = row["family"]
        key = normalize(base) + (f"@step{step}" if step is not None else "")
        out.setdefault(key, entry)
        if rev:
            out.setdefault(f"{model}@{rev}", entry)
    return out


def resolve(model_name: str, revision: str | None = None, table: dict[str, Entry] | None = None) -> Entry | None:
    """Compute table first (exact name, then normalized key), then the catalog."""
    if table:
        base, step = split_revision(model_name, revision)
        keys = [model_name]
        if revision:
            keys.append(f"{model_name}@{revision}")
        keys.append(normalize(base) + (f"@step{step}" if step is not None else ""))
        for k in keys:
            if k in table:
                return table[k]
    return lookup(model_name, revision)


def _default_family(model: str) -> str:
    """Family of a model the catalog does not know: its organisation/provider prefix, else its name."""
    base = split_revision(model)[0]
    if "/" in base:
        return base.split("/", 1)[0]
    return base


def fill_compute(
    df,
    compute_table: str | Path | dict | None = None,
    *,
    source: str = "input",
    family: str | None = None,
    drop_unknown: bool = False,
):
    """Fill ``compute`` (and ``family`` where empty) of an importer's table; drop untrained rows.

    Existing positive ``compute`` values are kept. Missing ones come from the
    compute table (a path or the output of :func:`read_compute_table`), then the
    built-in catalog. Rows whose compute is 0 (step-0 checkpoints) are dropped; negative compute is an error.
    Adds a ``compute_source`` column. With ``drop_unknown=True`` the rows of
    models without known compute are dropped (with a warning naming them)
    instead of raising.

    Raises
    ------
    DataError
        Naming the first models without known compute and asking for ``--compute-table``.
    """
    import numpy as np
    import pandas as pd

    table = read_compute_table(compute_table) if isinstance(compute_table, (str, Path)) else compute_table
    df = df.copy()
    if "compute" not in df.columns:
        df["compute"] = np.nan
    df["compute"] = pd.to_numeric(df["compute"], errors="coerce").astype(float)
    if "compute_source" not in df.columns:
        df["compute_source"] = np.where(df["compute"].notna(), source, None)
    need = df["compute"].isna()
    unknown: list[str] = []
    partial: dict[str, Entry] = {}
    for model in pd.unique(df.loc[need, "model"]):
        hit = resolve(model, table=table)
        rows = need & (df["model"] == model)
        if hit is None or hit.compute is None:
            unknown.append(model)
            if hit is not None:
                partial[model] = hit
            continue
        df.loc[rows, "compute"] = hit.compute
        df.loc[rows, "compute_source"] = hit.source
    if unknown and drop_unknown:
        import warnings

        warnings.warn(f"{source}: dropped models without known training compute: {', '.join(unknown)}", stacklevel=2)
        df = df[~df["model"].isin(unknown)].reset_index(drop=True)
        if df.empty:
            raise DataError(f"{source}: no model has known training compute; pass --compute-table FILE")
        unknown = []
    if unknown:
        names = ", ".join(repr(m) for m in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        why = ""
        if unknown[0] in partial:
            why = f" (the catalog knows only its parameter count: {partial[unknown[0]].source})"
        raise DataError(
            f"{source}: no training compute known for model {names}{why}; pass --compute-table FILE with columns "
            "model,compute (FLOPs) or model,params,tokens, or --drop-unknown to leave them out"
        )
    fams = getattr(table, "families", {}) if table else {}
    if family is not None:
        df["family"] = family
    else:
        if "family" not in df.columns:
            df["family"] = None
        empty = df["family"].isna() | (df["family"].astype(str).str.strip() == "")
        for model in pd.unique(df.loc[empty, "model"]):
            fam = fams.get(model) or family_of(model) or _default_family(model)
            df.loc[empty & (df["model"] == model), "family"] = fam
    negative = df["compute"] < 0
    if negative.any():
        i = negative.idxmax()
        raise DataError(f"{source}: model {df.at[i, 'model']!r} has compute {df.at[i, 'compute']:g} < 0 FLOPs; fix "
                        "the value (0 marks an untrained checkpoint, which is dropped)")
    untrained = df["compute"] == 0
    if untrained.any():
        df = df[~untrained].reset_index(drop=True)
        if df.empty:
            raise DataError(f"{source}: every row is an untrained (compute 0) checkpoint; give trained models")
    return df
