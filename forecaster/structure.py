"""The resolved structure of a fitted model: every ``"auto"`` of the spec made explicit for one dataset.

A spec says what the model may contain (``em_floor = "auto"``, ``parametrization = "auto"``, ...); the
data decide what it does contain. :func:`resolve_structure` makes those decisions once, and the result is
what :func:`forecaster.model.build_model` builds, what a fit saves and what ``forecaster summary`` prints.

Two kinds of decisions are kept apart:

* **model choices** change the model (its prior and likelihood): which terms exist, which per-task
  parameters are free or fixed;
* **reparametrizations** change only how the same model is sampled (centered or not, the deviation split);
  the prior and posterior predictive do not depend on them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from .data import CellData
from .spec import ModelSpec

__all__ = ["Structure", "resolve_structure"]

#: Fields that are reparametrizations (the rest are model choices).
REPARAMETRIZATIONS = ("centered_task", "centered_slope", "centered_cell", "deviation_split")


@dataclass(frozen=True)
class Structure:
    """The model as fitted. Per-task flags are tuples over ``cells.tasks``, per-cell flags over cells."""

    # ---- model choices
    trend: str
    family_effects: bool
    setting_effects: bool
    cell_deviation: bool
    allocation: bool
    model_deviation: bool
    spread_varies: bool
    spread_free: tuple[bool, ...]
    floor: tuple[bool, ...]
    persistence_free: tuple[bool, ...]
    em_likelihood: str
    em_expectation: str
    quadrature_nodes: int
    # ---- reparametrizations (same model, another way to sample it)
    centered_task: tuple[bool, ...]
    centered_slope: tuple[bool, ...]
    centered_cell: tuple[bool, ...]
    deviation_split: bool
    # ---- model choices added later (default off: fits saved before them had none)
    family_task_slopes: bool = False
    family_task_intercepts: bool = False
    bend: bool = False
    bend_spacing: float = 0.5
    bend_knots: int = 0

    def model_choices(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in REPARAMETRIZATIONS}

    def generative(self) -> Structure:
        """The same model with the reparametrization that samples every variable from its own prior (no split):
        what prior predictive draws and simulation use."""
        return replace(self, deviation_split=False)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Structure:
        raw = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    def describe(self, tasks: list[str]) -> list[str]:
        """Lines for people: the model's terms, then how it is sampled."""

        def some(flags: tuple[bool, ...]) -> str:
            if all(flags):
                return "all tasks"
            on = [t for t, f in zip(tasks, flags) if f]
            return ", ".join(on) if on else "none"

        terms = [f"trend {self.trend}"]
        terms += [name for name, on in (("family offsets", self.family_effects), ("setting effects", self.setting_effects),
                                         ("cell deviations", self.cell_deviation), ("params/tokens allocation", self.allocation),
                                         ("model deviations", self.model_deviation),
                                         ("family-by-task intercepts", self.family_task_intercepts),
                                         ("family-by-task slopes", self.family_task_slopes)) if on]
        if self.bend:
            terms.append(f"bend (knots every {self.bend_spacing:g} decades, {self.bend_knots} a side)")
        lines = ["model: " + ", ".join(terms)]
        lines.append(f"item spread grows as the task is learned: {some(self.spread_free) if self.spread_varies else 'off'}")
        lines.append(f"exact-match floor (guess rate): {some(self.floor)}")
        lines.append(f"exact-match counts: {self.em_likelihood}, expectation by {self.em_expectation}")

        def which(flags: tuple[bool, ...]) -> str:
            if all(flags) or not any(flags):
                return "centered" if all(flags) else "noncentered"
            return f"centered for {sum(flags)} of {len(flags)}"

        samp = f"intercepts {which(self.centered_task)}, slopes {which(self.centered_slope)}"
        if self.cell_deviation:
            samp += f", cells {which(self.centered_cell)}"
        if self.deviation_split:
            samp += ", model deviations split along the trend"
        lines.append("sampled with: " + samp)
        return lines


def resolve_structure(cells: CellData, spec: ModelSpec) -> Structure:
    """Decide every ``"auto"`` of ``spec`` on ``cells`` (the rules live beside the model, in :mod:`forecaster.model`)."""
    from . import model as m

    st = spec.structure
    n_task = len(cells.tasks)
    centered_task, centered_cell = m.choose_parametrization(cells, spec)
    dev_idx = m.model_deviation_index(cells, spec)
    split = m.model_deviation_split(cells, spec, dev_idx, centered_task)
    additive = st.get("trend") == "additive"
    if split is not None and split[2].any():
        centered_slope = np.ones(n_task, bool)  # the slope is sampled as its moved (effective) value
    elif additive:
        centered_slope = np.asarray(centered_task, bool)
    else:
        centered_slope = m.slope_centering(cells, spec, centered_task)
    ident = np.zeros(n_task, bool)
    ident[np.asarray(cells.group_task, int)] = True
    persistence_free = ident if m.persistence_mean(spec) is not None else np.ones(n_task, bool)
    spread_varies = bool(st["spread_varies"])
    ft_slopes = (not additive) and m.use_family_task(cells, spec)
    return Structure(
        trend=str(st.get("trend", "loglinear")),
        family_effects=bool(st["family_effects"]) and len(cells.families) >= 2,
        setting_effects=bool(st["setting_effects"]) and len(cells.settings) >= 2,
        cell_deviation=bool(st["cell_deviation"]),
        allocation=(not additive) and m.use_allocation(cells, spec),
        model_deviation=dev_idx is not None,
        spread_varies=spread_varies,
        spread_free=_flags(m.spread_identified(cells) if spread_varies else np.zeros(n_task, bool)),
        floor=_flags(m.floor_tasks(cells, spec)),
        persistence_free=_flags(persistence_free),
        em_likelihood=str(st["em_likelihood"]),
        em_expectation=str(st["em_expectation"]),
        quadrature_nodes=int(st["quadrature_nodes"]),
        centered_task=_flags(centered_task),
        centered_slope=_flags(centered_slope),
        centered_cell=_flags(centered_cell),
        deviation_split=split is not None,
        family_task_slopes=ft_slopes,
        # the pair intercepts are the family offsets with one task, and the model deviations' share with checkpoints
        family_task_intercepts=ft_slopes and dev_idx is None and n_task >= 2,
        bend=bool(st["bend"]) and not additive,
        bend_spacing=float(st["bend_spacing"]),
        bend_knots=int(st["bend_knots"]) if st["bend"] and not additive else 0,
    )


def _flags(mask) -> tuple[bool, ...]:
    return tuple(bool(v) for v in np.asarray(mask, bool))
