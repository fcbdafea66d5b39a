"""A study's report: its tables, sections and plots, as text, markdown and one HTML page.

Everything comes from the trials' user attributes (``bench.config``, ``bench.history``, ...) and
the job store's batch summaries (search, re-evaluation, ablation), so building a report takes
seconds and never imports TensorFlow. ``bench.report`` is the command around :func:`build`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import optuna_adapter as opt
from bench.errors import BenchError
from bench.optuna_adapter import TrialView, metric_name
from bench.records import (
    ABLATION_DESIGN,
    CROSSED_DESIGN,
    DONE,
    GLOBAL_DESIGN,
    PATH_DESIGN,
    REEVAL_DESIGN,
    SEARCH_DESIGN,
    TRIAL_BASELINE,
    TRIAL_CONFIG,
    TRIAL_EPOCHS,
    TRIAL_HISTORY,
    TRIAL_REASON,
    TRIAL_TEST_ACCURACY,
    TRIAL_TRAIN_SECONDS,
    Batch,
)

if TYPE_CHECKING:
    import optuna
    import pandas as pd

_FINISHED = ("COMPLETE", "PRUNED")
ADAPTIVE = (
    "from an adaptive search — levels were tried unequally and with different partners; use "
    "bench.ablate for controlled effects"
)


# ---------------------------------------------------------------- tables


def _fmt_list(values: Any, sep: str = "-") -> str:
    if isinstance(values, (list, tuple)):
        return sep.join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values)
    return "" if values is None else str(values)


def value_at(trial: TrialView, epoch: int, metric: str) -> float | None:
    """A trial's validation value at epoch index ``epoch``: its reported intermediate value, else
    its recorded history; None when the trial stopped earlier."""
    value = trial.intermediate.get(epoch)
    if value is None:
        history = (trial.user_attrs.get(TRIAL_HISTORY) or {}).get(metric) or []
        value = history[epoch] if 0 <= epoch < len(history) else None
    return None if value is None or value != value else float(value)


def trials_frame(study: optuna.Study, top_k: int, budget: int = 2) -> pd.DataFrame:
    """Every trial, one row each: the completed ones best first, then the rest by number.

    ``at_budget`` is each trial's validation value after ``budget`` epochs (the pruner's first
    rung, which every finished trial reached): a comparison at equal training budget.
    """
    import pandas as pd

    sign = -1 if opt.direction(study) == "maximize" else 1
    rows = []
    for t in opt.trials(study):
        c, a = t.user_attrs.get(TRIAL_CONFIG) or {}, t.user_attrs
        rows.append(
            {
                "trial": t.number,
                "state": t.state,
                "baseline": (a.get(TRIAL_BASELINE) or {}).get("name", ""),
                "normalization": c.get("normalization", ""),
                "layers": c.get("n_layers"),
                "units": _fmt_list(c.get("units")),
                "dropout": _fmt_list(c.get("dropout")),
                "l2": c.get("l2"),
                "optimizer": c.get("optimizer", ""),
                "lr": c.get("learning_rate"),
                "schedule": c.get("lr_schedule", ""),
                "batch": c.get("batch_size"),
                metric_name(study): t.value,
                "at_budget": value_at(t, budget - 1, metric_name(study)),
                "epochs": a.get(TRIAL_EPOCHS),
                "seconds": a.get(TRIAL_TRAIN_SECONDS),
                "note": str(a.get(TRIAL_REASON, ""))[:60],
            }
        )
    frame = pd.DataFrame(rows, columns=None if rows else ["trial", "state", metric_name(study)])
    if frame.empty:
        return frame
    done = frame["state"] == "COMPLETE"
    frame["_key"] = [
        sign * v if d else math.inf for v, d in zip(frame[metric_name(study)], done, strict=True)
    ]
    frame = frame.sort_values(["_key", "trial"]).drop(columns="_key").reset_index(drop=True)
    frame.insert(
        0,
        "rank",
        [str(i + 1) if d and i < top_k else "" for i, d in enumerate(frame["state"] == "COMPLETE")],
    )
    return frame


def breakdown(frame: pd.DataFrame, by: str, metric: str, maximize: bool) -> pd.DataFrame:
    """The adaptive search's per-level breakdown (not an ablation: levels were tried unequally
    and with different partners; :mod:`bench.results.what_matters` measures effects).

    Best and median of the metric over completed trials, and trial counts, per value of ``by``.

    ``finished`` counts completed and pruned trials: a value whose trials were all pruned still
    gets a row (with no best), which is itself an answer. Beside the final values,
    ``best_eq_budget`` and ``median_eq_budget`` are over every finished trial's value at equal
    budget (the frame's ``at_budget`` column), where pruned trials count as much as completed ones.
    """
    import pandas as pd

    finished = frame[frame["state"].isin(_FINISHED) & frame[by].notna() & (frame[by] != "")]
    done = finished[finished["state"] == "COMPLETE"]
    stats = done.groupby(by)[metric].agg(best="max" if maximize else "min", median="median")
    parts = [stats]
    if "at_budget" in frame.columns:
        reached = finished[finished["at_budget"].notna()]
        budget = reached.groupby(by)["at_budget"].agg(
            best_eq_budget="max" if maximize else "min", median_eq_budget="median"
        )
        parts.append(budget)
    table = pd.concat(
        [
            *parts,
            done.groupby(by)["trial"].count().rename("completed"),
            finished.groupby(by)["trial"].count().rename("finished"),
        ],
        axis=1,
    )
    table["completed"] = table["completed"].fillna(0).astype(int)
    table.index.name = by
    order = [
        c
        for c in ("best", "best_eq_budget", "median", "median_eq_budget", "completed", "finished")
        if c in table.columns
    ]
    table = table[order]
    return table.sort_values("best", ascending=not maximize, na_position="last").reset_index()


def baselines_frame(study: optuna.Study) -> pd.DataFrame | None:
    """Published vs reproduced test accuracy of the baseline trials (None when there are none)."""
    import pandas as pd

    rows = []
    for t in opt.trials(study):
        b = t.user_attrs.get(TRIAL_BASELINE)
        if not b:
            continue
        pub, got = b.get("published_test_accuracy"), t.user_attrs.get(TRIAL_TEST_ACCURACY)
        diff = got - pub if pub is not None and got is not None else None
        rows.append(
            {
                "baseline": b.get("name"),
                "trial": t.number,
                "state": t.state,
                "published": pub,
                "reproduced": got,
                "difference": diff,
                "within_1pt": "" if diff is None else ("yes" if abs(diff) <= 0.01 else "no"),
                metric_name(study): t.value,
                "epochs": t.user_attrs.get(TRIAL_EPOCHS),
            }
        )
    return pd.DataFrame(rows) if rows else None


def _md(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the optional tabulate package)."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    head = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |"
        for row in frame.astype(object).itertuples(index=False)
    ]
    return "\n".join(lines)


def _text(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")


# ---------------------------------------------------------------- the report


class Report:
    """What :func:`build` produced: printable text, markdown, a page, and the files written."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, pd.DataFrame | str]] = []
        self.roles: list[str] = []  # where each section goes on the page (see add)
        self.images: list[tuple[str, Path]] = []
        self.notes: list[str] = []
        self.files: list[Path] = []
        self.lead: list[tuple[str, str]] = []  # (text, markdown) shown before every section
        self.what_matters_html: str | None = None  # the page's "What matters" body
        self.interactions_html: str | None = None  # a crossed run's part of it
        self.path_html: str | None = None  # an ablation path's part of it
        self.global_html: str | None = None  # a global design's importances
        self.overview_html: str | None = None  # every design's word on each factor
        self.across_html: str | None = None  # each factor's effect on each dataset
        self.ablate_hint: str = ""  # the command that would measure what matters

    def add(self, title: str, body: pd.DataFrame | str, role: str = "search") -> None:
        """Append a section; ``role`` (summary, champion, search, trials) places it on the page."""
        self.sections.append((title, body))
        self.roles.append(role)

    @property
    def text(self) -> str:
        parts = [f"== {text}" for text, _ in self.lead]
        parts += [
            f"== {title}\n{body if isinstance(body, str) else _text(body)}"
            for title, body in self.sections
        ]
        parts += [f"note: {n}" for n in self.notes]
        return "\n\n".join(parts)

    def markdown(self, study_name: str) -> str:
        parts = [f"# Benchmark report: {study_name}", *(md.rstrip() for _, md in self.lead)]
        for title, body in self.sections:
            parts.append(f"## {title}\n\n{body if isinstance(body, str) else _md(body)}")
        if self.images:
            parts.append(
                "## Plots\n\n" + "\n\n".join(f"### {t}\n\n![{t}]({p.name})" for t, p in self.images)
            )
        if self.notes:
            parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts) + "\n"

    def html(self, study_name: str) -> str:
        """The report as one self-contained page, ordered for a reader: the summary, the
        champion (with its test confusion matrix), "What matters" (with its forest plot), then
        the search's breakdowns and plots, and the long trial table last."""
        from bench.results import html as h

        def body(value: pd.DataFrame | str) -> str:
            return h.text_block(value) if isinstance(value, str) else h.frame_table(value)

        def role(name: str) -> list[tuple[str, pd.DataFrame | str]]:
            return [sec for sec, r in zip(self.sections, self.roles, strict=True) if r == name]

        def remark(heading: str, title: str) -> list[str]:
            """What a section's text heading says beyond the page's short title, as a line."""
            rest = heading.removeprefix(title).strip().lstrip(",").strip()
            if rest.startswith("(") and rest.endswith(")"):
                rest = rest[1:-1]
            return [h.paragraph(rest[:1].upper() + rest[1:] + ".", "sub")] if rest else []

        plots = {path.name: (title, path) for title, path in self.images}
        placed = {"confusion_matrix.png", "what_matters.png", "interactions.png", "path.png",
                  "importance.png"}  # fmt: skip
        sections = []
        for name, title in (("summary", "Summary"), ("champion", "Champion")):
            for heading, value in role(name):
                sections.append(h.Section(name, title, [*remark(heading, title), body(value)]))
        if "confusion_matrix.png" in plots:
            title, path = plots["confusion_matrix.png"]
            figure = h.image(path, title, narrow=True)
            if sections and sections[-1].id == "champion":  # the words beside the matrix
                sections[-1].parts = [h.beside(sections[-1].parts, figure)]
            else:
                sections.append(h.Section("champion", "Champion", [figure]))
        matters = self.what_matters_html
        if matters is None and not (self.interactions_html or self.path_html or self.global_html):
            matters = h.text_block(
                "No controlled ablation in this study yet. The per-level tables under The search "
                "compare levels tried unequally; to measure what matters, run "
                f"`{self.ablate_hint or 'python -m bench.ablate --seeds 3'}`."
            )
        parts = ["<h3>Factor by factor</h3>", self.overview_html] if self.overview_html else []
        if matters and self.overview_html and self.what_matters_html:
            parts.append("<h3>One factor at a time</h3>")
        parts += [matters] if matters else []
        if "what_matters.png" in plots:
            parts.append(h.image(plots["what_matters.png"][1], plots["what_matters.png"][0]))
        for heading, body_html, image in (
            ("Interactions", self.interactions_html, "interactions.png"),
            ("Ablation path", self.path_html, "path.png"),
            ("Importance over the whole space", self.global_html, "importance.png"),
        ):
            if body_html:
                parts += [f"<h3>{heading}</h3>", body_html]
            if image in plots:
                parts.append(h.image(plots[image][1], plots[image][0]))
        if self.across_html:
            parts += ["<h3>Across datasets</h3>", self.across_html]
        sections.append(h.Section("what-matters", "What matters", parts))
        search = []
        for heading, value in role("search"):
            # "Breakdown by optimizer, from an adaptive search — ...": a short heading, the caveat
            short = heading.partition(", ")[0] if len(heading) > 80 else heading
            search += [f"<h3>{h.esc(short)}</h3>", *remark(heading, short + ","), body(value)]
        search += [h.image(path, title) for title, path in self.images if path.name not in placed]
        if search:
            sections.append(h.Section("search", "The search", search))
        if self.notes:
            notes = "\n".join(f"- {n}" for n in self.notes)
            sections.append(h.Section("notes", "Notes", [h.text_block(notes)]))
        for heading, value in role("trials"):
            parts = [*remark(heading, "Trials"), body(value)]
            sections.append(h.Section("trials", "Trials", parts))
        intro = (
            "Chosen by validation scores; the test set is read once, to report. Written by "
            "python -m bench.report; report.md beside it holds the same numbers."
        )
        return h.page(f"Benchmark report: {study_name}", intro, sections)


