"""bench.results.what_matters on synthetic ablation records: pairing, Holm, ranking, output."""

from __future__ import annotations

import math

import pytest

from bench.results.stats import holm, paired_diff
from bench.results.what_matters import analyse, forest_plot, headline, markdown, text

SEEDS = (0, 1, 2, 3)
BASE_VAL = (0.880, 0.884, 0.878, 0.882)  # the seeds' luck, shared by every cell
JITTER = (0.0010, -0.0010, 0.0005, -0.0005)  # sums to 0: a level's mean shift is exact
BASE_LEVELS = {"normalization": "minmax", "dropout": 0.1, "optimizer": "adam"}


def runs(factor, level, shift, jitter=JITTER, seeds=SEEDS, test_shift=None):
    test_shift = shift if test_shift is None else test_shift
    return [
        {
            "factor": factor,
            "level": level,
            "seed": s,
            "is_base": factor == "base",
            "val_accuracy": BASE_VAL[s] + shift + j,
            "test_accuracy": BASE_VAL[s] - 0.004 + test_shift,
        }
        for s, j in zip(seeds, jitter, strict=False)
    ]


def records():
    return [
        *runs("base", "base", 0.0, jitter=(0, 0, 0, 0)),
        *runs("normalization", "none", -0.040),
        *runs("normalization", "standard", 0.0002, jitter=(0.001, -0.001, 0.0, 0.0)),
        *runs("dropout", 0.5, -0.010),
        *runs("dropout", 0.0, 0.0003, jitter=(0.001, -0.001, 0.0, 0.0)),
        *runs("optimizer", "sgd", -0.020),
    ]


def by_level(result):
    return {r.level: r for r in result.levels}


def test_factors_are_ranked_by_effect():
    results = analyse(records(), base_levels=BASE_LEVELS)
    assert [r.factor for r in results] == ["normalization", "optimizer", "dropout"]
    norm = results[0]
    assert (norm.effect.best, norm.effect.worst) == ("standard", "none")
    assert norm.effect.diff == pytest.approx(0.0402)
    assert norm.n_seeds == 4


def test_levels_are_paired_with_the_base_by_seed():
    norm = analyse(records(), base_levels=BASE_LEVELS)[0]
    none = by_level(norm)["none"]
    want = paired_diff([BASE_VAL[s] - 0.04 + JITTER[s] for s in SEEDS], BASE_VAL)
    assert (none.diff.mean, none.diff.low, none.diff.high) == pytest.approx(
        (want.mean, want.low, want.high)
    )
    assert none.diff.mean == pytest.approx(-0.04)
    assert none.n == 4 and none.verdict.startswith("worse by 4.0 points [")


def test_p_values_are_holm_adjusted_within_a_factor():
    dropout = next(r for r in analyse(records(), base_levels=BASE_LEVELS) if r.factor == "dropout")
    rows = [r for r in dropout.levels if not r.is_base]
    assert [r.p_holm for r in rows] == pytest.approx(holm([r.diff.p_value for r in rows]))
    levels = by_level(dropout)
    assert levels[0.5].verdict.startswith("worse by 1.0 points")
    assert levels[0.0].verdict.startswith("no detectable difference with 4 seeds (0.0 [")


def test_base_row_is_labelled_and_numeric_levels_are_sorted():
    results = {r.factor: r for r in analyse(records(), base_levels=BASE_LEVELS)}
    assert [r.level for r in results["dropout"].levels] == [0.0, 0.1, 0.5]
    assert results["dropout"].levels[1].is_base and results["dropout"].levels[1].verdict == "base"
    assert results["normalization"].levels[0].level == "minmax"
    plain = {r.factor: r for r in analyse(records())}
    assert plain["optimizer"].levels[0].level == "base"
    assert plain["optimizer"].effect.best == "base"


def test_decisions_use_validation_accuracy_only():
    recs = [
        *runs("base", "base", 0.0, jitter=(0, 0, 0, 0)),
        *runs("l2", 1e-4, -0.02, test_shift=0.02),
    ]
    (l2,) = analyse(recs)
    row = by_level(l2)[1e-4]
    assert row.verdict.startswith("worse by 2.0 points")
    assert row.test[0] > l2.levels[0].test[0]  # better on test, and shown, but not decisive


def test_a_missing_seed_costs_a_pair_not_the_comparison():
    recs = [r for r in records() if not (r["level"] == "sgd" and r["seed"] == 3)]
    optimizer = next(r for r in analyse(recs) if r.factor == "optimizer")
    sgd = [r for r in optimizer.levels if r.level == "sgd"][0]
    assert sgd.n == 3 and sgd.diff.n == 3
    assert optimizer.n_seeds == 3


def test_one_seed_gives_no_verdict():
    recs = [
        *runs("base", "base", 0.0, seeds=(0,), jitter=(0,)),
        *runs("optimizer", "sgd", -0.02, seeds=(0,), jitter=(0,)),
    ]
    (optimizer,) = analyse(recs)
    sgd = by_level(optimizer)["sgd"]
    assert math.isnan(sgd.p_holm)
    assert (
        sgd.verdict
        == "no detectable difference with 1 seed (\u22122.0; one seed gives no interval)"
    )


def test_bad_records_are_rejected():
    with pytest.raises(ValueError, match="no records of the base cell"):
        analyse(runs("optimizer", "sgd", 0.0))
    with pytest.raises(ValueError, match="leave failed jobs out"):
        analyse([*records(), {**runs("optimizer", "rmsprop", 0.0)[0], "val_accuracy": math.nan}])
    with pytest.raises(ValueError, match="repeats"):
        analyse([*records(), runs("optimizer", "sgd", 0.0)[0]])
    with pytest.raises(ValueError, match="is_base"):
        analyse([*records(), {**runs("optimizer", "rmsprop", 0.0)[0], "is_base": True}])
    with pytest.raises(ValueError, match="lacks"):
        analyse([{"factor": "base", "seed": 0}])


def test_markdown_and_text():
    results = analyse(records(), base_levels=BASE_LEVELS)
    line = headline(results[0])
    assert line.startswith("normalization: effect 4.0 points [")
    assert "(best standard, worst none); none worse by 4.0 points [" in line
    assert headline(results[2]).endswith("0.5 worse by 1.0 points [0.9, 1.1]")
    md = markdown(results)
    assert md.startswith("## What matters\n")
    assert f"1. {line}" in md and "### normalization (base: minmax)" in md
    assert "| minmax (base) | 4 | 0.8810 [" in md
    txt = text(results)
    assert txt.startswith("What matters\n") and f" 1. {line}" in txt
    assert "dropout (base: 0.1)" in txt
    assert markdown([]).startswith("## What matters")


def test_forest_plot_writes_a_png(tmp_path):
    path = forest_plot(analyse(records(), base_levels=BASE_LEVELS), tmp_path / "forest.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        forest_plot([], tmp_path / "empty.png")
