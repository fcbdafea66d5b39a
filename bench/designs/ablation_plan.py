"""A one-factor-at-a-time ablation: from a base configuration, vary one parameter at a time.

Each factor (a parameter the space searches) gets a few levels; every other parameter keeps the
base value. Every cell trains with the same seeds, so a level and the base can be compared seed by
seed (see :mod:`bench.results.what_matters`). The base configuration is one shared cell: a
factor's level that equals the base value *is* the base cell, not a retrained copy, so all factors
are measured against the very same runs.

This module only plans: it produces cells and (cell, seed) jobs and knows nothing of training,
Optuna or MLflow.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.space import (
    PARAM_DEFAULTS,
    PER_LAYER_OK,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    Space,
)

# The default factors, in the order a report lists them: data, then optimiser, then architecture,
# then regularisation and the schedule. `activation` may be named too but is not a default.
FACTORS = (
    "normalization",
    "optimizer",
    "n_layers",
    "units",
    "dropout",
    "l2",
    "learning_rate",
    "lr_schedule",
    "batch_size",
)
BASE = "base"  # the factor (and level) name of the shared base cell
MAX_POINTS = 5  # a numeric factor's grid: enough to see a trend, few enough to afford 3+ seeds
MIN_POINTS = 3
FASHION_MNIST_TRAIN = 55_000  # 60,000 training images less the 5,000 held out for validation


def unknown_factor_error(name: str, known: Sequence[str]) -> BenchError:
    """The error for a factor name that is not a parameter, with the nearest valid name.

    Args:
        name: The name as the user typed it.
        known: The valid factor names.

    Returns:
        A :class:`BenchError` to raise; its message suggests the closest name, if any is close.
    """
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return BenchError(f"unknown factor '{name}'; {hint}factors: {', '.join(known)}")


def _uniform(value: Any) -> Any:
    """The one value of a per-layer list that is the same in every layer, else None."""
    if isinstance(value, (list, tuple)):
        return value[0] if value and all(v == value[0] for v in value) else None
    return value


def _single_level(name: str, why: str) -> BenchError:
    return BenchError(
        f"'{name}' is not a factor: {why}, so it has a single level. Leave it out of the "
        "factors, or give it a range or choices in the space file"
    )


def levels_for(name: str, param: Param, base_value: Any, n_points: int = MAX_POINTS) -> list:
    """The levels one factor takes in the ablation.

    A categorical parameter takes every choice (the base value is added if the space does not
    offer it). An int or float parameter takes ``n_points`` points evenly spread over
    ``[low, high]`` (log-spaced if ``log``), ints rounded to the parameter's step, floats without a
    step to 3 significant digits. The base value is always a level: it replaces the nearest grid
    point other than ``low`` and ``high``, so the grid keeps its ends and its size; a base value
    outside the range becomes a new end in the same way. A narrow int range gives all its values
    (``n_layers`` from 1 to 3: ``[1, 2, 3]``).

    Per-layer parameters (``units``, ``dropout``, ``activation``) vary all layers together: a
    level is one value used in every layer. A base configuration whose layers differ (say units
    ``[512, 128]``) has no level equal to it; the base cell is then the reference only.

    Args:
        name: The parameter name, used in messages.
        param: The parameter as the space defines it.
        base_value: The base configuration's value (a per-layer list for per-layer parameters).
        n_points: Grid size for numeric parameters, from 3 to 5.

    Returns:
        The levels, sorted for numeric parameters, in the space's order for categorical ones.

    Raises:
        BenchError: the parameter is fixed or has only one possible value.
        ValueError: ``n_points`` outside 3..5.
    """
    if not MIN_POINTS <= n_points <= MAX_POINTS:
        raise ValueError(f"n_points must be from {MIN_POINTS} to {MAX_POINTS}, got {n_points}")
    base = _uniform(base_value)
    if isinstance(param, FixedParam):
        raise _single_level(name, f"the space fixes it at {param.value!r}")
    if isinstance(param, CategoricalParam):
        levels = list(dict.fromkeys(param.choices))
        if base is not None and base not in levels:
            levels.append(base)
        if len(levels) < 2:
            raise _single_level(name, f"its only choice is {levels[0]!r}")
        return levels
    if isinstance(param, IntParam) and isinstance(base, float) and base.is_integer():
        base = int(base)  # 256.0 from a JSON round trip is the int level 256
    if param.low == param.high and (base is None or base == param.low):
        raise _single_level(name, f"its range is the single value {param.low!r}")
    return _numeric_grid(param, base, n_points)


def _numeric_grid(param: IntParam | FloatParam, base: Any, n: int) -> list:
    to_axis = math.log if param.log else float  # distances are measured on the sampling scale
    if param.log:
        raw = np.geomspace(param.low, param.high, n)
    else:
        raw = np.linspace(param.low, param.high, n)
    grid = sorted({_snap(param, float(x)) for x in raw})
    if base is None or base in grid:
        return grid
    ends = {grid[0], grid[-1]}
    points = sorted({*grid, base})
    while len(points) > len(grid):
        inner = [p for p in points if p != base and p not in ends]
        if not inner:  # a two-value range: keep both ends and the base
            break
        points.remove(min(inner, key=lambda p: abs(to_axis(p) - to_axis(base))))
    return points


def _snap(param: IntParam | FloatParam, x: float) -> int | float:
    """A grid point on the parameter's own lattice: its step, or 3 significant digits."""
    if isinstance(param, IntParam):
        k = round((x - param.low) / param.step)
        return int(min(param.high, param.low + k * param.step))
    if param.step is not None:
        k = round((x - param.low) / param.step)
        return float(min(param.high, round(param.low + k * param.step, 12)))
    if x in (param.low, param.high) or x == 0:
        return float(x)
    return float(min(param.high, max(param.low, float(f"{x:.3g}"))))


