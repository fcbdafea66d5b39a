"""Importance over the whole space (issue #19, item 3): the global design's configurations and jobs
computed purely, and its analysis against Optuna's own evaluators and scipy on fixed numbers.
No TensorFlow, no subprocess."""

from __future__ import annotations

import math
import zlib

import numpy as np
import optuna
import pytest
from PIL import Image
from scipy import stats

from bench.designs.space_filling import (
    GlobalDesign,
    global_plan,
    plan_to_settings,
    repeated_indices,
)
from bench.errors import BenchError
from bench.records import ABLATION, COMPLETED, DIVERGED, DONE, Job, JobResult
from bench.results import importance as im
from bench.space import PARAM_DEFAULTS, load_space


def _settings(n: int = 16, seeds=(0, 1, 2)) -> dict:
    plan = global_plan(load_space("smoke"), n, list(seeds))
    return {"plan": plan_to_settings(plan, {}), "metric": "val_accuracy"}


def _score(config: dict, seed: int) -> float:
    """A fixed landscape: the learning rate matters most, momentum costs 10 points, the rest
    nothing; seed noise of about 0.2 points."""
    lr = math.log10(config["learning_rate"])  # -3 .. -1.5 in the smoke space
    noise = np.random.default_rng(zlib.crc32(repr((sorted(config.items()), seed)).encode()))
    value = 0.70 + 0.12 * (lr + 3) - (0.10 if config["optimizer"] == "momentum" else 0.0)
    return value + float(noise.normal(0, 0.002))


def _finish(specs, fail=()):
    jobs = []
    for i, spec in enumerate(specs, 1):
        bad = spec.key in fail
        value = None if bad else _score(spec.config, spec.seed)
        result = JobResult(DIVERGED if bad else COMPLETED, value, 0, 2, 1.0, 0, 0, spec.config)
        jobs.append(Job(i, 1, spec, DONE, attempts=1, result=result, synced=True))
    return jobs


def test_the_plan_is_deterministic_complete_and_fills_every_level():
    space = load_space("mlp")
    a, b = global_plan(space, 64, [0, 1, 2]), global_plan(space, 64, [0, 1, 2])
    assert a == b and len(a.configs) == 64
    assert a != global_plan(space, 64, [0, 1, 2], qmc_seed=1)
    for c in a.configs:
        config, params = c["config"], c["params"]
        assert set(config) == set(PARAM_DEFAULTS)
        assert len(config["units"]) == config["n_layers"] == params["n_layers"]
        # per-layer widths are Optuna parameters only for the layers a configuration has
        assert {k for k in params if k.startswith("units_")} == {
            f"units_{i}" for i in range(config["n_layers"])
        }
        assert config["units"] == [params[f"units_{i}"] for i in range(config["n_layers"])]
        assert set(c["distributions"]) == set(params)
    for name, levels in (("normalization", 5), ("optimizer", 5), ("batch_size", 3)):
        assert len({c["config"][name] for c in a.configs}) == levels  # every level drawn
    rates = np.log10([c["config"]["learning_rate"] for c in a.configs])
    # a space-filling design: every quarter of the log range holds about a quarter of the draws
    counts = np.histogram(rates, bins=4, range=(-4, -2))[0]
    assert counts.min() >= 12, counts
    assert a.repeated == (0, 21, 42, 63) and a.n_jobs == 64 + 4 * 2


def test_repeated_configurations_are_spread_over_the_sequence():
    assert repeated_indices(8) == [0, 7]
    assert repeated_indices(32) == [0, 31]
    assert repeated_indices(48) == [0, 24, 47]
    assert len(repeated_indices(1024)) == 64


@pytest.mark.parametrize(
    "n, seeds, message",
    [(7, [0, 1], "--global 7: needs 8 to 1024"), (2000, [0, 1], "needs 8 to 1024"),
     (16, [0], "seeds must be distinct and at least 2"), (16, [1, 1], "distinct")],
)  # fmt: skip
def test_bad_plans_are_refused(n, seeds, message):
    with pytest.raises(BenchError, match=message):
        global_plan(load_space("smoke"), n, seeds)


def test_the_design_makes_one_job_per_configuration_and_the_repeats():
    settings = _settings(16)
    specs = GlobalDesign(settings).initial_jobs()
    plan = settings["plan"]
    assert len(specs) == 16 + 2 * 2 and len({s.key for s in specs}) == len(specs)
    assert all(s.purpose == ABLATION for s in specs)
    first = [s for s in specs if s.seed == 0]
    assert [s.key for s in first] == [f"global-c{i}-s0" for i in range(16)]
    for s in specs:
        i = s.info["config_index"]
        assert s.config == plan["configs"][i]["config"] and s.key == f"global-c{i}-s{s.seed}"
    assert sorted(s.key for s in specs if s.seed) == sorted(
        f"global-c{i}-s{seed}" for i in (0, 15) for seed in (1, 2)
    )
    assert GlobalDesign(settings).next_jobs(_finish(specs), 3) == []


def test_the_seed_noise_floor_is_the_pooled_variance_over_the_spread_with_a_chi2_band():
    groups = {0: [0.80, 0.81, 0.79], 5: [0.70, 0.705], 9: [0.9]}  # 9 has one seed: no say
    floor, low, high, sd = im.seed_floor(groups, between_var=0.004)
    a, b = np.array(groups[0]), np.array(groups[5])
    df = 2 + 1
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / df
    assert floor == pytest.approx(pooled / 0.004) and sd == pytest.approx(math.sqrt(pooled))
    assert low == pytest.approx(df * pooled / stats.chi2.ppf(0.975, df) / 0.004)
    assert high == pytest.approx(df * pooled / stats.chi2.ppf(0.025, df) / 0.004)
    assert all(math.isnan(x) for x in im.seed_floor({1: [0.5]}, 0.01))