def _done(batches: list[Batch], *designs: str) -> list[Batch]:
    return [b for b in batches if b.design in designs and b.state == DONE]


def equal_budget(batches: list[Batch]) -> int:
    """Epochs of the first pruning rung (the pruner's ``min_resource``) of the study's latest
    search space; every finished trial reached it. The default pruner's when unknown."""
    from bench.engine import batch_space
    from bench.space import PrunerSpec

    searches = [b for b in batches if b.design == SEARCH_DESIGN]
    if searches:
        try:  # the space stored with the batch: the file may have moved since
            return batch_space(searches[-1].settings).pruner.min_resource
        except (BenchError, KeyError, TypeError):
            pass
    return PrunerSpec().min_resource


def champion_section(batches: list[Batch]) -> str | None:
    """How the latest registered model of the study was chosen and what it scored.

    The selection score is validation only; the test accuracy is read once, to report, and the
    gap between the two is the optimism of choosing the maximum of noisy validation scores.
    """
    done = [
        b for b in _done(batches, SEARCH_DESIGN, REEVAL_DESIGN) if (b.summary or {}).get("version")
    ]
    if not done:
        return None
    batch = done[-1]
    s = batch.summary
    members = s.get("ensemble") or []
    how = (
        f"the mean of {len(members)} configurations' probabilities ({s.get('source')}), each "
        f"refit on all training images ({s.get('refit_epochs')} epochs)"
        if len(members) > 1
        else f"{s.get('source')} refit on all training images for {s.get('refit_epochs')} epochs"
        if s.get("refit")
        else f"the search run {s.get('source')}'s own model"
    )
    loss = s.get("selection_metric") == "val_loss"  # the gap is then a loss minus a loss
    gap = s.get("val_test_gap")
    lines = [
        f"batch {batch.number} registered {batch.settings.get('model_name')} version "
        f"{s['version']} (champion: version {s.get('champion_version')}): {how}.",
        f"chosen by validation {'loss ' if loss else ''}"
        f"{s.get('selection_score', float('nan')):.4f}"
        + (" (the members' mean)" if len(members) > 1 else "")
        + (f"; test loss {s.get('test_loss', float('nan')):.4f}" if loss else "")
        + f"; test accuracy {s.get('test_accuracy', float('nan')):.4f}"
        + (
            ""
            if gap is None
            else f"; val->test gap {gap:+.4f} (loss)"
            if loss
            else f"; val->test gap {gap * 100:+.1f} points"
        )
        + ".",
    ]
    for m in members:
        test = m.get("test_accuracy")
        lines.append(
            f"- member {m['source']}: validation {m['selection_score']:.4f}, test alone "
            + (f"{test:.4f}" if test is not None else "n/a")
            + (" (the space's hand-picked start)" if m.get("from_start") else "")
        )
    if s.get("from_start"):
        from bench.results.champion import start_note

        lines.append(start_note(s["from_start"], len(members) or 1))
    return "\n".join(lines)


