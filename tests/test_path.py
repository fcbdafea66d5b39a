"""The ablation path (issue #19, item 2): its stages computed purely from fake finished jobs, and
its analysis against scipy on fixed numbers. No TensorFlow, no subprocess."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from bench.designs.path import PathDesign, differing, move, path_plan, plan_to_settings
from bench.errors import BenchError
from bench.records import COMPLETED, DIVERGED, DONE, Job, JobResult
from bench.results import path as pr
from bench.space import load_space

REF = {"normalization": "standard", "n_layers": 1, "units": 16, "optimizer": "sgd",
       "learning_rate": 0.01, "batch_size": 64, "dropout": 0.0, "l2": 0.0}  # fmt: skip
TGT = {"normalization": "minmax", "n_layers": 2, "units": [32, 16], "optimizer": "adam",
       "learning_rate": 0.01, "batch_size": 64, "dropout": 0.0, "l2": 0.0}  # fmt: skip
# What each parameter is worth when moved: optimizer most, then normalization, n_layers none
WORTH = {"normalization": 0.02, "n_layers": 0.0, "units": 0.01, "optimizer": 0.05}


def _design():
    plan = path_plan(load_space("smoke"), REF, TGT, [0, 1, 2])
    return PathDesign({"plan": plan_to_settings(plan, {"max_epochs": 2})}), plan


def _score(config: dict, seed: int) -> float:
    """A fixed landscape: the reference's score plus what each moved parameter is worth."""
    ref = _design()[1].reference
    moved = {p: config[p] != ref[p] for p in ("normalization", "n_layers", "optimizer")}
    moved["units"] = config["units"][0] == 32  # the first layer widened: the target's units
    gained = sum(w for p, w in WORTH.items() if moved[p])
    noise = np.random.default_rng(zlib.crc32(repr((sorted(config.items()), seed)).encode()))
    return 0.80 + gained + [0.001, -0.002, 0.0015][seed] + float(noise.normal(0, 0.0005))


def _finish(specs, start=1, status=COMPLETED, fail=()):
    jobs = []
    for i, spec in enumerate(specs):
        bad = spec.key in fail
        value = None if bad else _score(spec.config, spec.seed)
        result = JobResult(DIVERGED if bad else status, value, 0, 2, 1.0, 0, 0, spec.config)
        jobs.append(Job(start + i, 1, spec, DONE, attempts=1, result=result, synced=True))
    return jobs


def _run_to_the_end(design, fail=()):
    jobs = _finish(design.initial_jobs(), fail=fail)
    while True:
        more = design.next_jobs(jobs, 2)
        if not more:
            return jobs
        jobs += _finish(more, start=len(jobs) + 1, fail=fail)


def test_the_parameters_that_differ_count_layers_at_the_targets_depth():
    space = load_space("smoke")
    plan = path_plan(space, REF, TGT, [0])
    assert plan.params == ("normalization", "n_layers", "units", "optimizer")  # relu is relu
    assert differing(plan.reference, plan.reference) == []
    with pytest.raises(BenchError, match="the reference and the target are the same"):
        path_plan(space, REF, {**REF, "units": [16]}, [0])


def test_moving_n_layers_keeps_every_per_layer_list_as_long():
    plan = path_plan(load_space("smoke"), REF, TGT, [0])
    deeper = move(plan.reference, plan.target, "n_layers")
    assert deeper["n_layers"] == 2 and deeper["units"] == [16, 16]
    assert deeper["activation"] == ["relu", "relu"] and len(deeper["dropout"]) == 2
    wider = move(plan.reference, plan.target, "units")
    assert wider["units"] == [32] and wider["n_layers"] == 1  # the target's first layer
    assert move(wider, plan.target, "n_layers")["units"] == [32, 32]