@pytest.mark.component  # pure, but Optuna's fANOVA forests take seconds per fit
def test_importances_are_optunas_own_with_intervals_and_floors(monkeypatch):
    settings = _settings(24)
    plan = settings["plan"]
    specs = GlobalDesign(settings).initial_jobs()
    records = [
        {"index": s.info["config_index"], "seed": s.seed, "val_accuracy": _score(s.config, s.seed)}
        for s in specs
    ]
    result = im.analyse(plan, records, n_boot=8, n_shuffle=12)
    assert result.n_used == 24 and result.n_repeated == 2
    # the point estimates are exactly what Optuna's evaluators say on the first seed's scores
    trials = [
        optuna.trial.create_trial(
            value=_score(c["config"], 0),
            params=c["params"],
            distributions={
                k: optuna.distributions.json_to_distribution(d)
                for k, d in c["distributions"].items()
            },
        )
        for c in plan["configs"]
    ]
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    fanova = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), normalize=False
    )
    ped = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=False
    )
    got = {e.name: {i.param: i.value for i in e.importances} for e in result.evaluators}
    assert got["fanova"] == pytest.approx(fanova) and got["ped-anova"] == pytest.approx(ped)
    fa = {i.param: i for i in result.evaluators[0].importances}
    # the learning rate and the optimizer carry the landscape: clearly above both floors
    assert fa["learning_rate"].against_floor == "above" and fa["optimizer"].against_floor == "above"
    assert fa["learning_rate"].low <= fa["learning_rate"].value <= fa["learning_rate"].high
    assert fa["learning_rate"].value > fa["learning_rate"].chance_floor > 0
    # factors the landscape ignores never clear the floors
    assert all(fa[p].against_floor != "above" for p in ("dropout", "l2", "normalization"))
    fanova, ped = result.evaluators
    assert 0 < fanova.seed_floor < 0.1 and fanova.seed_low < fanova.seed_floor < fanova.seed_high
    assert math.isnan(ped.seed_floor)  # PED-ANOVA's numbers are not variances
    assert all(math.isfinite(i.chance_floor) for i in ped.importances)
    assert result.seed_sd == pytest.approx(0.002, rel=1.0)
    # the same records give the same numbers (fixed generators)
    assert im.analyse(plan, records, n_boot=8, n_shuffle=12) == result


def test_against_the_floors():
    assert im.against_floor(0.5, chance=0.1, seed=0.05, seed_high=0.2) == "above"
    assert im.against_floor(0.15, chance=0.1, seed=0.05, seed_high=0.2) == "unclear"
    assert im.against_floor(0.08, chance=0.1, seed=0.05, seed_high=0.2) == "below"
    assert im.against_floor(0.15, chance=0.1, seed=0.2, seed_high=0.3) == "below"
    assert im.against_floor(0.15, chance=0.1) == "above"  # PED-ANOVA: the chance floor alone
    assert im.against_floor(0.5, chance=math.nan) == "unclear"


def test_a_stored_summary_with_missing_numbers_reads_back_and_renders(tmp_path):
    """NaN is stored as None (JSON); reading it back must not break the printout or the plot."""
    from bench.designs.ablation import _plain

    nan = math.nan
    result = im.GlobalResult(
        8, 8, 0, nan, 0.05, 0.9, 0.5,
        (im.EvaluatorResult("fanova", (im.Importance("l2", 0.2, nan, nan, nan, "unclear"),)),
         im.EvaluatorResult("ped-anova", (im.Importance("l2", nan, nan, nan, 0.1, "unclear"),))),
    )  # fmt: skip
    stored = _plain(result.as_dict())
    assert stored["seed_sd"] is None
    back = im.GlobalResult.from_dict(stored)
    assert math.isnan(back.seed_sd) and math.isnan(back.evaluators[0].seed_floor)
    text = im.text(back)
    assert "no measure of seed noise" in text and "n/a" in text
    assert im.importance_plot(back, tmp_path / "i.png").is_file()


def test_too_few_finished_configurations_is_said_not_drawn(monkeypatch):
    monkeypatch.setattr(im, "BOOTSTRAPS", 4)
    monkeypatch.setattr(im, "SHUFFLES", 4)
    settings = _settings(8, seeds=(0, 1))
    design = GlobalDesign(settings)
    specs = design.initial_jobs()
    summary = design.summary(_finish(specs, fail={"global-c3-s0"}))
    assert summary["diverged"] == 1 and summary["finished"] == 10
    assert "only 7 of 8 configurations finished; importances need at least 8" in summary["error"]
    assert im.from_summary(summary) is None
    assert im.summary_text(summary).startswith("no analysis: only 7 of 8")


def test_the_summary_round_trips_and_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(im, "BOOTSTRAPS", 6)
    monkeypatch.setattr(im, "SHUFFLES", 6)
    settings = _settings(16)
    design = GlobalDesign(settings)
    summary = design.summary(_finish(design.initial_jobs()))
    result = im.from_summary(summary)
    assert result is not None and result.n_used == 16
    assert result.headlines() == summary["headlines"]
    text = im.text(result)
    assert text.startswith("Importance over the whole space") and "seed-noise floor" in text
    assert "fANOVA: clearly above its chance floor and the seed-noise floor" in text
    assert "learning_rate" in text
    assert "## Importance over the whole space" in im.markdown(result)
    assert "<ol>" in im.html(result)
    plot = im.importance_plot(result, tmp_path / "importance.png")
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width >= 600
        assert len(set(img.convert("RGB").getdata())) > 50