def what_matters(report: Report, batches: list[Batch], out: Path) -> None:
    """Lead the report with the latest finished ablation's "What matters" and its forest plot."""
    from bench.results import what_matters as wm

    done = _done(batches, ABLATION_DESIGN)
    if not done:
        return
    batch = done[-1]
    summary = batch.summary or {}
    source = batch.settings.get("base_source", "the base configuration")
    head = (
        f"controlled ablation (batch {batch.number}, around {source}; "
        f"{summary.get('finished', 0)} jobs finished, {summary.get('failed', 0)} failed)"
    )
    report.what_matters_html = _design_section(
        report, out, "What matters", head, summary, lambda: wm.from_summary(summary), wm,
        wm.forest_plot, ("What matters: each level minus the base", "what_matters.png"),
        missing="no completed cell to compare", plot_label="What matters forest plot",
    )  # fmt: skip


def _design_section(
    report: Report, out: Path, title: str, head: str, summary: dict, analyse, module, draw,
    image: tuple[str, str], missing: str = "no cell finished", plot_label: str | None = None,
) -> str:  # fmt: skip
    """One design's part of What matters: its text and markdown in the report's lead, its plot
    among the images; returns its HTML. ``analyse()`` returns the result (empty, or raising
    ValueError, when there is nothing to analyse; ``missing`` says so); ``module`` renders it
    (``text``, ``markdown``, ``html``); ``draw(result, path)`` writes the plot ``image`` names
    into ``out`` (``plot_label`` names it in a note if it fails). A summary's ``error`` is why
    there is no analysis."""
    try:
        result = None if summary.get("error") else analyse()
        why = summary.get("error") or missing
    except ValueError as exc:
        result, why = None, str(exc)
    if not result:
        line = f"{head}: no analysis: {why}"
        report.lead.append((f"{title}\n{line}", f"## {title}\n\n{line}"))
        return html_text(line[:1].upper() + line[1:])
    text = module.text(result).split("\n", 1)[1]
    md = module.markdown(result).split("\n", 1)[1]
    caption, name = image
    try:
        plot = draw(result, out / name)
    except Exception as exc:  # noqa: BLE001 - the numbers are the report; the plot is a view
        report.notes.append(f"{plot_label or caption}: skipped, {str(exc)[:160]}")
        plot = None
    if plot is not None:
        report.images.insert(0, (caption, plot))
        md = md.rstrip() + f"\n\n![{title}]({plot.name})\n"
    report.lead.append((f"{title}\n{head}\n{text}", f"## {title}\n\n{head}.\n{md}"))
    return html_text(f"{head[:1].upper()}{head[1:]}.") + "\n" + module.html(result)