def test_stage_zero_is_reference_target_and_leave_one_out_then_step_one():
    design, plan = _design()
    specs = design.initial_jobs()
    keys = [s.key for s in specs]
    assert len(specs) == 3 * (2 + 4) + 3 * 4  # (reference, target, 4 loo) + step 1's 4 moves
    assert len(set(keys)) == len(keys) and design.initial_jobs() == specs
    assert "path-reference-s0" in keys and "path-target-s2" in keys
    loo = next(s for s in specs if s.key == "path-loo-optimizer-s1")
    assert loo.config["optimizer"] == "sgd" and loo.config["normalization"] == "minmax"
    step = next(s for s in specs if s.key == "path-step1-units-s0")
    assert step.config["units"] == [32] and step.config["optimizer"] == "sgd"
    assert step.info == {"factor": "path", "level": "step1:units", "path": "step",
                         "param": "units", "step": 1}  # fmt: skip
    assert all(s.train == {"max_epochs": 2} and s.purpose == "ablation" for s in specs)


def test_each_stage_keeps_the_best_move_and_the_last_move_is_the_target():
    design, _ = _design()
    jobs = _run_to_the_end(design)
    chosen, current, remaining, where = design.walk(jobs)
    assert [p for p, _ in chosen] == ["optimizer", "normalization", "units"]
    assert remaining == ["n_layers"] and where == "complete"
    assert {j.key.rsplit("-s", 1)[0] for j in jobs if "step3" in j.key} == {
        "path-step3-n_layers", "path-step3-units",
    }  # fmt: skip
    assert not [j for j in jobs if "step4" in j.key]  # the last move is the target cell
    summary = design.summary(jobs)
    assert summary["path"] == [
        {"param": "optimizer", "step": 1}, {"param": "normalization", "step": 2},
        {"param": "units", "step": 3}, {"param": "n_layers", "step": 4},
    ]  # fmt: skip
    assert summary["finished"] == len(jobs) and summary["failed"] == 0
    assert summary["headlines"][0].startswith("path total: target minus reference 8.0 points")


def test_a_move_that_fails_a_seed_is_not_chosen():
    design, _ = _design()
    jobs = _run_to_the_end(design, fail={"path-step1-optimizer-s2"})
    chosen, _, _, _ = design.walk(jobs)
    assert chosen[0][0] == "normalization"  # the best move whose every seed completed


def test_step_gains_are_scipys_paired_t_and_add_up_to_the_total():
    design, _ = _design()
    summary = design.summary(_run_to_the_end(design))
    result = pr.analyse(summary, design.plan["params"])
    first = result.steps[0]
    values = {(r["path"], r.get("param"), r.get("step"), r["seed"]): r["val_accuracy"]
              for r in summary["records"]}  # fmt: skip
    a = np.array([values[("step", "optimizer", 1, s)] for s in range(3)])
    b = np.array([values[("reference", None, None, s)] for s in range(3)])
    assert first.gain.mean == pytest.approx((a - b).mean())
    assert first.gain.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
    total = sum(s.gain.mean for s in result.steps)
    assert total == pytest.approx(result.total.mean)
    assert result.steps[-1].cumulative.mean == pytest.approx(result.total.mean)
    n_layers = next(s for s in result.steps if s.param == "n_layers")
    assert n_layers.verdict.endswith("(within noise)") or "no variance" in n_layers.verdict
    loo = {lo.param: lo for lo in result.loo}
    assert loo["optimizer"].diff.mean == pytest.approx(0.05, abs=0.001)
    assert "better by 5.0 points" in loo["optimizer"].verdict


def test_path_renderings_and_the_waterfall(tmp_path):
    design, _ = _design()
    summary = design.summary(_run_to_the_end(design))
    result = pr.from_summary(summary, design.plan["params"])
    text = pr.text(result)
    assert text.startswith("Ablation path") and "step 1: optimizer: better by" in text
    assert "leave-one-out optimizer" in text and "## Ablation path" in pr.markdown(result)
    plot = pr.waterfall_plot(result, tmp_path / "path.png")
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width >= 400
        assert len(set(img.convert("RGB").getdata())) > 50
    assert pr.from_summary({"error": "x"}, ["a"]) is None
    with pytest.raises(ValueError, match="no ends"):
        pr.analyse({"records": [], "path": []}, ["a"])
    assert not math.isnan(result.total.mean)