@dataclass(frozen=True)
class Cell:
    """One configuration of the ablation: ``factor`` set to ``level``, the rest at the base.

    The shared base cell has ``factor == level == "base"`` and ``is_base`` set. ``config`` is a
    complete model configuration (per-layer values as lists of ``n_layers`` values), the shape
    :func:`bench.space.suggest` returns.
    """

    factor: str
    level: Any
    config: dict = field(hash=False, compare=True)
    is_base: bool = False


@dataclass(frozen=True)
class Plan:
    """The cells of an ablation and the seeds each of them trains with.

    Attributes:
        base: The shared base cell (also ``cells[0]``).
        cells: Every configuration to train, each once per seed; the base cell first.
        seeds: The seeds every cell trains with, so results pair by seed.
        levels: Per factor, all its levels in order, the base value included where it is one.
        base_levels: Per factor, the base configuration's value as a level label (what
            ``what_matters`` shows on the base row of that factor).
    """

    base: Cell
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    levels: dict[str, tuple]
    base_levels: dict[str, Any]

    @property
    def factors(self) -> tuple[str, ...]:
        """The factors, in plan order."""
        return tuple(self.levels)

    def cell(self, factor: str, level: Any) -> Cell:
        """The cell that measures ``factor`` at ``level``: the base cell for the base value."""
        for c in self.cells:
            if c.factor == factor and c.level == level:
                return c
        if factor in self.levels and level in self.levels[factor]:
            return self.base
        raise KeyError(f"no cell for {factor}={level!r}")

    def jobs(self) -> Iterator[tuple[Cell, int]]:
        """Every (cell, seed) to train, seed by seed.

        All cells with the first seed come before any cell with the second, so a run cut short
        still has a complete one-seed picture, and later seeds add pairs to it.
        """
        for seed in self.seeds:
            for c in self.cells:
                yield c, seed

    def job_configs(self) -> list[dict]:
        """The configuration of every job, in :meth:`jobs` order (what the estimate costs)."""
        return [c.config for c, _ in self.jobs()]

    def describe(self) -> list[str]:
        """Lines for ``--dry-run``: sizes, the base configuration, each factor's levels."""
        n_jobs = len(self.cells) * len(self.seeds)
        lines = [
            f"ablation: {_count(len(self.levels), 'factor')}, {len(self.cells)} cells "
            f"(1 shared base + {len(self.cells) - 1}), {_count(len(self.seeds), 'seed')} "
            f"({', '.join(map(str, self.seeds))}) -> {n_jobs} jobs",
            "base: " + " ".join(f"{k}={fmt_level(v)}" for k, v in self.base.config.items()),
        ]
        width = max((len(f) for f in self.levels), default=0)
        for factor, levels in self.levels.items():
            shown = [fmt_level(v) + ("*" if v == self.base_levels[factor] else "") for v in levels]
            lines.append(f"  {factor:<{width}}  {' | '.join(shown)}")
        lines.append("  (* = the base value: that level is the shared base cell)")
        return lines

    def estimate_seconds(
        self,
        seconds_per_epoch_sample: float,
        max_epochs: int,
        *,
        n_train: int = FASHION_MNIST_TRAIN,
        n_inputs: int = 784,
        n_classes: int = 10,
    ) -> float:
        """Upper bound on the training time of all jobs; see :func:`estimate_seconds`."""
        return estimate_seconds(
            self.job_configs(),
            self.base.config,
            seconds_per_epoch_sample,
            max_epochs,
            n_train=n_train,
            n_inputs=n_inputs,
            n_classes=n_classes,
        )