def interactions(report: Report, batches: list[Batch], out: Path) -> None:
    """Add the latest finished crossed run: its interactions, in words and tables, and its plot."""
    from bench.results import interactions as ia

    done = _done(batches, CROSSED_DESIGN)
    if not done:
        return
    batch = done[-1]
    summary = batch.summary or {}
    factors = batch.settings.get("factors") or summary.get("factors_planned") or []
    source = batch.settings.get("base_source", "the base configuration")
    head = (
        f"crossed {' x '.join(factors)} (batch {batch.number}, around {source}; "
        f"{summary.get('finished', 0)} jobs finished, {summary.get('failed', 0)} failed)"
    )
    report.interactions_html = _design_section(
        report, out, "Interactions", head, summary, lambda: ia.from_summary(summary, factors), ia,
        ia.interaction_plot,
        (f"Interactions: {' x '.join(factors)}, cell means", "interactions.png"),
    )  # fmt: skip


def ablation_path(report: Report, batches: list[Batch], out: Path) -> None:
    """Add the latest finished ablation path: its steps in words and a table, and a waterfall."""
    from bench.results import path as pa

    done = _done(batches, PATH_DESIGN)
    if not done:
        return
    batch = done[-1]
    summary, settings = batch.summary or {}, batch.settings
    head = (
        f"ablation path (batch {batch.number}) from {settings.get('from_source')} to "
        f"{settings.get('to_source')}; {summary.get('finished', 0)} jobs finished, "
        f"{summary.get('failed', 0)} failed"
    )
    params = (settings.get("plan") or {}).get("params") or []
    report.path_html = _design_section(
        report, out, "Ablation path", head, summary, lambda: pa.from_summary(summary, params), pa,
        pa.waterfall_plot, ("Ablation path: each step's gain", "path.png"),
    )  # fmt: skip


