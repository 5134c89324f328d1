"""The ``forecaster`` command line: parse, call the library, print, set the exit code.

Exit codes: 0 success; 1 the posterior cannot be trusted under ``--strict``;
2 bad input or query (one line on stderr, nothing written).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import ForecasterError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Bayesian scaling forecaster: when will a language-model capability cross a threshold?",
)

# options shared by the commands that read evaluation results (fit, backtest, import)
FromFormat = Annotated[str, typer.Option("--from", help="Input format: tidy | lm-eval | inspect | bigbench | long")]
ComputeTable = Annotated[Optional[Path], typer.Option(help="CSV: model -> params, tokens or compute.")]
NItems = Annotated[Optional[int], typer.Option(
    "--n-items", help="bigbench: examples behind each score, where the file does not record them.")]
NTokens = Annotated[Optional[str], typer.Option(
    "--n-tokens", help="bigbench, long: answer length in tokens, K or TASK=K,TASK=K (default 1).")]
DropUnknown = Annotated[bool, typer.Option(
    help="Drop (with a warning) models whose compute is unknown, instead of stopping.")]

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
FORMATS = ("table", "json", "csv")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn):
    """Call ``fn``; turn expected errors into one line and exit code 2, anything else into one line and 1."""
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            out = fn()
        for w in caught:  # forecaster's own warnings (e.g. dropped models) as one line each
            if issubclass(w.category, UserWarning) and "forecaster" in str(w.filename):
                typer.echo(f"warning: {w.message}", err=True)
        return out
    except typer.Exit:
        raise
    except ForecasterError as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a traceback only when asked for (--debug); otherwise one line that says how
        if _debug():
            import traceback

            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        hint = "" if _debug() else "; run again with --debug for the traceback"
        _fail(f"unexpected {type(exc).__name__}: {first} (please report this{hint})", 1)


def _debug() -> bool:
    return os.environ.get("FORECASTER_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="Print the traceback of an unexpected error (also FORECASTER_DEBUG=1).")] = False) -> None:
    """Bayesian scaling forecaster: when will a language-model capability cross a threshold?"""
    if debug:
        os.environ["FORECASTER_DEBUG"] = "1"


def _floats(text: Optional[str], what: str, example: str = "1e23,1e24") -> Optional[list[float]]:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ForecasterError(f"--{what} takes comma-separated numbers, e.g. {example}; got {text!r}") from None
    if not vals:
        raise ForecasterError(f"--{what} is empty; give comma-separated numbers")
    return vals


def _check_format(fmt: str, output: Optional[Path]) -> None:
    """An output format we know, and (when given) an output file we can write."""
    if fmt not in FORMATS:
        raise ForecasterError(f"unknown --format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if output is not None:
        _check_out(output)


def _check_out(path: Path, suffixes: tuple[str, ...] | None = None) -> None:
    if suffixes and path.suffix.lower() not in suffixes:
        raise ForecasterError(f"{path}: output must end in {', '.join(suffixes)}")
    if not path.parent.exists():
        raise ForecasterError(f"{path}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ForecasterError(f"{path}: is a folder; give a file name for the output")


def _print_diagnostics(result) -> None:
    from rich.console import Console

    con = Console(stderr=True, highlight=False, soft_wrap=True)  # one message, one line
    d = result.diagnostics
    con.print(f"convergence: {'; '.join(d.lines())}")
    for note in d.notes:
        con.print(f"[yellow]note: {note}[/]")
    if d.warnings:
        con.print("[bold red]WARNING: this posterior cannot be trusted yet:[/]")
        for w in d.warnings:
            con.print(f"[red]  - {w}[/]")
    else:
        con.print("[green]converged: R-hat <= 1.01, ESS >= 400, no divergences[/]")


def _reader_options(fmt: str, n_items: Optional[int], n_tokens: Optional[str]) -> dict:
    """``--n-items`` / ``--n-tokens`` as the importer's options (only the formats that take them)."""
    opts: dict = {}
    if n_items is not None:
        if fmt != "bigbench":
            raise ForecasterError("--n-items is for --from/FORMAT bigbench (other formats record their item counts)")
        if n_items < 1:
            raise ForecasterError(f"--n-items must be >= 1, got {n_items}")
        opts["n_items"] = int(n_items)
    if n_tokens is not None:
        if fmt not in ("bigbench", "long"):
            raise ForecasterError("--n-tokens is for bigbench and long (other formats record answer lengths)")
        try:
            if "=" in n_tokens:
                pairs = [part.split("=", 1) for part in n_tokens.split(",") if part.strip()]
                val: object = {t.strip(): float(k) for t, k in pairs}
                nums = list(val.values())
            else:
                val = float(n_tokens)
                nums = [val]
        except ValueError:
            raise ForecasterError(f"--n-tokens takes K or TASK=K,TASK=K (tokens >= 1), got {n_tokens!r}") from None
        if not nums or not all(math.isfinite(v) and v >= 1 for v in nums):
            raise ForecasterError(f"--n-tokens takes K or TASK=K,TASK=K (tokens >= 1), got {n_tokens!r}")
        opts["n_tokens"] = val
    return opts