@dataclass(frozen=True)
class ConfigCell:
    """A cell that is only a configuration (the path's and the global design's cells)."""

    config: dict


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def fmt_level(value: Any) -> str:
    """A level or configuration value for people: ``0.001``, ``256``, ``512/128`` per layer."""
    if isinstance(value, (list, tuple)):
        one = _uniform(value)
        return fmt_level(one) if one is not None else "/".join(fmt_level(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def dense_macs(config: dict, n_inputs: int = 784, n_classes: int = 10) -> int:
    """Multiply-accumulates of one sample's forward pass through the dense layers.

    The sum of ``inputs x outputs`` over the hidden layers (widths from ``config["units"]``) and
    the softmax layer. Normalization, dropout and activations are cheap next to it and left out.

    Args:
        config: A complete model configuration.
        n_inputs: Input features (784 for 28x28 images, 64 for ``digits``).
        n_classes: Output classes.

    Returns:
        The count, a relative cost of configurations.
    """
    widths = [n_inputs, *[int(u) for u in config["units"]], n_classes]
    return sum(a * b for a, b in itertools.pairwise(widths))


def estimate_seconds(
    configs: Sequence[dict],
    reference: dict,
    seconds_per_epoch_sample: float,
    max_epochs: int,
    *,
    n_train: int = FASHION_MNIST_TRAIN,
    n_inputs: int = 784,
    n_classes: int = 10,
) -> float:
    """A simple cost model of training jobs, to print before starting an ablation.

    Each job costs ``seconds_per_epoch_sample x max_epochs x n_train x relative cost``, where the
    relative cost is the job's :func:`dense_macs` over the reference configuration's. Calibrate
    ``seconds_per_epoch_sample`` as the reference's measured epoch time divided by ``n_train``.
    Batch size, optimiser and the backward pass (a constant factor of the forward) are ignored,
    and early stopping usually ends jobs before ``max_epochs``: treat the result as an upper bound
    with perhaps 2x error either way.

    Args:
        configs: One configuration per job.
        reference: The configuration ``seconds_per_epoch_sample`` was measured on.
        seconds_per_epoch_sample: Seconds per training sample per epoch for the reference.
        max_epochs: Epoch budget of each job.
        n_train: Training samples per epoch.
        n_inputs: Input features.
        n_classes: Output classes.

    Returns:
        Estimated seconds for all jobs run one after another.
    """
    ref = dense_macs(reference, n_inputs, n_classes)
    relative = sum(dense_macs(c, n_inputs, n_classes) for c in configs) / ref
    return seconds_per_epoch_sample * max_epochs * n_train * relative


def _complete_base(space: Space, base_config: dict) -> dict:
    """The base configuration with every parameter present and per-layer values as lists."""
    known = tuple(PARAM_DEFAULTS)
    for key in base_config:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise BenchError(f"base configuration: unknown parameter '{key}'{hint}")
    config: dict[str, Any] = {}
    for key in known:
        if key in base_config:
            config[key] = base_config[key]
        elif isinstance(space.params[key], FixedParam):
            config[key] = space.params[key].value
        elif (
            isinstance(space.params[key], CategoricalParam) and len(space.params[key].choices) == 1
        ):
            config[key] = space.params[key].choices[0]
        else:
            raise BenchError(
                f"base configuration: '{key}' is missing and the space searches it; give a value"
            )
    n = config["n_layers"]
    for key in PER_LAYER_OK:
        value = config[key]
        values = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(values) != n:
            raise BenchError(
                f"base configuration: '{key}' has {len(values)} per-layer values, n_layers is {n}"
            )
        config[key] = values
    return config


def _with_level(base: dict, factor: str, level: Any) -> dict:
    """``base`` with ``factor`` set to ``level``.

    A per-layer factor sets every layer. A new ``n_layers`` resizes the per-layer lists: layers
    are dropped from the end, or added repeating the last layer's values.
    """
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in base.items()}
    if factor in PER_LAYER_OK:
        config[factor] = [level] * config["n_layers"]
    elif factor == "n_layers":
        config["n_layers"] = level
        for key in PER_LAYER_OK:
            values = config[key]
            config[key] = (values + [values[-1]] * level)[:level]
    else:
        config[factor] = level
    return config


def plan(
    space: Space,
    base_config: dict,
    factors: Sequence[str] | None,
    seeds: Sequence[int],
    n_points: int = MAX_POINTS,
) -> Plan:
    """Plan a one-factor-at-a-time ablation around ``base_config``.

    Args:
        space: The search space the levels come from.
        base_config: The base configuration, e.g. a study's best trial's configuration. Per-layer
            values may be one value or a list per layer; parameters the space fixes (or offers a
            single choice for) may be left out.
        factors: The parameters to vary, in order; None for every one of :data:`FACTORS` that the
            space searches (fixed ones are skipped silently, while naming one is an error).
        seeds: The seeds every cell trains with.
        n_points: Grid size for numeric factors, from 3 to 5.

    Returns:
        The :class:`Plan`.

    Raises:
        BenchError: an unknown or single-level factor, a bad base configuration, no seeds or
            repeated seeds.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise BenchError("an ablation needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"seeds must differ, got {list(seeds)}")
    base_config = _complete_base(space, base_config)
    if factors is None:
        names = [f for f in FACTORS if _is_factor(f, space.params[f], base_config[f], n_points)]
    else:
        known = tuple(PARAM_DEFAULTS)
        for f in factors:
            if f not in known:
                raise unknown_factor_error(f, known)
        if len(set(factors)) != len(factors):
            raise BenchError(f"factors are named twice: {list(factors)}")
        names = list(factors)
    base = Cell(BASE, BASE, base_config, is_base=True)
    cells = [base]
    levels: dict[str, tuple] = {}
    base_levels: dict[str, Any] = {}
    for name in names:
        levels[name] = tuple(levels_for(name, space.params[name], base_config[name], n_points))
        base_value = base_config[name]
        base_levels[name] = (
            _uniform(base_value) if _uniform(base_value) is not None else fmt_level(base_value)
        )
        for level in levels[name]:
            if level != base_levels[name]:
                cells.append(Cell(name, level, _with_level(base_config, name, level)))
    return Plan(base, tuple(cells), seeds, levels, base_levels)


def _is_factor(name: str, param: Param, base_value: Any, n_points: int) -> bool:
    try:
        levels_for(name, param, base_value, n_points)
    except BenchError:
        return False
    return True
