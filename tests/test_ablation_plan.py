"""The one-factor-at-a-time ablation plan: level grids, the shared base cell, seed pairing."""

from __future__ import annotations

import pytest
import yaml

from bench.designs.ablation_plan import (
    BASE,
    FACTORS,
    dense_macs,
    estimate_seconds,
    levels_for,
    plan,
    unknown_factor_error,
)
from bench.errors import BenchError
from bench.space import parse_space

SPACE = """
version: 1
params:
  normalization: {type: categorical, choices: [none, minmax, standard]}
  n_layers:      {type: int, low: 1, high: 3}
  units:         {type: int, low: 128, high: 1024, log: true, per_layer: true}
  dropout:       {type: float, low: 0.0, high: 0.5}
  l2:            {type: float, low: 1.0e-7, high: 1.0e-4, log: true}
  optimizer:     {type: categorical, choices: [sgd, adam]}
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  batch_size:    {type: categorical, choices: [128]}
  lr_schedule:   constant
"""

BASE_CONFIG = {
    "normalization": "minmax",
    "n_layers": 2,
    "units": [256, 256],
    "activation": ["relu", "relu"],
    "dropout": [0.1, 0.1],
    "l2": 1e-6,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "batch_size": 128,
    "lr_schedule": "constant",
}


def space(text: str = SPACE):
    return parse_space(yaml.safe_load(text), "ablation.yaml")


def param(name: str, text: str = SPACE):
    return space(text).params[name]


def test_log_int_grid_keeps_its_ends_and_takes_the_base():
    # geomspace(128, 1024, 5) = 128, 215, 362, 609, 1024; the base replaces its nearest point 215
    assert levels_for("units", param("units"), [256, 256]) == [128, 256, 362, 609, 1024]
    assert levels_for("units", param("units"), 362) == [128, 215, 362, 609, 1024]


def test_log_float_grid_is_rounded_to_three_digits():
    levels = levels_for("learning_rate", param("learning_rate"), 1e-3)
    assert levels == [1e-4, 0.000316, 1e-3, 0.00316, 1e-2]
    # 2e-3 is closest to 0.00316 on the log axis
    levels = levels_for("learning_rate", param("learning_rate"), 2e-3)
    assert levels == [1e-4, 0.000316, 1e-3, 2e-3, 1e-2]


def test_linear_grid_and_its_size():
    assert levels_for("dropout", param("dropout"), [0.1, 0.1]) == [0.0, 0.1, 0.25, 0.375, 0.5]
    assert levels_for("dropout", param("dropout"), 0.25) == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert levels_for("dropout", param("dropout"), 0.1, n_points=3) == [0.0, 0.1, 0.5]
    with pytest.raises(ValueError, match="n_points"):
        levels_for("dropout", param("dropout"), 0.1, n_points=7)


def test_grid_on_a_step_and_a_narrow_int_range():
    stepped = SPACE.replace(
        "dropout:       {type: float, low: 0.0, high: 0.5}",
        "dropout:       {type: float, low: 0.0, high: 0.5, step: 0.1}",
    )
    levels = levels_for("dropout", param("dropout", stepped), 0.2)
    assert 3 <= len(levels) <= 5 and levels == sorted(set(levels)) and 0.2 in levels
    assert all(abs(x * 10 - round(x * 10)) < 1e-9 for x in levels)
    assert levels_for("n_layers", param("n_layers"), 2) == [1, 2, 3]
    assert levels_for("n_layers", param("n_layers"), 2.0) == [1, 2, 3]


def test_base_outside_the_range_becomes_an_end():
    assert levels_for("units", param("units"), 64) == [64, 128, 362, 609, 1024]


def test_categorical_takes_every_choice():
    assert levels_for("normalization", param("normalization"), "minmax") == [
        "none",
        "minmax",
        "standard",
    ]
    # a base from another space still is a level
    assert levels_for("optimizer", param("optimizer"), "rmsprop") == ["sgd", "adam", "rmsprop"]


def test_a_single_level_is_not_a_factor():
    with pytest.raises(BenchError, match="'lr_schedule' is not a factor: the space fixes it"):
        levels_for("lr_schedule", param("lr_schedule"), "constant")
    with pytest.raises(BenchError, match="'batch_size' is not a factor: its only choice is 128"):
        levels_for("batch_size", param("batch_size"), 128)
    with pytest.raises(BenchError, match="not a factor"):
        plan(space(), BASE_CONFIG, ["optimizer", "batch_size"], [0])


def test_unknown_factor_suggests_the_nearest_name():
    err = unknown_factor_error("optimiser", FACTORS)
    assert isinstance(err, BenchError)
    assert "unknown factor 'optimiser'; did you mean 'optimizer'?" in str(err)
    with pytest.raises(BenchError, match="did you mean 'dropout'"):
        plan(space(), BASE_CONFIG, ["droput"], [0])
    assert "did you mean" not in str(unknown_factor_error("zzz", FACTORS))


def test_default_factors_are_those_the_space_searches():
    p = plan(space(), BASE_CONFIG, None, [0])
    assert p.factors == (
        "normalization",
        "optimizer",
        "n_layers",
        "units",
        "dropout",
        "l2",
        "learning_rate",
    )


def test_base_cell_is_shared():
    p = plan(space(), BASE_CONFIG, None, [0, 1, 2])
    assert p.cells[0] is p.base and p.base.is_base
    assert (p.base.factor, p.base.level) == (BASE, BASE)
    assert [c for c in p.cells if c.is_base] == [p.base]
    # a level equal to the base value is the base cell, never a second copy of it
    assert all(c.config != p.base.config for c in p.cells[1:])
    assert p.cell("optimizer", "adam") is p.base
    assert p.cell("units", 256) is p.base
    assert p.cell("optimizer", "sgd").config["optimizer"] == "sgd"
    assert len(p.cells) == 1 + sum(len(v) - 1 for v in p.levels.values())
    assert p.base_levels["units"] == 256 and p.base_levels["dropout"] == 0.1


