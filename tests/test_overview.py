"""What matters, factor by factor (issue #19, item 6): every design's word on each factor, read
from stored summaries of real designs run on fake finished jobs. No TensorFlow, no subprocess."""

from __future__ import annotations

from bench.designs.space_filling import GlobalDesign
from bench.records import ABLATION_DESIGN, CROSSED_DESIGN, DONE, GLOBAL_DESIGN, PATH_DESIGN, Batch
from bench.results import importance as im
from bench.results import overview as ov
from bench.results.report import Report, overview
from tests.test_importance import _finish, _settings
from tests.test_path import _design, _run_to_the_end


def _batches(monkeypatch) -> list[Batch]:
    monkeypatch.setattr(im, "BOOTSTRAPS", 4)
    monkeypatch.setattr(im, "SHUFFLES", 4)
    path_design, _ = _design()
    path_summary = path_design.summary(_run_to_the_end(path_design))
    settings = _settings(16)
    global_design = GlobalDesign(settings)
    global_summary = global_design.summary(_finish(global_design.initial_jobs()))
    crossed = {  # as a crossed batch stores its headlines
        "headlines": [
            "normalization (averaged over the other crossed factors, vs standard): minmax worse "
            "by 1.0 points [-1.5, -0.5]",
            "optimizer (averaged over the other crossed factors, vs adam): no level differs "
            "detectably from adam with 3 seeds",
            "normalization x optimizer: no detectable interaction",
        ]
    }
    ablation = {"headlines": ["dropout: effect 0.3 points [0.1, 0.5] (best 0.1, worst 0.3); "
                              "no level differs detectably from the base (0.1)"]}  # fmt: skip
    return [
        Batch(1, "s", 1, ABLATION_DESIGN, "a", DONE, {}, summary=ablation),
        Batch(2, "s", 2, CROSSED_DESIGN, "c", DONE, {}, summary=crossed),
        Batch(3, "s", 3, PATH_DESIGN, "p", DONE, {}, summary=path_summary),
        Batch(4, "s", 4, GLOBAL_DESIGN, "g", DONE, settings, summary=global_summary),
        Batch(5, "s", 5, ABLATION_DESIGN, "a2", "running", {}, summary=None),  # not finished
    ]


def test_each_factor_lists_every_design_that_measured_it(monkeypatch):
    items = ov.evidence(_batches(monkeypatch))
    by = {}
    for e in items:
        by.setdefault(e.factor, []).append(e)
    # in the report's factor order, each design's lines in design order
    factors = list(dict.fromkeys(e.factor for e in items))
    assert factors.index("normalization") < factors.index("optimizer") < factors.index("dropout")
    norm = [e.design for e in by["normalization"]]
    assert norm[:2] == [CROSSED_DESIGN, CROSSED_DESIGN] and PATH_DESIGN in norm
    assert norm.index(PATH_DESIGN) < norm.index(GLOBAL_DESIGN)
    crossed = [e.says for e in by["optimizer"] if e.design == CROSSED_DESIGN]
    assert "interaction with normalization: no detectable interaction" in crossed
    assert any(s.startswith("main effect (averaged") for s in crossed)
    path = [e.says for e in by["optimizer"] if e.design == PATH_DESIGN]
    assert any(s.startswith("step 1: better by") for s in path)
    assert any(s.startswith("the target against the target without it: ") for s in path)
    assert [e.batch for e in by["dropout"] if e.design == ABLATION_DESIGN] == [1]
    # per-layer widths belong to the units factor, each named
    units = [e.says for e in by["units"] if e.design == GLOBAL_DESIGN]
    assert any(s.startswith("fANOVA (units_0) ") for s in units)
    assert any(s.startswith("PED-ANOVA (units_0) ") for s in units)
    rates = [e.says for e in by["learning_rate"] if e.design == GLOBAL_DESIGN]
    assert any(s.startswith("fANOVA ") and "clearly above its floors" in s for s in rates)


def test_the_report_leads_with_it_when_two_designs_ran(monkeypatch, tmp_path):
    batches = _batches(monkeypatch)
    report = Report()
    overview(report, batches)
    title, md = report.lead[0]
    assert title.startswith("What matters, factor by factor\n")
    assert md.startswith("## What matters, factor by factor") and "| factor | design |" in md
    assert "test accuracy is only reported" in md
    assert "whole space (batch 4)" in md and "crossed (batch 2)" in md
    page = report.html("s")
    assert "<h3>Factor by factor</h3>" in page
    alone = Report()
    overview(alone, [b for b in batches if b.design == ABLATION_DESIGN])
    assert alone.lead == [] and alone.overview_html is None  # one design: its section says it


def test_a_design_on_two_datasets_gets_one_table_of_effects_per_dataset(monkeypatch):
    from bench.results import what_matters as wm
    from tests.test_what_matters import BASE_LEVELS, records, runs

    digits = [*records()[:4], *runs("normalization", "none", -0.010)]  # a smaller effect there
    fashion = {"records": records(), "base_levels": BASE_LEVELS}
    batches = [
        Batch(1, "digits-smoke", 1, ABLATION_DESIGN, "a", DONE, {"dataset": "digits"},
              summary={"records": digits, "base_levels": BASE_LEVELS}),
        Batch(2, "fashion-mnist-mlp", 1, ABLATION_DESIGN, "b", DONE, {"dataset": "fashion-mnist"},
              summary=fashion),
    ]  # fmt: skip
    header, rows = ov.across_datasets(batches, "fashion-mnist-mlp")
    assert header == ["factor", "measure", "digits", "fashion-mnist"]
    by = {(r[0], r[1]): r[2:] for r in rows}
    norm = by[("normalization", "one-factor effect")]
    expected = {r.factor: r.effect for r in wm.from_summary(fashion)}["normalization"]
    assert norm[1].startswith(f"{100 * expected.diff:.1f} points [{100 * expected.low:.1f}, ")
    assert norm[0].startswith("1.0 points [") and norm[0].endswith("(4 seeds)")
    assert by[("optimizer", "one-factor effect")][0] == ""  # not varied on digits: blank
    assert [r[0] for r in rows][:1] == ["normalization"]  # the report's factor order
    report = Report()
    from bench.results.report import across_datasets

    across_datasets(report, batches, "fashion-mnist-mlp")
    title, md = report.lead[-1]
    assert title.startswith("What matters, across datasets") and "| fashion-mnist |" in md
    assert "<h3>Across datasets</h3>" in report.html("s")
    # one dataset only, or two that are not this study's: no table
    assert ov.across_datasets(batches[1:]) is None
    assert ov.across_datasets(batches, "cifar-mlp") is None
    # the same dataset twice: the later batch speaks for it, still one dataset
    again = Batch(3, "fashion-mnist-mlp", 2, ABLATION_DESIGN, "c", DONE,
                  {"dataset": "fashion-mnist"}, summary=fashion)  # fmt: skip
    assert ov.across_datasets([batches[1], again]) is None