def _load_inputs(data: list[Path], fmt: str, compute_table: Optional[Path], pool: bool, drop_unknown: bool = False,
                 options: Optional[dict] = None):
    from .data import load_table, validate

    if fmt == "tidy":
        if options:
            raise ForecasterError("--n-items / --n-tokens are for imported formats (--from bigbench or long)")
        return load_table(data, allow_single_compute=pool)
    from .importers import import_results

    df = import_results(fmt, [str(p) for p in data], compute_table=compute_table, drop_unknown=drop_unknown,
                        **(options or {}))
    return validate(df, source=", ".join(map(str, data)), allow_single_compute=pool)


@app.command()
def fit(
    data: Annotated[list[Path], typer.Argument(help="Tidy CSV/Parquet file(s), or result files with --from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fit (.nc).")],
    model: Annotated[str, typer.Option(help="Shipped model name or path to a TOML spec.")] = "default",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    draws: Annotated[int, typer.Option(help="Posterior draws per chain.")] = 1000,
    tune: Annotated[int, typer.Option(help="Tuning steps per chain.")] = 1000,
    chains: Annotated[int, typer.Option(help="Number of chains.")] = 4,
    sampler: Annotated[str, typer.Option(help="nutpie | pymc | numpyro")] = "nutpie",
    target_accept: Annotated[float, typer.Option(help="NUTS target acceptance.")] = 0.95,
    strict: Annotated[bool, typer.Option(help="Exit 1 when the posterior cannot be trusted (the fit file is still written, for inspection).")] = False,
    pool_single_compute: Annotated[bool, typer.Option(
        help="Fit tasks seen at one compute only through the pooled slope prior.")] = False,
    remedies: Annotated[bool, typer.Option(
        help="When the fit is warned, fit again once with longer tuning and smaller steps (more draws if ESS < 400).")] = True,
    from_format: FromFormat = "tidy",
    compute_table: ComputeTable = None,
    drop_unknown: DropUnknown = False,
    n_items: NItems = None,
    n_tokens: NTokens = None,
) -> None:
    """Fit the hierarchical scaling model and save the posterior."""

    def go():
        from .fit import fit as run_fit
        from .io import save_fit

        _check_out(output, (".nc",))
        table = _load_inputs(data, from_format, compute_table, pool_single_compute, drop_unknown,
                             _reader_options(from_format, n_items, n_tokens))
        t0 = time.perf_counter()
        result = run_fit(
            table, model=model, seed=seed, draws=draws, tune=tune, chains=chains, sampler=sampler,
            target_accept=target_accept, allow_single_compute=pool_single_compute,
            progressbar=sys.stderr.isatty(), status=_notice, remedies=remedies,
        )
        took = time.perf_counter() - t0
        save_fit(result, output)
        cells = result.cells
        typer.echo(f"fit {len(cells.tasks)} tasks, {len(cells.families)} families, {len(cells.settings)} settings, "
                   f"{cells.n_cells} cells in {took:.1f} s -> {output}", err=True)
        _print_diagnostics(result)
        if strict and not result.diagnostics.trusted:
            raise typer.Exit(1)

    _run(go)