def test_every_cell_trains_with_the_same_seeds():
    p = plan(space(), BASE_CONFIG, ["optimizer", "dropout"], [3, 1, 2])
    jobs = list(p.jobs())
    assert len(jobs) == len(p.cells) * 3
    for cell in p.cells:
        assert [s for c, s in jobs if c is cell] == [3, 1, 2]
    # seed-major: all cells with the first seed before any with the second
    assert [s for _, s in jobs[: len(p.cells)]] == [3] * len(p.cells)
    with pytest.raises(BenchError, match="seeds must differ"):
        plan(space(), BASE_CONFIG, None, [1, 1])
    with pytest.raises(BenchError, match="at least one seed"):
        plan(space(), BASE_CONFIG, None, [])


def test_one_factor_changes_at_a_time():
    p = plan(space(), BASE_CONFIG, None, [0])
    for cell in p.cells[1:]:
        changed = {k for k in BASE_CONFIG if cell.config[k] != p.base.config[k]}
        if cell.factor == "n_layers":
            assert changed <= {"n_layers", "units", "activation", "dropout"}
            assert len(cell.config["units"]) == cell.level
        else:
            assert changed == {cell.factor}


def test_per_layer_factor_sets_every_layer():
    p = plan(space(), BASE_CONFIG, ["units", "dropout"], [0])
    assert p.cell("units", 1024).config["units"] == [1024, 1024]
    assert p.cell("dropout", 0.5).config["dropout"] == [0.5, 0.5]


def test_layers_that_differ_have_no_base_level():
    base = dict(BASE_CONFIG, units=[512, 128])
    p = plan(space(), base, ["units", "n_layers"], [0])
    assert p.base_levels["units"] == "512/128"
    assert [c.level for c in p.cells if c.factor == "units"] == list(p.levels["units"])
    deeper = p.cell("n_layers", 3).config
    assert deeper["units"] == [512, 128, 128]  # a new layer repeats the last one
    assert p.cell("n_layers", 1).config["units"] == [512]


def test_base_config_is_checked_and_completed():
    short = {k: v for k, v in BASE_CONFIG.items() if k not in ("lr_schedule", "batch_size")}
    p = plan(space(), dict(short, units=256), ["optimizer"], [0])
    assert p.base.config["lr_schedule"] == "constant"  # fixed in the space
    assert p.base.config["units"] == [256, 256]
    with pytest.raises(BenchError, match="'optimizer' is missing"):
        plan(space(), {k: v for k, v in BASE_CONFIG.items() if k != "optimizer"}, None, [0])
    with pytest.raises(BenchError, match="did you mean 'dropout'"):
        plan(space(), dict(BASE_CONFIG, droput=0.1), None, [0])
    with pytest.raises(BenchError, match="3 per-layer values"):
        plan(space(), dict(BASE_CONFIG, units=[1, 2, 3]), None, [0])


def test_describe_marks_the_base_level():
    lines = plan(space(), BASE_CONFIG, ["optimizer", "n_layers"], [0, 1]).describe()
    assert lines[0] == "ablation: 2 factors, 4 cells (1 shared base + 3), 2 seeds (0, 1) -> 8 jobs"
    assert lines[1].startswith("base: normalization=minmax n_layers=2 units=256 ")
    assert "sgd | adam*" in lines[2] and "1 | 2* | 3" in lines[3]


def test_cost_model():
    small = dict(BASE_CONFIG, units=[100])
    big = dict(BASE_CONFIG, units=[300])
    assert dense_macs(small, n_inputs=10, n_classes=10) == 10 * 100 + 100 * 10
    assert dense_macs(big, n_inputs=10, n_classes=10) == 3 * 2000
    # 1e-5 s per sample-epoch for `small`: 4 epochs of 1000 samples = 0.04 s, `big` costs 3x
    seconds = estimate_seconds(
        [small, big], small, 1e-5, 4, n_train=1000, n_inputs=10, n_classes=10
    )
    assert seconds == pytest.approx(0.04 * (1 + 3))
    p = plan(space(), BASE_CONFIG, ["optimizer"], [0, 1])
    assert p.estimate_seconds(1e-5, 4, n_train=1000) == pytest.approx(0.04 * 4)


class _View:
    """A study view's one method the estimate reads: its jobs."""

    def __init__(self, jobs):
        self._jobs = jobs

    def jobs(self):
        return self._jobs


def test_the_epoch_share_is_learned_from_finished_jobs_else_a_stated_prior():
    from types import SimpleNamespace as NS

    from bench.results.study import expected_epoch_share

    share, how = expected_epoch_share(_View([]), 20, patience=5)
    assert share == pytest.approx(11 / 20) and "patience 5" in how and "~11 epochs" in how
    assert expected_epoch_share(_View([]), 36, patience=5)[0] == pytest.approx(15 / 36)
    assert expected_epoch_share(_View([]), 8, patience=5)[0] == 1.0  # never past the budget
    share, how = expected_epoch_share(_View([]), 20, patience=5, decaying=True)
    assert share == 1.0 and "decaying" in how
    assert expected_epoch_share(_View([]), 20)[0] == 1.0  # no patience known: the full budget
    done = [
        NS(result=NS(status="completed", epochs_run=e), spec=NS(train={"max_epochs": 20}))
        for e in (6, 9, 13)
    ]
    share, how = expected_epoch_share(_View(done), 20, patience=5)
    assert share == pytest.approx(9 / 20) and "as in 3 runs" in how
