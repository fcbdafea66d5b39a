"""The crossed design (issue #19, item 1): its plan and jobs, computed purely, and its statistics
checked against scipy and statsmodels on fixed numbers. No TensorFlow, no subprocess."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from bench.designs.crossed import CrossedDesign, cross_plan, job_key, plan_to_settings
from bench.errors import BenchError
from bench.results import interactions as ia
from bench.space import load_space

BASE = {"normalization": "standard", "n_layers": 1, "units": 16, "dropout": 0.0, "l2": 1e-5,
        "optimizer": "adam", "learning_rate": 0.01}  # fmt: skip
NORM, OPT = "normalization", "optimizer"


def _records(cells: dict[tuple, list[float]]) -> list[dict]:
    """One record per cell x seed from {(normalization, optimizer): [val per seed]}."""
    return [
        {"levels": {NORM: n, OPT: o}, "seed": s, "val_accuracy": v, "test_accuracy": v - 0.01}
        for (n, o), values in cells.items()
        for s, v in enumerate(values)
    ]


# 2 x 2 with 4 seeds: 'none' costs about 10 points under sgd and nothing under adam
TWO_BY_TWO = {
    ("standard", "adam"): [0.880, 0.884, 0.879, 0.882],
    ("none", "adam"): [0.879, 0.885, 0.877, 0.883],
    ("standard", "sgd"): [0.870, 0.873, 0.866, 0.871],
    ("none", "sgd"): [0.771, 0.780, 0.762, 0.775],
}
LEVELS_2X2 = {NORM: ["standard", "none"], OPT: ["adam", "sgd"]}
REF = {NORM: "standard", OPT: "adam"}


def _y(cells, n, o):
    return np.array(cells[(n, o)])


# ---------------------------------------------------------------- statistics


def test_interaction_contrast_is_scipys_paired_t_on_the_differences():
    r = ia.analyse(_records(TWO_BY_TWO), [NORM, OPT], LEVELS_2X2, REF)
    (c,) = r.pairs[0].contrasts
    under_sgd = _y(TWO_BY_TWO, "none", "sgd") - _y(TWO_BY_TWO, "standard", "sgd")
    under_adam = _y(TWO_BY_TWO, "none", "adam") - _y(TWO_BY_TWO, "standard", "adam")
    contrast = under_sgd - under_adam
    assert c.a == "none" and c.b == "sgd"
    assert c.diff.mean == pytest.approx(contrast.mean())
    assert c.diff.p_value == pytest.approx(stats.ttest_rel(under_sgd, under_adam).pvalue)
    half = stats.t.ppf(0.975, 3) * contrast.std(ddof=1) / 2
    assert (c.diff.low, c.diff.high) == pytest.approx(
        (contrast.mean() - half, contrast.mean() + half)
    )
    assert c.p_holm == pytest.approx(c.diff.p_value)  # one contrast: Holm changes nothing


def test_omnibus_is_statsmodels_anova_rm_and_in_a_2x2_equals_the_contrasts_t_squared():
    import pandas as pd
    from statsmodels.stats.anova import AnovaRM

    r = ia.analyse(_records(TWO_BY_TWO), [NORM, OPT], LEVELS_2X2, REF)
    frame = pd.DataFrame(_records(TWO_BY_TWO))
    frame[NORM] = [lv[NORM] for lv in frame["levels"]]
    frame[OPT] = [lv[OPT] for lv in frame["levels"]]
    table = AnovaRM(frame, "val_accuracy", "seed", within=[NORM, OPT]).fit().anova_table
    row = next(a for a in r.anova if a.term == f"{NORM} x {OPT}")
    assert row.f == pytest.approx(table.loc[f"{NORM}:{OPT}", "F Value"])
    assert row.p == pytest.approx(table.loc[f"{NORM}:{OPT}", "Pr > F"])
    assert (row.df_num, row.df_den) == (1.0, 3.0)
    (c,) = r.pairs[0].contrasts
    t = stats.ttest_1samp(
        (_y(TWO_BY_TWO, "none", "sgd") - _y(TWO_BY_TWO, "standard", "sgd"))
        - (_y(TWO_BY_TWO, "none", "adam") - _y(TWO_BY_TWO, "standard", "adam")),
        0,
    ).statistic
    assert row.f == pytest.approx(t**2)
    assert row.p == pytest.approx(c.diff.p_value)


def test_main_effect_averages_over_the_other_factor_paired_by_seed():
    r = ia.analyse(_records(TWO_BY_TWO), [NORM, OPT], LEVELS_2X2, REF)
    (effect,) = next(m for m in r.mains if m.factor == NORM).effects
    none = (_y(TWO_BY_TWO, "none", "adam") + _y(TWO_BY_TWO, "none", "sgd")) / 2
    std = (_y(TWO_BY_TWO, "standard", "adam") + _y(TWO_BY_TWO, "standard", "sgd")) / 2
    assert effect.level == "none" and effect.reference == "standard"
    assert effect.diff.mean == pytest.approx((none - std).mean())
    assert effect.diff.p_value == pytest.approx(stats.ttest_rel(none, std).pvalue)


def test_verdict_says_where_a_factor_matters_and_where_it_hardly_does():
    r = ia.analyse(_records(TWO_BY_TWO), [NORM, OPT], LEVELS_2X2, REF)
    words = r.pairs[0].verdict
    assert words.startswith("normalization none (vs standard) is worse by 9.8 points [")
    assert "under optimizer sgd, but no detectable difference with 4 seeds" in words
    assert "under optimizer adam; interaction −9.8 points [" in words and "detected" in words
    assert "omnibus F(1, 3)" in words
    lines = r.headlines()
    assert lines[-1] == f"normalization x optimizer: {words}"


def test_no_interaction_is_said_with_the_size_that_would_go_unseen():
    rng = np.random.default_rng(3)
    cells = {
        (n, o): list(0.88 + (0.02 if o == "adam" else 0) + rng.normal(0, 0.004, 3))
        for n in ("standard", "none")
        for o in ("adam", "sgd")
    }
    r = ia.analyse(_records(cells), [NORM, OPT], LEVELS_2X2, REF)
    words = r.pairs[0].verdict
    assert words.startswith("no detectable interaction with 3 seeds: the largest contrast")
    assert "interactions smaller than about" in words and "go unseen" in words


def test_every_contrast_of_a_3x3_is_holm_adjusted_within_the_pair():
    rng = np.random.default_rng(0)
    norms, opts = ["standard", "none", "minmax"], ["adam", "sgd", "rmsprop"]
    cells = {(n, o): list(0.88 + rng.normal(0, 0.005, 3)) for n in norms for o in opts}
    r = ia.analyse(_records(cells), [NORM, OPT], {NORM: norms, OPT: opts}, REF)
    contrasts = r.pairs[0].contrasts
    assert len(contrasts) == 4  # (3 - 1) x (3 - 1)
    from statsmodels.stats.multitest import multipletests

    raw = [c.diff.p_value for c in contrasts]
    assert [c.p_holm for c in contrasts] == pytest.approx(
        list(multipletests(raw, method="holm")[1])
    )
    assert len(r.cells) == 9 and len(r.mains) == 2


def test_a_seed_missing_a_cell_is_left_out_of_every_pair():
    recs = _records(TWO_BY_TWO)
    recs = [x for x in recs if not (x["seed"] == 3 and x["levels"] == {NORM: "none", OPT: "sgd"})]
    r = ia.analyse(recs, [NORM, OPT], LEVELS_2X2, REF)
    assert r.seeds == (0, 1, 2)
    assert r.cell(("none", "sgd")).n == 3 and r.cell(("none", "adam")).n == 4
    assert r.pairs[0].contrasts[0].diff.n == 3


def test_fewer_than_two_complete_seeds_is_refused():
    recs = [x for x in _records(TWO_BY_TWO) if x["seed"] == 0]
    with pytest.raises(ValueError, match="1 seed\\(s\\) finished every one of the 4 cells"):
        ia.analyse(recs, [NORM, OPT], LEVELS_2X2, REF)
    bad = [*_records(TWO_BY_TWO)[:-1], {**_records(TWO_BY_TWO)[-1], "val_accuracy": math.inf}]
    with pytest.raises(ValueError, match="no finite val_accuracy"):
        ia.analyse(bad, [NORM, OPT], LEVELS_2X2, REF)


def test_three_factors_give_three_pairs_and_a_three_way_term(tmp_path):
    rng = np.random.default_rng(1)
    levels = {NORM: ["standard", "none"], OPT: ["adam", "sgd"], "batch_size": [64, 256]}
    recs = [
        {"levels": {NORM: n, OPT: o, "batch_size": b}, "seed": s,
         "val_accuracy": 0.88 - (0.1 if (n, o) == ("none", "sgd") else 0) + rng.normal(0, 0.003)}
        for n in levels[NORM] for o in levels[OPT] for b in levels["batch_size"] for s in range(3)
    ]  # fmt: skip
    r = ia.analyse(recs, [NORM, OPT, "batch_size"], levels, {**REF, "batch_size": 64})
    assert [(p.first, p.second) for p in r.pairs] == [
        (NORM, OPT), (NORM, "batch_size"), (OPT, "batch_size"),
    ]  # fmt: skip
    assert [a.term for a in r.anova][-1] == "normalization x optimizer x batch_size"
    assert "detected" in r.pairs[0].verdict
    assert r.pairs[1].verdict.startswith("no detectable interaction")
    text = ia.text(r)
    assert "batch_size 256)" in text  # a cell table per level of the third factor
    path = ia.interaction_plot(r, tmp_path / "i.png")
    with Image.open(path) as img:  # one panel per level of the third factor: a wide figure
        assert img.format == "PNG" and img.width > img.height * 2


def test_interaction_plot_and_every_rendering(tmp_path):
    r = ia.analyse(_records(TWO_BY_TWO), [NORM, OPT], LEVELS_2X2, REF)
    path = ia.interaction_plot(r, tmp_path / "interactions.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
        assert len(set(img.convert("RGB").getdata())) > 50  # lines and labels, not a blank canvas
    md = ia.markdown(r)
    assert md.startswith("## Interactions") and "### Interaction contrasts" in md
    assert "| normalization \\ optimizer | adam | sgd |" in md
    assert "<h3>Omnibus: repeated-measures ANOVA" in ia.html(r)
    summary = {"records": _records(TWO_BY_TWO), "levels": LEVELS_2X2, "base_levels": REF}
    assert ia.summary_text(summary, [NORM, OPT]) == ia.text(r)
    assert ia.summary_text({"error": "boom"}, [NORM, OPT]) == "no analysis: boom\n"


# ---------------------------------------------------------------- the plan and its jobs


def test_plan_crosses_every_level_and_marks_the_base():
    space = load_space("smoke")
    p = cross_plan(space, BASE, [NORM, OPT], [0, 1])
    assert p.levels == {NORM: ("minmax", "standard", "per_pixel"), OPT: ("adam", "momentum")}
    assert len(p.cells) == 6 and [c.levels for c in p.cells][:2] == [
        ("minmax", "adam"), ("minmax", "momentum"),
    ]  # fmt: skip
    assert [c.levels for c in p.cells if c.is_base] == [("standard", "adam")]
    assert p.base.levels == ("standard", "adam")
    cell = next(c for c in p.cells if c.levels == ("per_pixel", "momentum"))
    assert cell.config[NORM] == "per_pixel" and cell.config[OPT] == "momentum"
    assert cell.config["units"] == [16] and cell.config["learning_rate"] == 0.01
    assert "6 cells, 2 seeds (0, 1) -> 12 jobs" in p.describe()[0]


def test_design_jobs_are_every_cell_by_every_seed_and_deterministic():
    p = cross_plan(load_space("smoke"), BASE, [NORM, OPT], [0, 1])
    settings = {"plan": plan_to_settings(p, {"max_epochs": 2}), "seeds": [0, 1]}
    specs = CrossedDesign(settings).initial_jobs()
    assert len(specs) == 12 and len({s.key for s in specs}) == 12
    assert specs[0].key == job_key([NORM, OPT], ["minmax", "adam"], 0)
    assert specs[0].key == "cross-normalization=minmax,optimizer=adam-s0"
    assert [s.seed for s in specs] == [0] * 6 + [1] * 6  # whole seeds first
    assert specs[0].info == {"factor": "normalization,optimizer", "level": "minmax,adam",
                             "levels": {NORM: "minmax", OPT: "adam"}, "is_base": False}  # fmt: skip
    assert all(s.purpose == "ablation" and s.train == {"max_epochs": 2} for s in specs)
    assert CrossedDesign(settings).initial_jobs() == specs


@pytest.mark.parametrize(
    "factors, message",
    [
        ([NORM], "--cross: 1 factor(s) given (normalization); cross 2 or 3 factors"),
        ([NORM, OPT, "units", "l2"], "--cross: 4 factor(s) given"),
        ([NORM, "optimiser"], "unknown factor 'optimiser'; did you mean 'optimizer'?"),
        ([NORM, NORM], "a factor is named twice"),
        ([NORM, "batch_size"], "single level"),
    ],
)
def test_bad_crossings_are_refused(factors, message):
    with pytest.raises(BenchError, match=message.replace("(", "\\(").replace(")", "\\)")):
        cross_plan(load_space("smoke"), BASE, factors, [0, 1])


def test_a_plan_over_the_cell_limit_says_the_count():
    base = {**BASE, "batch_size": 256, "lr_schedule": "constant", "units": 256}
    with pytest.raises(BenchError) as err:
        cross_plan(load_space("mlp"), base, [NORM, OPT, "units"], [0, 1, 2])
    assert str(err.value) == (
        "--cross normalization,optimizer,units: 5 (normalization) x 5 (optimizer) x 5 (units) = "
        "125 cells x 3 seeds = 375 jobs, over the limit of 100 cells; cross fewer factors, or "
        "raise --max-cells"
    )
    assert (
        len(cross_plan(load_space("mlp"), base, [NORM, OPT, "units"], [0], max_cells=125).cells)
        == 125
    )