def _notice(text: str) -> None:
    """A status line on stderr (e.g. before a long compile)."""
    typer.echo(text, err=True)


def _write_table(df, fmt: str, output: Optional[Path], title: str, records=None) -> None:

    from .io import atomic_path

    if fmt == "json":
        text = json.dumps(records if records is not None else df.to_dict("records"), indent=2, allow_nan=False)
    elif fmt == "csv":
        text = df.to_csv(index=False)
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for col in df.columns:
            t.add_column(str(col).replace("log10_compute_", "log10 C ").replace("prob_", "P ").replace("_", " "),
                         justify="right")
        for _, row in df.iterrows():
            cells = []
            for col, v in row.items():
                if isinstance(v, float):
                    if math.isnan(v):  # a crossing beyond range; elsewhere (no --budget given) nothing to show
                        cells.append("not reached" if str(col).startswith("log10_compute_") else "–")
                    elif col in ("k", "n") and float(v).is_integer():  # token and sample counts
                        cells.append(str(int(v)))
                    else:
                        cells.append(f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.2f}")
                else:
                    cells.append(str(v))
            t.add_row(*cells)
        if output is None:
            Console(width=200).print(t)
            return
        con = Console(record=True, width=200, file=open("/dev/null", "w"))
        con.print(t)
        text = con.export_text()
    if output is None:
        typer.echo(text)
    else:
        with atomic_path(output) as tmp:
            tmp.write_text(text)