def global_importance(report: Report, batches: list[Batch], out: Path) -> None:
    """Add the latest finished global design: importances with intervals and their floors."""
    from bench.results import importance as im

    done = _done(batches, GLOBAL_DESIGN)
    if not done:
        return
    batch = done[-1]
    summary = batch.summary or {}
    n = len((batch.settings.get("plan") or {}).get("configs") or [])
    head = (
        f"global design (batch {batch.number}): {n} space-filling configurations; "
        f"{summary.get('finished', 0)} jobs finished, {summary.get('failed', 0)} failed"
    )
    report.global_html = _design_section(
        report, out, "Importance over the whole space", head, summary,
        lambda: im.from_summary(summary), im, im.importance_plot,
        ("Importance over the whole space, with its floors", "importance.png"),
    )  # fmt: skip


def overview(report: Report, batches: list[Batch]) -> None:
    """Lead What matters with every design's word on each factor, where two or more designs
    ran (with one, its own section says it all)."""
    from bench.results import overview as ov

    items = ov.evidence(batches)
    if len({e.design for e in items}) < 2:
        return
    title = "What matters, factor by factor"
    report.lead.insert(0, (f"{title}\n{ov.text(items)}", f"## {title}\n\n{ov.markdown(items)}"))
    report.overview_html = ov.html(items)