@app.command()
def forecast(
    fit_file: Annotated[Path, typer.Argument(metavar="FIT.nc", help="A fit written by 'forecaster fit'.")],
    metric: Annotated[str, typer.Option(help="exact_match | token_accuracy | edit_distance | pass_at_n")] = "exact_match",
    threshold: Annotated[float, typer.Option(help="Level to reach (edit_distance: at most this many wrong tokens).")] = 0.5,
    k: Annotated[Optional[float], typer.Option(help="Answer length in tokens (default: each task's own).")] = None,
    n: Annotated[int, typer.Option(help="Samples for pass_at_n.")] = 1,
    task: Annotated[Optional[list[str]], typer.Option(help="Task(s) to forecast (default all).")] = None,
    family: Annotated[Optional[list[str]], typer.Option(help="Family/families (default all).")] = None,
    setting: Annotated[Optional[list[str]], typer.Option(help="Setting(s) (default all).")] = None,
    budget: Annotated[Optional[float], typer.Option(help="Compute budget in FLOPs for P(reached by budget).")] = None,
    at: Annotated[Optional[str], typer.Option(help="Compute values for the metric's posterior, e.g. 1e23,1e24.")] = None,
    quantiles: Annotated[str, typer.Option(help="Quantiles of log10 crossing compute.")] = "0.05,0.25,0.5,0.75,0.95",
    tokens_per_param: Annotated[Optional[float], typer.Option(
        help="Forecast models trained with this many tokens per parameter (fits with params and tokens; "
             "default: the data's median).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Posterior of the compute at which a metric crosses a threshold."""

    def go():
        from .forecast import forecast as run_forecast
        from .io import load_fit

        _check_format(fmt, output)
        qs = _floats(quantiles, "quantiles", "0.05,0.5,0.95")
        at_vals = _floats(at, "at")
        result = load_fit(fit_file)
        fc = run_forecast(result, metric=metric, threshold=threshold, k=k, n=n, tasks=task or None,
                          families=family or None, settings=setting or None, budget=budget, at=at_vals,
                          quantiles=qs, tokens_per_param=tokens_per_param)
        name = f"pass@{n} (n = {n} samples)" if metric == "pass_at_n" else metric
        title = f"{name} >= {threshold:g}" if metric != "edit_distance" else f"{name} <= {threshold:g}"
        if not result.diagnostics.trusted:
            typer.echo("warning: the fit's posterior did not converge cleanly (see 'forecaster summary'); "
                       "treat these numbers with caution", err=True)
        if fmt == "json":
            _write_table(fc.table, fmt, output, title, records=fc.records())
        elif fmt == "csv" and fc.at_table is not None and output is None:
            _write_table(fc.table, fmt, None, title)
            _write_table(fc.at_table, fmt, None, "metric at compute")
        else:
            _write_table(fc.table, fmt, output, f"compute (log10 FLOPs) at which {title}")
            if fc.at_table is not None and fmt == "table" and output is None:
                _write_table(fc.at_table, fmt, None, f"{metric} of a new model at chosen compute")

    _run(go)


@app.command()
def plot(
    fit_file: Annotated[Path, typer.Argument(metavar="FIT.nc")],
    task: Annotated[str, typer.Option(help="Task to draw, or 'all' for a grid.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="out.png | out.svg | out.pdf")],
    family: Annotated[Optional[str], typer.Option(help="Family (default: first).")] = None,
    setting: Annotated[Optional[str], typer.Option(help="Setting (default: reference).")] = None,
    metric: Annotated[str, typer.Option()] = "exact_match",
    k: Annotated[Optional[float], typer.Option(help="Answer length in tokens (default: the task's own).")] = None,
    n: Annotated[int, typer.Option(help="Samples for pass_at_n.")] = 1,
    threshold: Annotated[Optional[float], typer.Option()] = None,
) -> None:
    """Observed points, posterior bands, threshold and crossing density."""

    def go():
        from .io import atomic_path, load_fit
        from .plotting import plot_forecast

        _check_out(output, PLOT_SUFFIXES)
        result = load_fit(fit_file)
        fig = plot_forecast(result, task, family=family, setting=setting, metric=metric, k=k, n=n,
                            threshold=threshold)
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format=output.suffix.lstrip(".").lower(), bbox_inches="tight", dpi=120)
        typer.echo(f"wrote {output}", err=True)

    _run(go)


def _interval(row, q: str, pct: bool = False, signed: bool = False) -> str:

    def f(v: float) -> str:
        if not math.isfinite(v):
            return "never" if v > 0 else "-never" if v < 0 else "n/a"
        if pct:
            return f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
        return f"{v:+.2f}" if signed else f"{v:.2f}"

    return f"{f(row[f'{q}_q50'])} [{f(row[f'{q}_q05'])}, {f(row[f'{q}_q95'])}]"


@app.command()
def effects(
    fit_file: Annotated[Path, typer.Argument(metavar="FIT.nc", help="A fit with two or more settings.")],
    reference: Annotated[Optional[str], typer.Option(help="Setting to compare against (default: the fit's reference, e.g. 0-shot).")] = None,
    setting: Annotated[Optional[list[str]], typer.Option(help="Setting(s) to report (default: all but the reference).")] = None,
    task: Annotated[Optional[list[str]], typer.Option(help="Task(s) to report (default all).")] = None,
    family: Annotated[Optional[str], typer.Option(help="Family whose trend is used (default: the average family).")] = None,
    metric: Annotated[str, typer.Option(help="exact_match | token_accuracy | edit_distance | pass_at_n")] = "exact_match",
    k: Annotated[Optional[float], typer.Option(help="Answer length in tokens (default: each task's own).")] = None,
    n: Annotated[int, typer.Option(help="Samples for pass_at_n.")] = 1,
    at: Annotated[Optional[float], typer.Option(help="Compute (FLOPs) for the metric effect, e.g. 1e22 (default: each task's median observed compute).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    plot_file: Annotated[Optional[Path], typer.Option("--plot", help="Also draw a forest plot: out.png | out.svg | out.pdf")] = None,
) -> None:
    """Posterior of each setting's effect (few-shot, instruction tuning, ...) per task and pooled."""

    def go():
        from .effects import setting_effects
        from .io import atomic_path, load_fit

        _check_format(fmt, output)
        if plot_file is not None:
            _check_out(plot_file, PLOT_SUFFIXES)
        result = load_fit(fit_file)
        eff = setting_effects(result, reference=reference, settings=setting or None, tasks=task or None,
                              family=family, metric=metric, k=k, n=n, at=at)
        fig = None
        if plot_file is not None:  # draw before writing anything: a failure leaves no output file
            from .plotting import plot_setting_effects

            fig = plot_setting_effects(eff)
        if not result.diagnostics.trusted:
            typer.echo("warning: the fit's posterior did not converge cleanly (see 'forecaster summary'); "
                       "treat these numbers with caution", err=True)
        title = f"setting effects vs '{eff.reference}' (median [90% interval])"
        if fmt == "json":
            _write_table(eff.table, fmt, output, title, records=eff.records())
        elif fmt == "csv":
            _write_table(eff.table, fmt, output, title)
        else:
            import pandas as pd

            unit = "pts" if metric != "edit_distance" else "tokens"
            rows = []
            for _, r in eff.table.iterrows():
                rows.append({
                    "task": r.task, "setting": r.setting, "log10 C": f"{r.log10_compute:.1f}",
                    f"{metric} ref": _interval(r, "metric_ref", pct=metric != "edit_distance"),
                    f"effect ({unit})": _interval(r, "metric_effect", pct=metric != "edit_distance", signed=True),
                    "P better": f"{r.prob_better:.2f}",
                    "compute-equiv. (decades)": _interval(r, "decades", signed=True),
                    "CE factor": _interval(r, "ce_factor"),
                    "slope shift": _interval(r, "db", signed=True),
                })
            _write_table(pd.DataFrame(rows), fmt, output, title)
        if fig is not None:
            with atomic_path(plot_file) as tmp:
                fig.savefig(tmp, format=plot_file.suffix.lstrip(".").lower(), bbox_inches="tight", dpi=120)
            typer.echo(f"wrote {plot_file}", err=True)

    _run(go)


@app.command()
def check(
    fit_file: Annotated[Path, typer.Argument(metavar="FIT.nc")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Figure: ppc.png | .svg | .pdf")] = None,
    draws: Annotated[int, typer.Option(help="Posterior draws to replicate the data from.")] = 500,
    seed: Annotated[int, typer.Option()] = 0,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv (json and csv: every observation)")] = "table",
    table: Annotated[Optional[Path], typer.Option(help="Write the table here instead of printing it.")] = None,
) -> None:
    """Posterior predictive check: observed against replicated data per task, PIT, the worst-fitting cells."""

    def go():
        from .check import check as run_check
        from .check_plots import plot_check
        from .io import atomic_path, load_fit

        _check_format(fmt, table)
        if output is not None:
            _check_out(output, PLOT_SUFFIXES)
        if draws < 1:
            raise ForecasterError(f"--draws must be >= 1, got {draws}")
        result = run_check(load_fit(fit_file), draws=draws, seed=seed)
        if fmt == "table":
            _write_table(result.tasks, fmt, table, "observed inside the replicated 50% / 90% intervals, per task")
            worst = result.worst(5)[["quantity", "task", "setting", "model", "observed", "rep_q05", "rep_q95", "pit"]]
            if table is None:
                _write_table(worst, fmt, None, "worst-fitting cells (PIT farthest from 0.5)")
        else:
            _write_table(result.points, fmt, table, "")
        if output is not None:
            fig = plot_check(result)
            with atomic_path(output) as tmp:
                fig.savefig(tmp, format=output.suffix.lstrip(".").lower(), bbox_inches="tight", dpi=110)
            typer.echo(f"wrote {output}", err=True)

    _run(go)


@app.command()
def summary(fit_file: Annotated[Path, typer.Argument(metavar="FIT.nc")]) -> None:
    """Parameters and convergence diagnostics of a saved fit."""

    def go():
        import pandas as pd

        from .io import load_fit

        result = load_fit(fit_file)
        c = result.cells
        typer.echo(f"model spec: {result.spec.name}; tasks: {', '.join(c.tasks)}; families: {', '.join(c.families)}; "
                   f"settings: {', '.join(c.settings)} (reference: {c.settings[0]}); c0 = {c.c0:g} (log10 FLOPs)")
        typer.echo("options: " + ", ".join(f"{k}={v}" for k, v in result.options.items()))
        for line in result.structure.describe(c.tasks):
            typer.echo(line)
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            typer.echo(result.summary().to_string())
        _print_diagnostics(result)

    _run(go)


@app.command()
def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the demo's fit, table and plot.")] = Path(
        "forecaster-demo"),
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The whole job on the embedded demo dataset: fit, forecast table, plot."""

    def go():
        from .fit import fit as run_fit
        from .forecast import forecast as run_forecast
        from .io import atomic_path, save_fit
        from .plotting import plot_forecast
        from .simulate import demo_data

        if output.exists() and not output.is_dir():
            raise ForecasterError(f"{output}: exists and is not a folder; give a folder for the demo's files")
        output.mkdir(parents=True, exist_ok=True)
        data = demo_data()
        with atomic_path(output / "demo-data.csv") as tmp:
            data.to_csv(tmp, index=False)
        typer.echo(f"demo data: {len(data)} rows, tasks {', '.join(sorted(data.task.unique()))} -> "
                   f"{output / 'demo-data.csv'}", err=True)
        # 2000 draws a chain: at 1000 the demo's sigma_cell sits at R-hat ~1.01, so its verdict hung on the seed
        result = run_fit(data, seed=seed, draws=2000, progressbar=sys.stderr.isatty(), status=_notice)
        save_fit(result, output / "demo-fit.nc")
        _print_diagnostics(result)
        fc = run_forecast(result, metric="exact_match", threshold=0.5, families=[result.cells.families[0]],
                          budget=1e23)
        _write_table(fc.table, "table", None, "compute (log10 FLOPs) at which exact match >= 0.5")
        with atomic_path(output / "demo-forecast.csv") as tmp:
            fc.table.to_csv(tmp, index=False)
        fig = plot_forecast(result, "all", metric="exact_match", threshold=0.5)
        with atomic_path(output / "demo-forecast.png") as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", dpi=110)
        typer.echo(f"wrote {output / 'demo-fit.nc'}, {output / 'demo-forecast.csv'}, {output / 'demo-forecast.png'}",
                   err=True)

    _run(go)


@app.command()
def backtest(
    data: Annotated[list[Path], typer.Argument(help="Tidy CSV/Parquet file(s), or result files with --from.")],
    holdout_above: Annotated[Optional[float], typer.Option(
        help="Hold out every model with compute above this (FLOPs), e.g. 1e21.")] = None,
    holdout_largest: Annotated[Optional[str], typer.Option(
        help="Hold out each family's N largest models (all their @step checkpoints); a list such as 6,5,4,3 "
             "runs one fold per N (rolling origin by model size).")] = None,
    folds: Annotated[Optional[int], typer.Option(
        help="Rolling origin: K cuts at quantiles of log compute; fit below each, forecast above.")] = None,
    threshold: Annotated[float, typer.Option(help="Accuracy whose crossing compute is forecast.")] = 0.5,
    methods: Annotated[str, typer.Option(help="Comma-separated: forecaster, logistic, unpooled.")] = (
        "forecaster,logistic,unpooled"),
    model: Annotated[str, typer.Option(help="Spec of the forecaster method (name or TOML path).")] = "default",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    draws: Annotated[int, typer.Option(help="Posterior draws per chain (each Bayesian fit).")] = 1000,
    tune: Annotated[int, typer.Option(help="Tuning steps per chain.")] = 1000,
    chains: Annotated[int, typer.Option(help="Number of chains.")] = 4,
    sampler: Annotated[str, typer.Option(help="nutpie | pymc | numpyro")] = "nutpie",
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv (csv: the held-out points)")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Calibration + predictions figure (.png/.svg/.pdf).")] = None,
    from_format: FromFormat = "tidy",
    compute_table: ComputeTable = None,
    drop_unknown: DropUnknown = False,
    n_items: NItems = None,
    n_tokens: NTokens = None,
) -> None:
    """Fit on the smaller models, forecast the held-out larger ones, score against two baselines."""

    def go():
        from .backtest import METHODS
        from .backtest import backtest as run_backtest
        from .io import atomic_path

        given = [o for o, v in (("--holdout-above", holdout_above), ("--holdout-largest", holdout_largest),
                                ("--folds", folds)) if v is not None]
        if len(given) != 1:
            raise ForecasterError("give exactly one of --holdout-above FLOPS, --holdout-largest N or --folds K"
                                  + (f" (got {', '.join(given)})" if given else ""))
        n_largest = None
        if holdout_largest is not None:
            try:
                n_largest = [int(v) for v in holdout_largest.split(",")]
            except ValueError:
                raise ForecasterError(f"--holdout-largest takes a number of models or a list such as 6,5,4,3; "
                                      f"got {holdout_largest!r}") from None
            if min(n_largest) < 1:
                raise ForecasterError(f"--holdout-largest must be >= 1 model, got {min(n_largest)}")
        if folds is not None and folds < 1:
            raise ForecasterError(f"--folds must be >= 1, got {folds}")
        if holdout_above is not None and not holdout_above > 0:
            raise ForecasterError(f"--holdout-above must be > 0 FLOPs, got {holdout_above:g}")
        _check_format(fmt, None)
        meths = [m.strip() for m in methods.split(",") if m.strip()]
        bad = [m for m in meths if m not in METHODS]
        if bad or not meths:
            raise ForecasterError(f"unknown method {bad[0] if bad else '(none)'!r} in --methods; choose from "
                                  f"{', '.join(METHODS)}")
        if not 0 < threshold < 1:
            raise ForecasterError(f"--threshold must be an accuracy in (0, 1), got {threshold:g}")
        if output is not None:
            _check_out(output)
        if plot is not None:
            _check_out(plot, PLOT_SUFFIXES)
        table = _load_inputs(data, from_format, compute_table, True, drop_unknown,
                             _reader_options(from_format, n_items, n_tokens))
        res = run_backtest(table, holdout_above=holdout_above, holdout_largest=n_largest, folds=folds,
                           threshold=threshold, methods=meths, model=model, seed=seed, draws=draws, tune=tune,
                           chains=chains, sampler=sampler, progressbar=sys.stderr.isatty())
        for s in res.splits:
            typer.echo(f"{s['label']}: fit {', '.join(s['train_models'])}; forecast {', '.join(s['test_models'])}",
                       err=True)
        for note in res.notes:
            typer.echo(f"note: {note}", err=True)
        if fmt == "json":
            _write_table(None, "json", output, "", records=res.to_json_dict())
        elif fmt == "csv":
            _write_table(res.points, "csv", output, "")
        else:
            from math import inf

            from rich.console import Console
            from rich.table import Table

            def rich_table(df, title):
                t = Table(title=title)
                for col in df.columns:
                    t.add_column(str(col), justify="right")
                for _, row in df.iterrows():
                    t.add_row(*["–" if v is None or (isinstance(v, float) and v != v) else
                                ("not reached" if v > 0 else "already") if isinstance(v, float) and abs(v) == inf
                                else f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
                return t

            sc = res.scores_table()
            cr = res.crossings.drop(columns=["threshold"]).rename(columns=lambda c: c.replace("log10_compute_", "C "))
            tables = [rich_table(sc, f"held-out accuracy: coverage, CRPS and median abs. error (pp); crossings of "
                                     f"{threshold:g}"),
                      rich_table(cr, f"log10 compute at which accuracy reaches {threshold:g}: observed vs forecast")]
            if len(res.splits) > 1:
                fs = res.fold_scores.copy()
                fs.insert(0, "split", [res.splits[int(i)]["label"] for i in fs.pop("fold")])
                tables.insert(1, rich_table(fs, "per fold (the scores above pool all folds)"))
            if output is None:
                con = Console(width=200)
                for t in tables:
                    con.print(t)
            else:
                con = Console(record=True, width=200, file=open("/dev/null", "w"))
                for t in tables:
                    con.print(t)
                with atomic_path(output) as tmp:
                    tmp.write_text(con.export_text())
        if plot is not None:
            from .backtest_plots import plot_backtest

            fig = plot_backtest(res)
            with atomic_path(plot) as tmp:
                fig.savefig(tmp, format=plot.suffix.lstrip(".").lower(), bbox_inches="tight", dpi=120)
            typer.echo(f"wrote {plot}", err=True)

    _run(go)


@app.command("import")
def import_cmd(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="lm-eval | inspect | bigbench | long")],
    paths: Annotated[list[Path], typer.Argument(help="Result files or folders.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Tidy CSV to write.")],
    compute_table: ComputeTable = None,
    drop_unknown: DropUnknown = False,
    n_items: NItems = None,
    n_tokens: NTokens = None,
) -> None:
    """Convert evaluation logs to the tidy input table."""

    def go():
        from .data import validate
        from .importers import import_results
        from .io import atomic_path

        _check_out(output, (".csv",))
        df = import_results(fmt, [str(p) for p in paths], compute_table=compute_table, drop_unknown=drop_unknown,
                            **_reader_options(fmt, n_items, n_tokens))
        validate(df, source=", ".join(map(str, paths)), allow_single_compute=True)
        with atomic_path(output) as tmp:
            df.to_csv(tmp, index=False)
        typer.echo(f"wrote {len(df)} rows -> {output}", err=True)

    _run(go)


def _hoist_debug(args: list[str]) -> list[str]:
    """``--debug`` is accepted anywhere before ``--`` (``forecaster fit x.csv --debug``), as the global option."""
    cut = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:cut]:
        return args
    return ["--debug"] + [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]


def main() -> None:
    """Entry point: usage errors (a bad option value, a missing argument) as one line and exit code 2."""
    from typer import Abort, BadParameter

    # click's UsageError (a bad option value, a missing argument), reached through typer's public API: typer.BadParameter
    # is click's BadParameter, a UsageError by click's documented hierarchy, whether typer vendors click (>= 0.20, as
    # the private typer._click) or uses the click package. tests/test_private_apis.py checks that this finds it.
    UsageError = next((c for c in BadParameter.__mro__ if c.__name__ == "UsageError"), BadParameter)

    try:
        rc = app(args=_hoist_debug(sys.argv[1:]), standalone_mode=False)
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help text
            exc.show()
            sys.exit(exc.exit_code)
        path = exc.ctx.command_path.split(" ", 1) if exc.ctx is not None else []
        hint = f" (see 'forecaster {path[1]} --help')" if len(path) == 2 else " (see 'forecaster --help')"
        first = (exc.format_message().strip().splitlines() or [type(exc).__name__])[0]
        typer.echo(f"error: {first}{hint}", err=True)
        sys.exit(exc.exit_code)
    except Abort:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