def across_datasets(report: Report, batches: list[Batch], study: str | None = None) -> None:
    """Add one table of each factor's effect on each dataset, where a design ran on two or more
    (``batches`` then holds other studies' batches too)."""
    import pandas as pd

    from bench.results import html as h
    from bench.results import overview as ov

    table = ov.across_datasets(batches, study)
    if table is None:
        return
    header, rows = table
    title = "What matters, across datasets"
    frame = pd.DataFrame(rows, columns=header)
    report.lead.append((f"{title}\n{ov.ACROSS_INTRO}\n{_text(frame)}",
                        f"## {title}\n\n{ov.ACROSS_INTRO}\n\n{_md(frame)}"))  # fmt: skip
    report.across_html = h.paragraph(ov.ACROSS_INTRO) + "\n" + h.frame_table(frame)


def reeval_frame(batches: list[Batch]) -> pd.DataFrame | None:
    """The latest re-evaluation rows (mean validation and test accuracy over seeds), if any.

    Best first, the way the choice ranks them (:func:`~bench.designs.search.reeval_order`): any
    configuration that failed a seed after the clean ones, each part in the metric's direction
    (the summary's ``selection_direction``; for older summaries the batch's stored space's).
    """
    import pandas as pd

    from bench.designs.search import reeval_order

    for b in reversed(_done(batches, REEVAL_DESIGN, SEARCH_DESIGN)):
        summary = b.summary or {}
        rows = summary.get("reeval")
        if rows:
            direction = summary.get("selection_direction")
            if direction is None and b.settings.get("space_text") is not None:
                from bench.engine import batch_space
                from bench.errors import SpaceError

                try:
                    direction = batch_space(b.settings).direction
                except SpaceError:
                    direction = None  # unreadable: the default below

            def ci(pair):
                pair = pair or [None, None]
                return "" if pair[0] is None else f"[{pair[0]:.4f}, {pair[1]:.4f}]"

            return pd.DataFrame(
                [
                    {
                        "source": r.get("source"),
                        "seeds": r.get("seeds"),
                        "failed_seeds": r.get("failed_seeds") or 0,
                        "val_mean": r.get("val_mean"),
                        "val_95ci": ci(r.get("val_ci")),
                        "test_mean": r.get("test_mean"),
                        "test_95ci": ci(r.get("test_ci")),
                    }
                    for r in reeval_order(rows, direction != "minimize")
                ]
            )
    return None


def build(
    study: optuna.Study,
    out: Path,
    top_k: int,
    batches: list[Batch] | None = None,
    other_studies: list[Batch] | None = None,
) -> Report:
    """Compute every table and plot of ``study``; write them, ``report.md`` and ``report.html``
    (the same, as one self-contained page) into ``out``.

    Args:
        study: The Optuna study.
        out: The folder to write into.
        top_k: Trials ranked first and drawn as learning curves.
        batches: The study's batches from the job store (ablation and re-evaluation summaries).
        other_studies: Other studies' batches in the same store: where a design also ran on
            another dataset, What matters adds a table across datasets.
    """
    batches = batches or []
    report = Report()
    what_matters(report, batches, out)
    interactions(report, batches, out)
    ablation_path(report, batches, out)
    global_importance(report, batches, out)
    overview(report, batches)
    across_datasets(report, [*(other_studies or []), *batches], study.study_name)
    metric, maximize = metric_name(study), opt.direction(study) == "maximize"
    budget = equal_budget(batches)
    frame = trials_frame(study, top_k, budget)
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    summary = f"study '{study.study_name}': {len(frame)} trials " + ", ".join(
        f"{n} {s.lower()}" for s, n in sorted(counts.items())
    )
    done = frame[frame["state"] == "COMPLETE"] if not frame.empty else frame
    if not done.empty:
        best = done.iloc[0]
        summary += f"; best {metric} {best[metric]:.4f} (trial {best['trial']})"
    report.add(
        "Summary",
        summary + f". at_budget is each trial's {metric} after {budget} epoch(s), the first "
        "pruning rung, which every finished trial reached.",
        "summary",
    )
    champion = champion_section(batches)
    if champion:
        title = "Champion (chosen by validation; the test set read once, to report)"
        report.add(title, champion, "champion")
    report.add(f"Trials (top {top_k} ranked first)", frame, "trials")
    report.ablate_hint = f"python -m bench.ablate --study-name {study.study_name} --seeds 3"
    if not done.empty:
        for by, label in (
            ("normalization", "normalization"),
            ("optimizer", "optimizer"),
            ("layers", "depth (hidden layers)"),
        ):
            report.add(
                f"Breakdown by {label}, {ADAPTIVE}. best/median: final {metric} of completed "
                f"trials; *_eq_budget: every finished trial's {metric} after {budget} epoch(s)",
                breakdown(frame, by, metric, maximize),
            )
    baselines = baselines_frame(study)
    if baselines is not None:
        report.add("Baselines: published vs reproduced test accuracy", baselines)
    reeval = reeval_frame(batches)
    if reeval is not None:
        report.add(
            "Re-evaluated configurations (mean over seeds; chosen by validation only)", reeval
        )
    from bench.results.plots import draw_plots

    images, notes = draw_plots(study, frame, out, top_k)
    report.images += images
    report.notes += notes
    md = out / "report.md"
    md.write_text(report.markdown(study.study_name), encoding="utf-8")
    page = out / "report.html"
    page.write_text(report.html(study.study_name), encoding="utf-8")
    report.files = [md, page] + [p for _, p in report.images]
    return report


def html_text(text: str) -> str:
    """Plain report text as an HTML fragment (:func:`bench.results.html.text_block`)."""
    from bench.results.html import text_block

    return text_block(text)
